/**
 * `edgetrust demo --json`, headless: the same scenario `make demo` runs (cli/demo/scenario.ts), as a child process
 * through cli/index.ts (tsx, so it does not depend on a fresh dist/ build; the command re-executes itself with an
 * OPENSSL_CONF that registers the pkcs11 engine). Every step's outcome and the facts behind it are asserted: a broken
 * step fails this test. Afterwards nothing of the run is left: no containers, no state directory.
 */
import { describe, expect, it } from "vitest";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { DemoResult, StepResult } from "../cli/index.js";
import { DockerClient } from "../engine/index.js";
import { DOCKER_SOCKET } from "./fixtures/images.js";

const ROOT = resolve(import.meta.dirname, "..");
const ENTRY = `const { main } = await import(${JSON.stringify(join(ROOT, "cli/index.ts"))}); process.exitCode = await main(["node", "edgetrust", ...process.argv.slice(1)]);`;

function demo(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((done) => {
    const env = { ...process.env };
    delete env.OPENSSL_CONF;
    const p = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", ENTRY, "--", "demo", ...args], { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    p.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    p.on("close", (code) => done({ code, stdout, stderr }));
  });
}

describe("edgetrust demo (headless)", () => {
  it("runs the whole flow and the five refusals, each step proving what it says, and leaves nothing behind", async () => {
    const base = mkdtempSync(join(tmpdir(), "et-demo-"));
    const dir = join(base, "run");
    try {
      const r = await demo(["--json", "--dir", dir]);
      const result = JSON.parse(r.stdout) as DemoResult;
      const step = (id: string): StepResult => {
        const s = result.steps.find((x) => x.id === id);
        if (!s) throw new Error(`no step ${id}`);
        return s;
      };
      const failed = result.steps.filter((s) => !s.ok).map((s) => `${s.id}: ${s.detail}`);
      expect(failed, r.stderr.slice(-2000)).toEqual([]);
      expect(r.code).toBe(0);
      expect(result.steps.map((s) => s.id)).toEqual(["ca", "enroll", "register", "hub", "sign", "agent", "telemetry", "tampered", "swapped", "foreign-topic", "policy-changed", "revoked"]);

      // CA keys in SoftHSM, never extractable.
      const keys = step("ca").evidence.keys as { extractable: boolean; sensitive: boolean }[];
      expect(keys.length).toBeGreaterThanOrEqual(2);
      expect(keys.every((k) => !k.extractable && k.sensitive)).toBe(true);
      expect(step("ca").evidence.keyStore).toBe("pkcs11");
      // The line, not an admin, created the enrollment; the device got its identity through registration.
      expect(step("enroll").evidence.enrolledByLine).toBe(step("enroll").evidence.lineId);
      type Claims = Record<string, { status: string; reason: string; reference?: string }>;
      const reg = step("register").evidence as { deviceUri: string; certificates: { kind: string }[]; attestation: string; claims: Claims };
      expect(reg.deviceUri).toMatch(/^edgetrust:\/\/demo\.edgetrust\/devices\/demo-device-/);
      expect(reg.certificates.map((c) => c.kind).sort()).toEqual(["device", "edge-ca", "hub"]);
      // Appraised against the security team's policy (attestation: section): every claim affirming, each with its reason.
      expect(reg.attestation).toBe("affirming");
      expect(Object.keys(reg.claims).sort()).toEqual(["agent", "manifest", "policy", "trustRoot"]);
      for (const c of Object.values(reg.claims)) expect([c.status, c.reference]).toEqual(["affirming", expect.stringMatching(/security-team\/policy\.yaml: attestation\./)]);
      expect(reg.claims.manifest?.reason).toMatch(/no deployment accepted yet/);
      // 2 of 3 signatures, 3 modules, all running from the pinned digest.
      const sign = step("sign").evidence as { signatures: number; threshold: number; modules: string[]; digest: string; image: string };
      expect([sign.signatures, sign.threshold, sign.modules.length]).toEqual([2, 2, 3]);
      const agent = step("agent").evidence as { version: number; modules: { state: string; imageDigest: string }[] };
      expect(agent.version).toBe(1);
      expect(agent.modules.map((m) => [m.state, m.imageDigest])).toEqual(sign.modules.map(() => ["running", sign.digest]));
      // Every module on the hub with a certificate bound to that digest; upstream body redacted.
      const tel = step("telemetry").evidence as { connected: { imageDigest: string; manifestVersion: number }[]; upstreamBody: Record<string, unknown> };
      expect(tel.connected.length).toBeGreaterThanOrEqual(3);
      expect(tel.connected.every((c) => c.imageDigest === sign.digest && c.manifestVersion === 1)).toBe(true);
      expect(tel.upstreamBody).not.toHaveProperty("location");
      expect(String(tel.upstreamBody.operator)).toMatch(/^hmac-sha256:[0-9a-f]{64}$/);
      expect(tel.upstreamBody.temperature).toBe(21.5);
      // Refusals, each with its reason.
      const tampered = step("tampered").evidence as { applied: boolean; reasons: string[]; runningVersion: number };
      expect(tampered.applied).toBe(false);
      expect(tampered.reasons.join("\n")).toMatch(/signature/);
      expect(tampered.runningVersion).toBe(1);
      const swapped = step("swapped").evidence as { tagDigest: string; impostorDigest: string; pinnedDigest: string; recreatedRunsPinned: boolean; tagManifestReasons: string[] };
      expect(swapped.tagDigest).toBe(swapped.impostorDigest);
      expect(swapped.pinnedDigest).toBe(sign.digest);
      expect(swapped.recreatedRunsPinned).toBe(true);
      expect(swapped.tagManifestReasons.join("\n")).toMatch(/tags are never accepted/);
      const foreign = step("foreign-topic").evidence as { stage: string; reason: string; identity: string };
      expect([foreign.stage, foreign.reason]).toEqual(["subscribe", "policy-denied"]);
      expect(foreign.identity).toMatch(/\/analytics-/);
      // Deployed: affirming with every module as the served manifest pins it; a changed policy file: contraindicated.
      const changed = step("policy-changed").evidence as { before: string; beforeClaims: Claims; after: string; policyClaim: { status: string; reason: string } };
      expect(changed.before).toBe("affirming");
      expect(Object.keys(changed.beforeClaims).filter((k) => k.startsWith("module:")).sort()).toEqual(sign.modules.map((m) => `module:${m}`).sort());
      expect(changed.beforeClaims.manifest?.reason).toMatch(/as this CA serves it/);
      expect(changed.after).toBe("contraindicated");
      expect(changed.policyClaim).toMatchObject({ status: "contraindicated", reason: expect.stringMatching(/^policy digest .* is not a reference value/) });
      expect(String(step("revoked").evidence.refusal)).toMatch(/revoked/);
      // A leaf device's certificate revoked at ca-service: the hub, which loads the CA's CRL, refuses it.
      const leaf = step("revoked").evidence.leaf as { before: string; after: string; hubRefusal: string };
      expect(leaf.before).toBe("connected");
      expect(leaf.after).toMatch(/^refused/);
      expect(leaf.hubRefusal).toMatch(/revoked/i);

      // Torn down: the module containers are gone and so is the state directory.
      const docker = new DockerClient({ socketPath: DOCKER_SOCKET });
      for (const m of sign.modules) expect(await docker.inspectContainer(`edgetrust-${m}`)).toBeUndefined();
      // The images it pushed are gone from the local engine (their blobs stay in the registry).
      expect(await docker.inspectImage(sign.image)).toBeUndefined();
      expect(await docker.inspectImage(String(step("swapped").evidence.impostorImage))).toBeUndefined();
      expect(existsSync(dir)).toBe(false);
      expect(result.leftRunning).toEqual([]);
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  }, 300_000);
});
