import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { request } from "node:https";
import { createLogger } from "../common/index.js";
import { createCaServer, type CaServer } from "../ca-service/index.js";
import { makeTestCa, opensslCsr, quietLogger, softHsm, sqliteStore, testConfig, type SoftHsm, type TestCa, type TestStore } from "../ca-service/test-helpers.js";
import { parsePolicy, signManifest, type JwsSigner, type Manifest } from "../policy/index.js";
import { makeSigners, makeTrustRoot } from "../policy/fixtures.js";
import { buildBusyboxImage, DOCKER_SOCKET, REGISTRY, type BuiltImage } from "../test/fixtures/images.js";
import { startTestDevice, type TestDevice } from "../test/fixtures/device.js";
import { freePort } from "../common/index.js";
import { DockerClient } from "../engine/index.js";
import { EdgeAgent, type AgentReport } from "./agent.js";
import { ManagementSocketRegistrar } from "./identity-client.js";
import { CloudClient, ReportQueue, syncDeployment } from "./cloud.js";

const tag = `${process.pid}`;
const DEVICE = `cloud-dev-${tag}`;
const MODULE = `cloudmod${tag}`;
const docker = new DockerClient({ socketPath: DOCKER_SOCKET });

let hsm: SoftHsm;
let ts: TestStore;
let t: TestCa;
let server: CaServer | undefined;
let dir: string;
let port: number;
let device: TestDevice;
let signers: JwsSigner[];
let image: BuiltImage;
let agent: EdgeAgent;
let cloud: CloudClient;
let queue: ReportQueue;

async function startServer(): Promise<void> {
  server = await createCaServer(t.config, { ca: t.ca, store: ts.store, logger: quietLogger() });
  await server.listen();
}

function manifest(version: number): Manifest {
  return {
    schemaVersion: 1, deploymentId: "cloud", version, targets: [DEVICE],
    issuedAt: new Date(Date.now() - 60_000).toISOString(), expiresAt: new Date(Date.now() + 86_400_000).toISOString(),
    modules: { [MODULE]: { image: image.ref, options: { user: "1000:1000" }, restartPolicy: "always", startupOrder: 0 } },
  };
}

/** The security team's upload, through the admin API (token auth), trusting the test root. */
async function upload(m: Manifest): Promise<void> {
  const body = JSON.stringify(await signManifest(await signManifest(m, signers[0] as JwsSigner), signers[1] as JwsSigner));
  await new Promise<void>((resolve, reject) => {
    const req = request(`https://127.0.0.1:${port}/v1/deployments`, {
      method: "PUT", ca: t.init.root.certPem,
      headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body), authorization: `Bearer ${t.init.adminToken}` },
    }, (r) => {
      r.resume();
      r.on("end", () => (r.statusCode === 201 ? resolve() : reject(new Error(`upload: HTTP ${r.statusCode}`))));
    });
    req.on("error", reject);
    req.end(body);
  });
}

beforeAll(async () => {
  hsm = softHsm("et-agent-cloud");
  ts = await sqliteStore();
  dir = mkdtempSync(join(tmpdir(), "et-agent-cloud-"));
  port = await freePort();
  t = await makeTestCa(ts.store, await hsm.open(), testConfig({ port }));
  await startServer();
  // The device's identity, issued by the CA like a provisioned device's.
  await t.store.upsertEnrollment({ deviceId: DEVICE, kind: "device", commonName: DEVICE, dnsNames: [] }, "test");
  const k = opensslCsr(dir, "device");
  const issued = await t.ca.issue({ csrPem: k.csr, profile: "device-identity", deviceId: DEVICE }, "test");
  cloud = new CloudClient(`https://127.0.0.1:${port}`, { cert: issued.record.certPem, key: k.key, ca: t.init.root.certPem });

  image = buildBusyboxImage(MODULE, `${MODULE}-${Date.now()}`);
  signers = await makeSigners();
  const trustRoot = (await makeTrustRoot(signers, { threshold: 2, expires: new Date(Date.now() + 365 * 86_400_000).toISOString() })).root;
  device = await startTestDevice(docker, DEVICE);
  const policy = parsePolicy(`version: 1\nmode: enforce\ntrust:\n  trustRoot: trust-root.json\nimages:\n  registries: ["${REGISTRY}"]\nmodules:\n  allow: ["*"]\n  defaults:\n    users: ["1000:1000"]\n`, "policy.yaml");
  queue = new ReportQueue(join(dir, "reports.jsonl"), (r) => cloud.sendReport(r));
  agent = new EdgeAgent({
    docker, identity: new ManagementSocketRegistrar(device.mgmtSocket, device.socketsDir), policy, trustRoot,
    deviceId: DEVICE, stateDir: join(dir, "agent"), log: createLogger("edge-agent", { level: "silent" }),
    report: (r: AgentReport) => queue.push(r),
  });
});

afterAll(async () => {
  await docker.removeContainer(`edgetrust-${MODULE}`);
  await device?.close();
  await server?.close();
  await ts?.cleanup();
  await t?.keys.close();
  hsm?.cleanup();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("edge agent ↔ cloud over mTLS (real ca-service)", () => {
  it("nothing published yet: nothing applied", async () => {
    expect(await syncDeployment(agent, cloud)).toEqual({ fetched: false, applied: false, refused: false });
  });

  it("fetches the manifest the security team uploaded, verifies it on the device, and runs it", async () => {
    await upload(manifest(1));
    expect(await syncDeployment(agent, cloud)).toEqual({ fetched: true, applied: true, refused: false, version: 1 });
    expect((await docker.inspectContainer(`edgetrust-${MODULE}`))?.State.Running).toBe(true);
    expect(await syncDeployment(agent, cloud)).toEqual({ fetched: true, applied: false, refused: false, version: 1 });
  });

  it("reports wait on disk while the cloud is down and arrive in order once it is back", async () => {
    expect(await queue.flush()).toBeGreaterThan(0);
    await server?.close();
    await upload(manifest(2)).catch(() => undefined);
    // Cloud down: a local apply still reports; nothing is lost.
    const file = join(dir, "v2.jws");
    writeFileSync(file, JSON.stringify(await signManifest(await signManifest(manifest(2), signers[0] as JwsSigner), signers[2] as JwsSigner)));
    expect((await agent.apply(readFileSync(file, "utf8"))).applied).toBe(true);
    const waiting = queue.pending().map((r) => r.kind);
    expect(waiting).toEqual(["manifest-accepted", "module-status"]);
    expect(await queue.flush()).toBe(0);
    expect(queue.pending()).toHaveLength(2);
    await startServer();
    expect(await queue.flush()).toBe(2);
    expect(queue.pending()).toEqual([]);
    const stored = await t.store.db.query<{ kind: string; body: string }>("SELECT kind, body FROM device_reports WHERE device_id = ? ORDER BY received_at", [DEVICE]);
    expect(stored.slice(-2).map((r) => [r.kind, (JSON.parse(r.body) as { version?: number }).version])).toEqual([["manifest-accepted", 2], ["module-status", 2]]);
  });
});
