/**
 * SAS authentication through the edge hub with the real parts behind it: module keys in SoftHSM2, the identity
 * daemon's management socket verifying tokens (`POST /v1/sas/verify`), the hub's own policy and attestation checks.
 * Clients connect as the Azure SDK's MQTT transport does (client id `<d>/<m>`, user name `<host>/<d>/<m>/?api-version…`,
 * the token as password, no client certificate). Every attack the issue names is tried and refused.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import mqtt, { type MqttClient } from "mqtt";
import { createLogger } from "../common/index.js";
import { DockerClient } from "../engine/index.js";
import { Pkcs11KeyStore, SOFTHSM_MODULE, createSoftHsmDir, initToken, type SoftHsmDir } from "../hsm/index.js";
import { ManagementClient } from "../identity-api/index.js";
import { parsePolicy } from "../policy/index.js";
import { ClientVerifier, CrlCache, EdgeHub, HubStore, parseRoutes, type ClientIdentity, type Rejection } from "../edge-hub/index.js";
import type { AttestedModuleInput } from "../device-identity/index.js";
import { startHubDevice, type HubDevice } from "./fixtures/hub-device.js";
import { DOCKER_SOCKET } from "./fixtures/images.js";

const DEVICE = `sas-dev-${process.pid}`;
const HOST = "edgetrust.local";
const POLICY = `version: 1
mode: enforce
trust:
  trustRoot: trust-root.json
images:
  registries: ["127.0.0.1:5000"]
modules:
  allow: ["*"]
  defaults:
    network: [host]
    users: ["1000:1000"]
  overrides:
    alpha: { auth: sas }
    beta: { auth: sas }
hub:
  publish:
    - id: module-telemetry
      principals: [module]
      topics: ["devices/{device}/modules/{module}/messages/events/#"]
`;

let hsm: SoftHsmDir;
let keys: Pkcs11KeyStore;
let device: HubDevice;
let hub: EdgeHub;
let store: HubStore;
const dir = mkdtempSync(join(tmpdir(), "et-sas-hub-"));
const connected: ClientIdentity[] = [];
const rejected: Rejection[] = [];

const reg = (name: string, over: Partial<AttestedModuleInput> = {}): AttestedModuleInput => ({
  name, containerId: "d".repeat(64), imageRepository: "127.0.0.1:5000/m", imageDigest: `sha256:${"e".repeat(64)}`,
  manifestVersion: 1, deploymentId: "dep", uid: 1000, gid: 1000, auth: "sas", generationId: `g${name}00001`, ...over,
});

/** What the workload socket's sign route does for the SDK (the route itself is exercised in the module e2e test). */
async function token(module: string, generationId: string, ttlSeconds = 3600, signAs = module): Promise<string> {
  const sr = encodeURIComponent(`${HOST}/devices/${DEVICE}/modules/${module}`);
  const se = Math.floor(Date.now() / 1000) + ttlSeconds;
  const sig = await device.sas?.sign(signAs, generationId, Buffer.from(`${sr}\n${se}`));
  return `SharedAccessSignature sr=${sr}&sig=${encodeURIComponent(sig?.toString("base64") ?? "")}&se=${se}`;
}

function connect(module: string, password: string | undefined, clientId = `${DEVICE}/${module}`): Promise<MqttClient> {
  const c = mqtt.connect(`mqtts://127.0.0.1:${hub.boundPort}`, {
    ca: device.root.toString("pem"), servername: "localhost", clientId, protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5000,
    username: `${HOST}/${DEVICE}/${module}/?api-version=2020-09-30&DeviceClientType=azure-iot-device%2F1.18.4`,
    ...(password !== undefined ? { password } : {}),
  });
  return new Promise((resolve, reject) => {
    c.once("connect", () => resolve(c));
    c.once("error", (e) => { c.end(true); reject(e); });
    c.once("close", () => reject(new Error("closed before CONNACK")));
  });
}

async function refused(module: string, password: string | undefined, clientId?: string): Promise<Rejection> {
  const since = rejected.length;
  await expect(connect(module, password, clientId)).rejects.toThrow(/Not authorized|closed/i);
  await expect.poll(() => rejected.length).toBeGreaterThan(since);
  return rejected[since] as Rejection;
}

beforeAll(async () => {
  hsm = createSoftHsmDir();
  initToken({ module: SOFTHSM_MODULE, label: "et-sas-hub", soPin: "so-sas-hub", userPin: "pin-sas-hub" });
  keys = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: "et-sas-hub", pin: "pin-sas-hub", logger: createLogger("hsm", { level: "silent" }) });
  device = await startHubDevice(new DockerClient({ socketPath: DOCKER_SOCKET }), DEVICE, { moduleLifetimeSeconds: 3600, sasKeys: keys.mac });
  for (const m of [reg("alpha"), reg("beta"), reg("gamma")]) {
    await device.sas?.prepare(m);
    device.modules.register(m);
  }
  const log = createLogger("edge-hub", { level: "silent" });
  mkdirSync(join(dir, "crl"));
  const crl = new CrlCache({ source: "", cacheDir: join(dir, "crl"), issuers: [], require: false, log });
  await crl.start();
  store = new HubStore(join(dir, "hub.db"), { maxMessages: 1000, maxBytes: 1 << 20 });
  hub = new EdgeHub({
    host: "127.0.0.1", port: 0, serverTls: () => device.hubTls, clientCa: [device.root.toString("pem"), device.edgeCa.certificate.toString("pem")],
    verifier: new ClientVerifier({ trustDomain: device.trustDomain, edgeCas: [device.edgeCa.certificate], issuingCas: [], crl, attestation: device.attestation }),
    attestation: device.attestation, policy: parsePolicy(POLICY, "policy.yaml"),
    limits: { maxPayloadBytes: 65536, maxTopicLevels: 12, allowRootWildcard: false }, store,
    routes: parseRoutes({ up: "FROM /messages/modules/* INTO $upstream" }), defaultRoute: { priority: 0, ttlSeconds: 600 },
    sas: new ManagementClient(device.mgmtSocket), log,
  });
  hub.on("connected", (id) => connected.push(id));
  hub.on("rejected", (r) => rejected.push(r));
  await hub.start();
});

afterAll(async () => {
  await hub?.stop();
  await device?.close();
  await keys?.close();
  hsm?.cleanup();
  rmSync(dir, { recursive: true, force: true });
});

describe("edge hub: SAS-authenticated modules (keys in SoftHSM2, verified by the identity daemon)", () => {
  it("a module's genuine token connects it as that module, with its attestation and exactly the module ACL", async () => {
    const c = await connect("alpha", await token("alpha", "galpha00001"));
    const id = connected.find((x) => x.key === `${DEVICE}/alpha`);
    expect(id).toMatchObject({ principal: "module", moduleId: "alpha", attestation: { imageDigest: `sha256:${"e".repeat(64)}`, manifestVersion: 1 } });
    await c.publishAsync(`devices/${DEVICE}/modules/alpha/messages/events/`, JSON.stringify({ n: 1 }), { qos: 1 });
    expect(store.next(10, new Set()).map((m) => m.topic)).toEqual([`devices/${DEVICE}/modules/alpha/messages/events/`]);
    // Same ACL as an X.509 module: another module's topic closes the connection.
    const since = rejected.length;
    const gone = new Promise<void>((r) => c.once("close", () => r()));
    c.publish(`devices/${DEVICE}/modules/beta/messages/events/`, "forged", { qos: 1 });
    await gone;
    expect(rejected.slice(since).map((r) => r.reason)).toContain("policy-denied");
  });

  it("attack: a token signed with another module's key is refused — presented as that module or as itself", async () => {
    const beta = await token("beta", "gbeta00001");
    // beta's genuine token under alpha's client id and user name
    expect((await refused("alpha", beta)).reason).toBe("sas-identity-mismatch");
    // alpha's resource with beta's key: the daemon says the signature is not alpha's
    const forged = beta.replace(encodeURIComponent(`${HOST}/devices/${DEVICE}/modules/beta`), encodeURIComponent(`${HOST}/devices/${DEVICE}/modules/alpha`));
    const r = await refused("alpha", forged);
    expect(r).toMatchObject({ reason: "sas-refused" });
    expect(r.detail).toMatch(/signature is not module alpha's/);
  });

  it("attack: an expired token is refused; a connection is closed when its token expires", async () => {
    const short = await token("alpha", "galpha00001", 3);
    const c = await connect("alpha", short);
    const cut = await new Promise<Rejection>((resolve) => {
      const on = (r: Rejection) => { if (r.reason === "sas-expired") { hub.off("rejected", on); resolve(r); } };
      hub.on("rejected", on);
    });
    expect(cut.identity).toBe(`${DEVICE}/alpha`);
    await new Promise<void>((r) => (c.connected ? c.once("close", () => r()) : r()));
    const again = await refused("alpha", short);
    expect(again.reason).toBe("sas-refused");
    expect(again.detail).toMatch(/expired at/);
  });

  it("attack: a token replayed after deregistration is refused (the live connection was cut on deregistration)", async () => {
    const t = await token("beta", "gbeta00001");
    const c = await connect("beta", t);
    const since = rejected.length;
    device.modules.deregister("beta", "test");
    await expect.poll(() => rejected.slice(since).find((r) => r.identity === `${DEVICE}/beta`)?.reason).toBe("deregistered");
    await new Promise<void>((r) => (c.connected ? c.once("close", () => r()) : r()));
    const replay = await refused("beta", t);
    expect(replay.reason).toBe("sas-refused");
    expect(replay.detail).toMatch(/beta is not registered/);
  });

  it("attack: a SAS token for a module whose policy says x509 is refused by the hub even when the daemon vouches for it", async () => {
    const r = await refused("gamma", await token("gamma", "ggamma00001"));
    expect(r).toMatchObject({ reason: "sas-not-granted" });
    expect(r.detail).toMatch(/policy gives module gamma auth x509/);
  });

  it("no certificate and no token is refused as before; a wrong client id with a good token is refused", async () => {
    expect((await refused("alpha", undefined)).reason).toBe("no-certificate");
    expect((await refused("alpha", await token("alpha", "galpha00001"), "someone-else")).reason).toBe("sas-identity-mismatch");
  });

  it("drift: the module registered again with another image digest — its live SAS connection is cut, the token it held is refused", async () => {
    const held = await token("alpha", "galpha00001");
    const c = await connect("alpha", held);
    const since = rejected.length;
    // What the daemon is told when the agent re-creates the module from another digest: a new container, a new
    // generation (the agent makes one for every container it creates), so a new key.
    const drifted = reg("alpha", { containerId: "f".repeat(64), imageDigest: `sha256:${"f".repeat(64)}`, generationId: "galpha00002" });
    await device.sas?.prepare(drifted);
    device.modules.register(drifted);
    await expect.poll(() => rejected.slice(since).find((r) => r.identity === `${DEVICE}/alpha`)?.reason).toBe("attestation-changed");
    await new Promise<void>((r) => (c.connected ? c.once("close", () => r()) : r()));
    const replay = await refused("alpha", held);
    expect(replay.reason).toBe("sas-refused");
    expect(replay.detail).toMatch(/signature is not module alpha's/);
    // A token signed now (the new registration's key) connects, with the new attestation.
    const mark = connected.length;
    const again = await connect("alpha", await token("alpha", "galpha00002"));
    expect(connected.slice(mark).find((x) => x.key === `${DEVICE}/alpha`)?.attestation).toMatchObject({ imageDigest: `sha256:${"f".repeat(64)}` });
    await again.endAsync(true);
  });
});
