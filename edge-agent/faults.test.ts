import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { createLogger } from "../common/index.js";
import { parsePolicy, signManifest, type JwsSigner, type Manifest, type TrustRoot } from "../policy/index.js";
import { makeSigners, makeTrustRoot } from "../policy/fixtures.js";
import { buildBusyboxImage, dockerCli, type BuiltImage } from "../test/fixtures/images.js";
import { startPrivateDocker, type PrivateDocker } from "../test/fixtures/private-docker.js";
import { startTestDevice, type TestDevice } from "../test/fixtures/device.js";
import { EdgeAgent } from "./agent.js";
import { ManagementSocketRegistrar } from "./identity-client.js";
import { listManaged } from "./containers.js";

const tag = `${process.pid}`;
const DEVICE = `fault-dev-${tag}`;
const names = [`alpha${tag}`, `beta${tag}`];

/** Put a busybox image into the private registry and return its pin there. */
function publish(img: BuiltImage, registry: string, name: string): BuiltImage {
  const target = `${registry}/edgetrust-test/${name}:v`;
  dockerCli(["tag", img.ref, target]);
  const out = dockerCli(["push", target]);
  const digest = /digest: (sha256:[0-9a-f]{64})/.exec(out)?.[1];
  if (!digest) throw new Error(`no digest from push: ${out}`);
  const repository = `${registry}/edgetrust-test/${name}`;
  return { repository, digest, ref: `${repository}@${digest}` };
}

describe("edge agent faults (a private dockerd and registry)", () => {
  const dir = mkdtempSync(join(tmpdir(), "et-faults-"));
  let pd: PrivateDocker;
  let device: TestDevice;
  let signers: JwsSigner[];
  let trustRoot: { root: TrustRoot; text: string };
  let v1: BuiltImage[];
  let v2: BuiltImage[];
  let policyYaml: string;
  const stateDir = join(dir, "agent");

  function manifest(version: number, imgs: BuiltImage[]): Manifest {
    const now = Date.now();
    return {
      schemaVersion: 1, deploymentId: "dep-faults", version, targets: [DEVICE],
      issuedAt: new Date(now - 60_000).toISOString(), expiresAt: new Date(now + 86_400_000).toISOString(),
      modules: Object.fromEntries(names.map((n, i) => [n, {
        image: imgs[i]?.ref ?? "", options: { user: "1000:1000", network: "none" as const }, restartPolicy: "always" as const, startupOrder: i,
      }])),
    };
  }

  async function signed(m: Manifest): Promise<string> {
    return JSON.stringify(await signManifest(await signManifest(m, signers[0] as JwsSigner), signers[1] as JwsSigner));
  }

  function newAgent(onPull?: (m: string) => void): EdgeAgent {
    return new EdgeAgent({
      docker: pd.docker,
      identity: new ManagementSocketRegistrar(device.mgmtSocket, device.socketsDir),
      policy: parsePolicy(policyYaml, "policy.yaml"),
      trustRoot: trustRoot.root,
      deviceId: DEVICE,
      stateDir,
      log: createLogger("edge-agent", { level: "silent" }),
      backoff: { baseMs: 0, maxMs: 0 },
      ...(onPull ? { onPull: (m: string) => onPull(m) } : {}),
    });
  }

  async function running(): Promise<Array<{ module: string; digest: string; version: number }>> {
    return (await listManaged(pd.docker, DEVICE)).filter((c) => c.running).map((c) => ({ module: c.module, digest: c.digest, version: c.manifestVersion })).sort((a, b) => a.module.localeCompare(b.module));
  }

  beforeAll(async () => {
    pd = await startPrivateDocker();
    policyYaml = `version: 1\nmode: enforce\ntrust:\n  trustRoot: trust-root.json\nimages:\n  registries: ["${pd.registry}"]\nmodules:\n  allow: ["*"]\n  defaults:\n    network: [none]\n    users: ["1000:1000"]\n`;
    v1 = names.map((n) => publish(buildBusyboxImage(n, `${n}-v1-${Date.now()}`), pd.registry, n));
    v2 = names.map((n) => publish(buildBusyboxImage(n, `${n}-v2-${Date.now()}`), pd.registry, n));
    signers = await makeSigners();
    trustRoot = await makeTrustRoot(signers, { threshold: 2, expires: new Date(Date.now() + 365 * 86_400_000).toISOString() });
    device = await startTestDevice(pd.docker, DEVICE);
  }, 240_000);

  afterAll(async () => {
    await device?.close();
    await pd?.close();
  });

  it("dockerd restarted mid-run: supervision recovers every module", async () => {
    const agent = newAgent();
    const r = await agent.apply(await signed(manifest(1, v1)));
    expect(r.verdict.reasons).toEqual([]);
    expect(r.modules.map((m) => m.reason ?? m.state)).toEqual(["running", "running"]);
    await pd.stopDockerd();
    // While the engine is down a supervision pass fails cleanly; the agent stays up.
    await expect(agent.tick()).rejects.toThrow(/unreachable/);
    await pd.startDockerd();
    const statuses = await agent.tick();
    expect(statuses.map((s) => s.state)).toEqual(["running", "running"]);
    expect((await running()).map((c) => c.digest)).toEqual(v1.map((i) => i.digest));
    await agent.stop();
  });

  it("reboot with no network: the last-known-good runs from cached images, nothing is pulled", async () => {
    await pd.stopRegistry();
    for (const c of await listManaged(pd.docker, DEVICE)) await pd.docker.removeContainer(c.id);
    const pulls: string[] = [];
    const agent = newAgent((m) => pulls.push(m));
    const r = await agent.boot();
    expect(r?.applied).toBe(true);
    expect(pulls).toEqual([]);
    expect((await running()).map((c) => c.digest)).toEqual(v1.map((i) => i.digest));
    await agent.stop();
    await pd.startRegistry();
  });

  it("agent killed with SIGKILL in the middle of an update: the next start converges on one consistent version", async () => {
    const file = join(dir, "v2.jws");
    writeFileSync(file, await signed(manifest(2, v2)));
    const input = {
      dockerSocket: pd.socket, mgmtSocket: device.mgmtSocket, socketsDir: device.socketsDir, stateDir, deviceId: DEVICE,
      policyYaml, trustRootText: trustRoot.text, manifestFile: file,
    };
    const child = spawn(process.execPath, ["--import", "tsx", "test/fixtures/agent-child.ts", JSON.stringify(input)], { stdio: ["ignore", "pipe", "inherit"] });
    const killedAt = await new Promise<string>((resolve, reject) => {
      const lines = createInterface({ input: child.stdout });
      lines.on("line", (line) => {
        const ev = JSON.parse(line) as { event: string };
        // The first pull of the new images: the update is half-done (new state, old containers).
        if (ev.event === "pull") {
          child.kill("SIGKILL");
          resolve(line);
        }
      });
      child.on("exit", () => resolve("exited before a pull"));
      child.on("error", reject);
    });
    expect(killedAt).toMatch(/"event":"pull"/);
    await new Promise((r) => child.exitCode !== null || child.signalCode !== null ? r(undefined) : child.once("exit", r));

    const agent = newAgent();
    const r = await agent.boot();
    expect(r?.applied).toBe(true);
    const state = JSON.parse(readFileSync(join(stateDir, "manifest-state.json"), "utf8")) as { version: number };
    const live = await running();
    // One version everywhere: the accepted state, the running containers and their attested identities.
    expect(live.map((c) => c.version)).toEqual([state.version, state.version]);
    expect(live.map((c) => c.digest)).toEqual((state.version === 2 ? v2 : v1).map((i) => i.digest));
    for (const c of live) expect(device.modules.get(c.module)?.manifestVersion).toBe(state.version);
    expect(state.version).toBe(2);
    await agent.stop();
  });
});
