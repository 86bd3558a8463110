import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createLogger } from "../common/index.js";
import { addSignature, MANIFEST_TYP, parsePolicy, signManifest, type JwsSigner, type Manifest, type TrustRoot } from "../policy/index.js";
import { makeSigners, makeTrustRoot } from "../policy/fixtures.js";
import { buildBusyboxImage, DOCKER_SOCKET, REGISTRY, type BuiltImage } from "../test/fixtures/images.js";
import { startTestDevice, type TestDevice } from "../test/fixtures/device.js";
import { runCli } from "../test/fixtures/cli.js";
import { DockerClient } from "../engine/index.js";
import { EdgeAgent, type AgentReport } from "./agent.js";
import { ManagementSocketRegistrar } from "./identity-client.js";
import { listManaged } from "./containers.js";

/**
 * Issue 17: a deployment that cannot be applied must not leave the device on it. Each failure here is real — an
 * image whose entrypoint does not exist (the engine refuses to start it), a digest the registry does not have — on
 * the project's dockerd; the device must come back to its last-known-good: the same digests and version running, the
 * same attested identities, the same accepted state, and the reason reported.
 */

const docker = new DockerClient({ socketPath: DOCKER_SOCKET });
const tag = `${process.pid}`;
const DEVICE = `rollback-dev-${tag}`;
const names = [`alpha${tag}`, `beta${tag}`];

const POLICY = `version: 1
mode: enforce
trust:
  trustRoot: trust-root.json
images:
  registries: ["${REGISTRY}"]
modules:
  allow: ["alpha*", "beta*"]
  defaults:
    network: [none]
    users: ["1000:1000"]
`;

describe("edge agent: applying a deployment is all-or-nothing (real dockerd)", () => {
  const dir = mkdtempSync(join(tmpdir(), "et-rollback-"));
  const stateDir = join(dir, "agent");
  let device: TestDevice;
  let agent: EdgeAgent;
  let signers: JwsSigner[];
  let trust: { root: TrustRoot; text: string };
  let v1: BuiltImage[];
  let v2: BuiltImage[];
  let broken: BuiltImage;
  const reports: AgentReport[] = [];

  function manifest(version: number, imgs: Array<BuiltImage | string>): Manifest {
    const now = Date.now();
    return {
      schemaVersion: 1, deploymentId: "dep-rollback", version, targets: [DEVICE],
      issuedAt: new Date(now - 60_000).toISOString(), expiresAt: new Date(now + 86_400_000).toISOString(),
      modules: Object.fromEntries(names.map((n, i) => {
        const img = imgs[i];
        return [n, { image: typeof img === "string" ? img : (img?.ref ?? ""), options: { user: "1000:1000", network: "none" as const }, restartPolicy: "always" as const, startupOrder: i }];
      })),
    };
  }

  async function sign(m: Manifest): Promise<string> {
    return JSON.stringify(await signManifest(await signManifest(m, signers[0] as JwsSigner), signers[1] as JwsSigner));
  }

  /** What the device runs, as the engine and the identity daemon see it. */
  async function snapshot(): Promise<{ containers: Array<{ module: string; id: string; digest: string; version: number; running: boolean }>; identities: Array<{ name: string; version: number | undefined }>; state: string }> {
    const containers = (await listManaged(docker, DEVICE)).map((c) => ({ module: c.module, id: c.id, digest: c.digest, version: c.manifestVersion, running: c.running })).sort((a, b) => a.module.localeCompare(b.module));
    const identities = device.modules.list().map((m) => ({ name: m.name, version: m.manifestVersion })).sort((a, b) => a.name.localeCompare(b.name));
    const stateFile = join(stateDir, "manifest-state.json");
    return { containers, identities, state: existsSync(stateFile) ? readFileSync(stateFile, "utf8") : "" };
  }

  function newAgent(): EdgeAgent {
    return new EdgeAgent({
      docker,
      identity: new ManagementSocketRegistrar(device.mgmtSocket, device.socketsDir),
      policy: parsePolicy(POLICY, "policy.yaml"),
      trustRoot: trust.root,
      deviceId: DEVICE,
      stateDir,
      log: createLogger("edge-agent", { level: "silent" }),
      report: (r) => reports.push(r),
      backoff: { baseMs: 0, maxMs: 0 },
    });
  }

  beforeAll(async () => {
    v1 = names.map((n) => buildBusyboxImage(n, `${n}-v1-${Date.now()}`));
    v2 = names.map((n) => buildBusyboxImage(n, `${n}-v2-${Date.now()}`));
    // A real image the engine cannot start: its command does not exist in it.
    broken = buildBusyboxImage(names[1] as string, `${names[1]}-broken-${Date.now()}`, ["/no/such/entrypoint"]);
    signers = await makeSigners();
    trust = await makeTrustRoot(signers, { threshold: 2, expires: new Date(Date.now() + 365 * 86_400_000).toISOString() });
    device = await startTestDevice(docker, DEVICE);
    agent = newAgent();
    const r = await agent.apply(await sign(manifest(1, v1)));
    expect(r.verdict.reasons).toEqual([]);
    expect(r.applied).toBe(true);
  }, 240_000);

  afterAll(async () => {
    await agent?.stop();
    for (const c of await listManaged(docker, DEVICE)) await docker.removeContainer(c.id);
    await device?.close();
  });

  it("a threshold-signed manifest naming a module `alpha-../../../tmp/x` is refused at verify: nothing changes", async () => {
    const before = await snapshot();
    const m = manifest(2, v2) as unknown as { modules: Record<string, unknown> };
    m.modules = { [`${names[0]}-../../../tmp/x`]: m.modules[names[0] as string], [names[1] as string]: m.modules[names[1] as string] };
    let jws = await addSignature({ payload: new TextEncoder().encode(JSON.stringify(m)) }, signers[0] as JwsSigner, MANIFEST_TYP);
    jws = await addSignature({ jws }, signers[1] as JwsSigner, MANIFEST_TYP);
    const r = await agent.apply(JSON.stringify(jws));
    expect(r.applied).toBe(false);
    expect(r.verdict.reasons.map((x) => x.check)).toContain("schema");
    expect(reports.at(-1)?.kind).toBe("manifest-rejected");
    // Running modules untouched (same container IDs, still running), accepted version unchanged.
    expect(await snapshot()).toEqual(before);
    expect(before.containers.every((c) => c.running && c.version === 1)).toBe(true);
  });

  it("a module that cannot start: the device is back on the last-known-good, the failure reported with its step", async () => {
    const before = await snapshot();
    const lkg = readFileSync(join(stateDir, "current.jws"), "utf8");
    const failing = await sign(manifest(2, [v2[0] as BuiltImage, broken]));
    const r = await agent.apply(failing);
    expect(r.verdict.ok).toBe(true);
    expect(r.applied).toBe(false);
    expect(r.failure).toMatchObject({ step: "start", module: names[1], restoredVersion: 1, notRestored: [] });
    const after = await snapshot();
    // The last-known-good runs again: v1's digests at version 1, each attested at version 1; the state never moved.
    expect(after.containers.map((c) => [c.module, c.digest, c.version, c.running])).toEqual(names.map((n, i) => [n, v1[i]?.digest, 1, true]));
    expect(after.identities).toEqual(names.map((n) => ({ name: n, version: 1 })));
    expect(after.state).toBe(before.state);
    expect(readFileSync(join(stateDir, "current.jws"), "utf8")).toBe(lkg);
    expect(existsSync(join(stateDir, "pending.jws"))).toBe(false);
    expect(agent.current()?.version).toBe(1);
    const failed = reports.at(-1);
    expect(failed).toMatchObject({ kind: "deployment-failed", version: 2 });
    expect(failed?.reasons?.[0]).toMatch(new RegExp(`^deployment failed at start ${names[1]}: .*back on the last-known-good version 1`));

    // The same failing manifest again (the cloud keeps serving it) is not re-tried: the device is not churned.
    const again = await agent.apply(failing);
    expect(again.applied).toBe(false);
    const ids = (await snapshot()).containers.map((c) => c.id);
    expect(ids).toEqual(after.containers.map((c) => c.id));
  });

  it("an image the registry does not have: the pull fails before anything running is touched", async () => {
    const before = await snapshot();
    const missing = `${v2[1]?.repository}@sha256:${"0".repeat(64)}`;
    const r = await agent.apply(await sign(manifest(3, [v2[0] as BuiltImage, missing])));
    expect(r.applied).toBe(false);
    expect(r.failure).toMatchObject({ step: "pull", module: names[1], restoredVersion: 1 });
    // Not one container replaced: the same IDs still run.
    expect(await snapshot()).toEqual(before);
  });

  it("a good deployment after the failures applies whole", async () => {
    const r = await agent.apply(await sign(manifest(4, v2)));
    expect(r.applied).toBe(true);
    const after = await snapshot();
    expect(after.containers.map((c) => [c.digest, c.version, c.running])).toEqual(v2.map((i) => [i.digest, 4, true]));
    expect(JSON.parse(after.state)).toMatchObject({ version: 4 });
  });

  it("`agent run --once` with a deployment that fails: exit 1, why on stderr, the last-known-good still runs", async () => {
    await agent.stop();
    const file = join(dir, "broken.jws");
    writeFileSync(file, await sign(manifest(5, [v1[0] as BuiltImage, broken])));
    writeFileSync(join(dir, "trust-root.json"), trust.text);
    writeFileSync(join(dir, "policy.yaml"), POLICY);
    const config = join(dir, "edgetrust.yaml");
    writeFileSync(config, [
      "agent:", `  deviceId: ${DEVICE}`, `  policyFile: ${join(dir, "policy.yaml")}`, `  stateDir: ${stateDir}`,
      `  dockerSocket: ${DOCKER_SOCKET}`, `  managementSocket: ${device.mgmtSocket}`, `  workloadSocketsDir: ${device.socketsDir}`, "",
    ].join("\n"));
    const r = await runCli(["agent", "run", "--config", config, "--manifest", file, "--once", "--json"]);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`^deployment failed at start ${names[1]}: .*back on the last-known-good version 4`, "m"));
    expect(JSON.parse(r.stdout)).toMatchObject({ rejected: true, version: 4 });
    const after = await snapshot();
    expect(after.containers.map((c) => [c.digest, c.version, c.running])).toEqual(v2.map((i) => [i.digest, 4, true]));
  });

  it("a device with no last-known-good: a failing first deployment leaves nothing of it running or attested", async () => {
    const other = `${DEVICE}-fresh`;
    const fresh = await startTestDevice(docker, other);
    try {
      const a = new EdgeAgent({
        docker, identity: new ManagementSocketRegistrar(fresh.mgmtSocket, fresh.socketsDir), policy: parsePolicy(POLICY, "policy.yaml"),
        trustRoot: trust.root, deviceId: other, stateDir: join(dir, "fresh"), log: createLogger("edge-agent", { level: "silent" }), backoff: { baseMs: 0, maxMs: 0 },
      });
      const m = manifest(1, [v1[0] as BuiltImage, broken]);
      m.targets = [other];
      const r = await a.apply(await sign(m));
      expect(r.failure).toMatchObject({ step: "start", restoredVersion: 0 });
      expect(await listManaged(docker, other)).toEqual([]);
      expect(fresh.modules.list()).toEqual([]);
      expect(existsSync(join(dir, "fresh", "manifest-state.json"))).toBe(false);
    } finally {
      for (const c of await listManaged(docker, other)) await docker.removeContainer(c.id);
      await fresh.close();
    }
  });
});
