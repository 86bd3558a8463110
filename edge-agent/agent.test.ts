import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import * as x509 from "@peculiar/x509";
import { createLogger } from "../common/index.js";
import { parsePolicy, signManifest, type JwsSigner, type Manifest, type TrustRoot } from "../policy/index.js";
import { makeSigners, makeTrustRoot } from "../policy/fixtures.js";
import { parseModuleAttestation } from "../pki/index.js";
import { buildBusyboxImage, dockerCli, DOCKER_SOCKET, REGISTRY, type BuiltImage } from "../test/fixtures/images.js";
import { startTestDevice, type TestDevice } from "../test/fixtures/device.js";
import { DockerClient } from "../engine/index.js";
import { EdgeAgent, type AgentReport } from "./agent.js";
import { ManagementSocketRegistrar } from "./identity-client.js";
import { listManaged } from "./containers.js";

const execFileAsync = promisify(execFile);
const docker = new DockerClient({ socketPath: DOCKER_SOCKET });
const tag = `${process.pid}`;
const DEVICE = `agent-dev-${tag}`;
const names = [`sensor${tag}`, `filter${tag}`, `report${tag}`];

const POLICY = `version: 1
mode: enforce
trust:
  trustRoot: trust-root.json
images:
  registries: ["${REGISTRY}"]
  repositories: ["${REGISTRY}/edgetrust-test/**"]
modules:
  allow: ["*"]
  defaults:
    network: [none]
    users: ["1000:1000"]
    readOnlyRootfs: required
  overrides:
    sensor${tag}:
      network: [none]
      users: ["1000:1000"]
      capabilities: [CAP_NET_BIND_SERVICE]
`;

async function curlCsr(socket: string, dir: string, cn: string): Promise<{ status: number; body: string }> {
  const key = join(dir, `${cn}.key`);
  const { stdout: csr } = await execFileAsync("openssl", ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-subj", `/CN=${cn}`]);
  const { stdout } = await execFileAsync("curl", ["-s", "-w", "\n%{http_code}", "--unix-socket", socket, "-H", "content-type: application/json", "--data-binary", JSON.stringify({ csr }), "http://localhost/v1/certificate"]);
  const nl = stdout.lastIndexOf("\n");
  return { status: Number(stdout.slice(nl + 1)), body: stdout.slice(0, nl) };
}

describe("edge agent: attested boot on real dockerd + registry", () => {
  const dir = mkdtempSync(join(tmpdir(), "et-agent-"));
  let device: TestDevice;
  let agent: EdgeAgent;
  let signers: JwsSigner[];
  let trustRoot: TrustRoot;
  let images: BuiltImage[];
  const reports: AgentReport[] = [];
  const policy = parsePolicy(POLICY, "policy.yaml");

  function manifest(version: number, over: Partial<Manifest> = {}, mods?: Manifest["modules"]): Manifest {
    const modules: Manifest["modules"] = mods ?? Object.fromEntries(
      names.map((n, i) => [n, {
        image: images[i]?.ref ?? "",
        options: { user: "1000:1000", network: "none" as const, readOnlyRootfs: true, ...(i === 0 ? { capabilities: ["CAP_NET_BIND_SERVICE"] } : {}) },
        env: { MODULE: n },
        restartPolicy: "always" as const,
        startupOrder: 2 - i,
      }]),
    );
    const now = Date.now();
    return {
      schemaVersion: 1, deploymentId: "dep-agent", version, targets: [DEVICE], modules,
      issuedAt: new Date(now - 60_000).toISOString(), expiresAt: new Date(now + 86_400_000).toISOString(), ...over,
    };
  }

  async function sign(m: Manifest, by = signers.slice(0, 2)): Promise<string> {
    let jws = await signManifest(m, by[0] as JwsSigner);
    for (const s of by.slice(1)) jws = await signManifest(jws, s);
    return JSON.stringify(jws);
  }

  async function runningIds(): Promise<string[]> {
    return (await listManaged(docker, DEVICE)).filter((c) => names.includes(c.module) && c.running).map((c) => c.id).sort();
  }

  beforeAll(async () => {
    images = names.map((n) => buildBusyboxImage(n, `${n}-${Date.now()}`));
    signers = await makeSigners();
    trustRoot = (await makeTrustRoot(signers, { threshold: 2, expires: new Date(Date.now() + 365 * 86_400_000).toISOString() })).root;
    device = await startTestDevice(docker, DEVICE);
    agent = new EdgeAgent({
      docker,
      identity: new ManagementSocketRegistrar(device.mgmtSocket, device.socketsDir),
      policy,
      trustRoot,
      deviceId: DEVICE,
      stateDir: join(dir, "agent"),
      log: createLogger("edge-agent", { level: "silent" }),
      report: (r) => reports.push(r),
      backoff: { baseMs: 0, maxMs: 0 },
    });
  });

  afterAll(async () => {
    await agent?.stop();
    for (const n of names) await docker.removeContainer(`edgetrust-${n}`);
    await device?.close();
  });

  it("a signed 3-module manifest: all three run with the restricted options, in startup order", async () => {
    const r = await agent.apply(await sign(manifest(1)));
    expect(r.verdict.reasons).toEqual([]);
    expect(r.applied).toBe(true);
    expect(r.modules.map((m) => [m.name, m.state])).toEqual([...names].reverse().map((n) => [n, "running"]));
    for (const [i, n] of names.entries()) {
      const info = await docker.inspectContainer(`edgetrust-${n}`);
      expect(info?.State.Running).toBe(true);
      expect(info?.Config.User).toBe("1000:1000");
      expect(info?.HostConfig).toMatchObject({ Privileged: false, CapDrop: ["ALL"], ReadonlyRootfs: true, NetworkMode: "none", SecurityOpt: ["no-new-privileges"] });
      expect(info?.HostConfig.CapAdd ?? []).toEqual(i === 0 ? ["CAP_NET_BIND_SERVICE"] : []);
      expect(info?.HostConfig.Binds).toEqual([`${join(device.socketsDir, n)}:/run/edgetrust/workload:ro`]);
      // `auth: x509` is the default: no IoT Edge environment (SAS is an explicit per-module grant; azure-module e2e).
      const env = JSON.parse(dockerCli(["inspect", "--format", "{{json .Config.Env}}", `edgetrust-${n}`])) as string[];
      expect(env).toContain(`MODULE=${n}`);
      expect(env.filter((e) => e.startsWith("IOTEDGE_"))).toEqual([]);
    }
    const started = reports.filter((x) => x.kind === "manifest-accepted");
    expect(started.at(-1)).toMatchObject({ version: 1, deploymentId: "dep-agent" });
  });

  it("each module obtains its certificate over its own socket, bound to its attested digest", async () => {
    for (const [i, n] of names.entries()) {
      const r = await curlCsr(join(device.socketsDir, n, "workload.sock"), dir, n);
      expect(r.status, r.body).toBe(200);
      const cert = new x509.X509Certificate(JSON.parse(r.body).certificate as string);
      expect(parseModuleAttestation(cert)).toMatchObject({ imageDigest: images[i]?.digest, manifestVersion: 1 });
    }
    // Inside the container the module sees its own socket and nothing else of the daemon's.
    const out = dockerCli(["exec", `edgetrust-${names[0]}`, "ls", "/run/edgetrust/workload"]);
    expect(out.trim()).toBe("workload.sock");
  });

  it("tampered, under-signed, rolled-back and expired manifests change nothing and are reported", async () => {
    const before = await runningIds();
    const good = JSON.parse(await sign(manifest(2))) as { payload: string; signatures: unknown[] };
    const tampered = { ...good, payload: Buffer.from(JSON.stringify({ ...manifest(2), version: 3 })).toString("base64url") };
    const cases: Array<[string, string, RegExp]> = [
      ["tampered", JSON.stringify(tampered), /signature/],
      ["one signature of two", await sign(manifest(2), signers.slice(0, 1)), /threshold/],
      ["rolled back", await sign(manifest(1, { deploymentId: "dep-agent" })), /replay|rollback/],
      ["expired", await sign(manifest(2, { issuedAt: "2026-01-01T00:00:00Z", expiresAt: "2026-01-02T00:00:00Z" })), /expired/],
    ];
    for (const [what, text, reason] of cases) {
      const r = await agent.apply(text);
      expect(r.applied, what).toBe(false);
      expect(r.verdict.reasons.map((x) => `${x.check}: ${x.message}`).join("; "), what).toMatch(reason);
      expect(reports.at(-1)?.kind, what).toBe("manifest-rejected");
    }
    expect(await runningIds()).toEqual(before);
    expect(agent.current()?.version).toBe(1);
  });

  it("a manifest asking for privileged mode or an image by tag is refused", async () => {
    const before = await runningIds();
    const base = manifest(2);
    const first = names[0] as string;
    const priv = manifest(2, {}, { ...base.modules, [first]: { ...base.modules[first]!, options: { ...base.modules[first]!.options, privileged: true } } });
    const r1 = await agent.apply(await sign(priv));
    expect(r1.applied).toBe(false);
    expect(r1.verdict.reasons.map((x) => x.message).join()).toMatch(/privileged/);
    const byTag = manifest(2, {}, { ...base.modules, [first]: { ...base.modules[first]!, image: `${images[0]!.repository}:latest` } });
    const r2 = await agent.apply(await sign(byTag));
    expect(r2.applied).toBe(false);
    expect(r2.verdict.reasons.map((x) => x.message).join()).toMatch(/sha256|digest/);
    expect(await runningIds()).toEqual(before);
  });

  it("an image swapped under its tag in the registry is not what runs: the pin wins", async () => {
    const img = images[1] as BuiltImage;
    const swapped = buildBusyboxImage(names[1] as string, `evil-${Date.now()}`);
    // Publish the impostor under the tag the original was pushed with, and tag it locally too.
    const originalTag = `${img.repository}:${names[1]}-swap`;
    dockerCli(["tag", swapped.ref, originalTag]);
    dockerCli(["push", originalTag]);
    await agent.tick();
    const info = await docker.inspectContainer(`edgetrust-${names[1]}`);
    const expected = await docker.inspectImage(img.ref);
    expect(info?.Image).toBe(expected?.Id);
    expect(info?.Image).not.toBe((await docker.inspectImage(swapped.ref))?.Id);
  });

  it("a container started by hand with a module's name is removed and never gets an identity", async () => {
    const victim = names[2] as string;
    dockerCli(["rm", "-f", `edgetrust-${victim}`]);
    const handId = dockerCli(["run", "-d", "--name", `edgetrust-${victim}`, "--network", "none", "--label", "io.edgetrust.managed=true", "--label", `io.edgetrust.device=${DEVICE}`, "--label", `io.edgetrust.module=${victim}`, "--label", `io.edgetrust.image-digest=${images[2]!.digest}`, images[2]!.ref, "sleep", "300"]).trim();
    const statuses = await agent.tick();
    expect(await docker.inspectContainer(handId)).toBeUndefined();
    const reg = device.modules.get(victim);
    expect(reg?.containerId).not.toBe(handId);
    expect(statuses.find((s) => s.name === victim)?.state).toBe("running");
    const fresh = await docker.inspectContainer(`edgetrust-${victim}`);
    expect(fresh?.Id).toBe(reg?.containerId);
  });

  it("an exited module is restarted by its restart policy", async () => {
    const n = names[1] as string;
    await docker.stopContainer(`edgetrust-${n}`, 0);
    const statuses = await agent.tick();
    expect(statuses.find((s) => s.name === n)).toMatchObject({ state: "running", restarts: 1 });
    expect((await docker.inspectContainer(`edgetrust-${n}`))?.State.Running).toBe(true);
  });

  it("a new version replaces modules and removes those no longer in the manifest", async () => {
    const m = manifest(2);
    delete m.modules[names[2] as string];
    const r = await agent.apply(await sign(m));
    expect(r.applied).toBe(true);
    expect(await docker.inspectContainer(`edgetrust-${names[2]}`)).toBeUndefined();
    expect(device.modules.get(names[2] as string)).toBeUndefined();
    expect(device.modules.get(names[0] as string)?.manifestVersion).toBe(2);
  });

  it("a reboot boots the last-known-good from cached images without pulling", async () => {
    await agent.stop();
    for (const n of names) await docker.removeContainer(`edgetrust-${n}`);
    const pulls: string[] = [];
    const rebooted = new EdgeAgent({
      docker,
      identity: new ManagementSocketRegistrar(device.mgmtSocket, device.socketsDir),
      policy, trustRoot, deviceId: DEVICE, stateDir: join(dir, "agent"),
      log: createLogger("edge-agent", { level: "silent" }),
      onPull: (mod) => pulls.push(mod),
    });
    const r = await rebooted.boot();
    expect(r?.applied).toBe(true);
    expect(r?.verdict.version).toBe(2);
    expect(r?.modules.map((s) => s.state)).toEqual(["running", "running"]);
    expect(pulls).toEqual([]);
    writeFileSync(join(dir, "state-after-boot.json"), readFileSync(join(dir, "agent", "manifest-state.json")));
    expect(JSON.parse(readFileSync(join(dir, "agent", "manifest-state.json"), "utf8")).version).toBe(2);
  });
});
