/**
 * The whole device path with real parts (DESIGN.md §3, attested boot steps 4–7): a 2-of-3 signed manifest → the edge
 * agent pulls the Node module image by digest from the local registry and runs two modules on the real dockerd
 * (host network, uid 1000, read-only rootfs, only their own workload socket mounted) → each module makes its key in
 * memory, sends a CSR on its socket and gets a certificate bound to its image digest → connects to the in-process
 * edge hub with mTLS → its telemetry reaches the upstream outbox; renewal early in the lifetime. Then the attacks.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import * as x509 from "@peculiar/x509";
import { createLogger } from "../common/index.js";
import { parsePolicy, signManifest, type JwsSigner, type Manifest, type TrustRoot } from "../policy/index.js";
import { makeSigners, makeTrustRoot } from "../policy/fixtures.js";
import { moduleUri, parseModuleAttestation } from "../pki/index.js";
import { DockerClient } from "../engine/index.js";
import { EdgeAgent, ManagementSocketRegistrar } from "../edge-agent/index.js";
import { ClientVerifier, CrlCache, EdgeHub, HubStore, parseRoutes, type ClientIdentity, type Rejection } from "../edge-hub/index.js";
import { startHubDevice, type HubDevice } from "./fixtures/hub-device.js";
import { DOCKER_SOCKET, REGISTRY } from "./fixtures/images.js";
import { buildNodeModuleImage, type NodeModuleImage } from "./fixtures/node-module-image.js";

const docker = new DockerClient({ socketPath: DOCKER_SOCKET });
const tag = `${process.pid}`;
const DEVICE = `e2e-dev-${tag}`;
const SENSOR = `sensor${tag}`;
const ROGUE = `rogue${tag}`;
const HAND = `edgetrust-hand-${tag}`;
/** The daemon's shortest module lifetime; the module renews at RENEW_AT of the lifetime left: ~15 s after issuance. */
const MODULE_LIFETIME_SECONDS = 300;
const RENEW_AT = "0.05";

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
    network: [host]
    users: ["1000:1000"]
    readOnlyRootfs: required
hub:
  publish:
    - id: module-telemetry
      principals: [module]
      topics: ["devices/{device}/modules/{module}/messages/events/#"]
`;

interface ModuleLog {
  container: string;
  step: string;
  [k: string]: unknown;
}

/** `docker logs -f` of each module container, parsed line by line (async: the servers in this process keep running). */
class ModuleLogs {
  readonly lines = new Map<string, ModuleLog[]>();
  private readonly followers: ChildProcess[] = [];

  follow(module: string, container: string): void {
    const p = spawn("docker", ["logs", "-f", container], { env: { ...process.env, DOCKER_HOST: `unix://${DOCKER_SOCKET}` }, stdio: ["ignore", "pipe", "ignore"] });
    this.followers.push(p);
    const list = this.lines.get(module) ?? [];
    this.lines.set(module, list);
    createInterface({ input: p.stdout }).on("line", (line) => {
      try {
        list.push({ container, ...(JSON.parse(line) as { step: string }) });
      } catch {
        list.push({ container, step: "unparsed", line });
      }
    });
  }

  of(module: string, container?: string): ModuleLog[] {
    return (this.lines.get(module) ?? []).filter((l) => container === undefined || l.container === container);
  }

  stop(): void {
    for (const p of this.followers) if (p.exitCode === null) p.kill();
  }
}

/** Poll `probe` until it returns something (bounded; no timing assertion, only a ceiling). */
async function until<T>(what: string, probe: () => T | undefined | false | Promise<T | undefined | false>, ms = 30_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("an attested Node module on the real device path: agent → identity → hub", () => {
  const dir = mkdtempSync(join(tmpdir(), "et-e2e-"));
  const policy = parsePolicy(POLICY, "policy.yaml");
  const logs = new ModuleLogs();
  const connected: ClientIdentity[] = [];
  const disconnected: ClientIdentity[] = [];
  const rejected: Rejection[] = [];
  let image: NodeModuleImage;
  let device: HubDevice;
  let hub: EdgeHub;
  let store: HubStore;
  let agent: EdgeAgent;
  let registrar: ManagementSocketRegistrar;
  let signers: JwsSigner[];
  let trustRoot: TrustRoot;

  const key = (module: string) => `${DEVICE}/${module}`;
  const containerOf = async (module: string) => (await docker.inspectContainer(`edgetrust-${module}`))?.Id;

  function manifest(version: number, names: string[]): Manifest {
    const env = (extra: Record<string, string>) => ({ EDGETRUST_HUB_PORT: String(hub.boundPort), EDGETRUST_TELEMETRY_MS: "500", EDGETRUST_RENEW_AT: RENEW_AT, ...extra });
    const all: Manifest["modules"] = {
      [SENSOR]: { image: image.ref, options: { user: "1000:1000", network: "host", readOnlyRootfs: true }, env: env({}), restartPolicy: "always", startupOrder: 0 },
      // The rogue runs the same image; its env makes the program publish once on the sensor's topic.
      [ROGUE]: { image: image.ref, options: { user: "1000:1000", network: "host", readOnlyRootfs: true }, env: env({ EDGETRUST_ATTACK_MODULE: SENSOR }), restartPolicy: "always", startupOrder: 1 },
    };
    const now = Date.now();
    return {
      schemaVersion: 1, deploymentId: "dep-e2e", version, targets: [DEVICE],
      modules: Object.fromEntries(Object.entries(all).filter(([n]) => names.includes(n))),
      issuedAt: new Date(now - 60_000).toISOString(), expiresAt: new Date(now + 86_400_000).toISOString(),
    };
  }

  async function sign(m: Manifest): Promise<string> {
    const [first, second] = signers as [JwsSigner, JwsSigner, JwsSigner];
    return JSON.stringify(await signManifest(await signManifest(m, first), second));
  }

  /** The module's certificate as it logged it (the public part only), with what it attests. */
  function certificateLogged(module: string, container: string): x509.X509Certificate | undefined {
    const line = logs.of(module, container).find((l) => l.step === "certificate");
    return line ? new x509.X509Certificate(String(line.pem)) : undefined;
  }

  function outbox(): Array<{ topic: string; body: { module?: string; seq?: number; forgedBy?: string } }> {
    return store.next(100_000, new Set()).map((m) => ({ topic: m.topic, body: JSON.parse(m.payload.toString("utf8")) as { module?: string } }));
  }

  beforeAll(async () => {
    image = await buildNodeModuleImage("node-module", `e2e-${tag}-${Date.now()}`);
    console.log(`node module image: ${(image.sizeBytes / 1e6).toFixed(1)} MB (runtime ${(image.runtimeBytes / 1e6).toFixed(1)} MB), built in ${image.buildMs} ms${image.runtimeBuilt ? " including the runtime layer" : " (runtime layer cached)"}`);

    // Device identity in-process; the hub's server certificate comes from the same Edge CA as the modules' ones, and
    // the hub's AttestationSource reads the same registry the workload sockets read.
    device = await startHubDevice(docker, DEVICE, { moduleLifetimeSeconds: MODULE_LIFETIME_SECONDS });
    const { edgeCa, root, attestation: source } = device;
    const log = createLogger("edge-hub", { level: process.env.EDGETRUST_LOG_LEVEL ?? "silent" });
    mkdirSync(join(dir, "crl"), { recursive: true });
    const crl = new CrlCache({ source: "", cacheDir: join(dir, "crl"), issuers: [], require: false, log });
    await crl.start();
    store = new HubStore(join(dir, "hub.db"), { maxMessages: 10_000, maxBytes: 16 * 1024 * 1024 });
    hub = new EdgeHub({
      host: "127.0.0.1", port: 0, serverTls: () => device.hubTls,
      clientCa: [root, edgeCa.certificate].map((c) => c.toString("pem")),
      verifier: new ClientVerifier({ trustDomain: device.trustDomain, edgeCas: [edgeCa.certificate], issuingCas: [], crl, attestation: source }),
      attestation: source, policy,
      limits: { maxPayloadBytes: 64 * 1024, maxTopicLevels: 12, allowRootWildcard: false },
      store, routes: parseRoutes({ telemetry: "FROM /messages/modules/* INTO $upstream" }), defaultRoute: { priority: 0, ttlSeconds: 3600 }, log,
    });
    hub.on("connected", (id) => connected.push(id));
    hub.on("disconnected", (id) => disconnected.push(id));
    hub.on("rejected", (r) => rejected.push(r));
    await hub.start();

    signers = await makeSigners();
    trustRoot = (await makeTrustRoot(signers, { threshold: 2, expires: new Date(Date.now() + 365 * 86_400_000).toISOString() })).root;
    registrar = new ManagementSocketRegistrar(device.mgmtSocket, device.socketsDir);
    agent = new EdgeAgent({
      docker, identity: registrar, policy, trustRoot, deviceId: DEVICE, stateDir: join(dir, "agent"),
      log: createLogger("edge-agent", { level: "silent" }), backoff: { baseMs: 0, maxMs: 0 },
    });
  });

  afterAll(async () => {
    await agent?.stop();
    for (const c of [`edgetrust-${SENSOR}`, `edgetrust-${ROGUE}`, HAND, `${HAND}-2`]) await docker.removeContainer(c).catch(() => undefined);
    logs.stop();
    await hub?.stop();
    await device?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("a 2-of-3 signed manifest runs both modules from the Node image: host network, uid 1000, read-only, own socket only", async () => {
    const r = await agent.apply(await sign(manifest(1, [SENSOR, ROGUE])));
    expect(r.verdict.reasons).toEqual([]);
    expect(r.modules.map((m) => [m.name, m.state])).toEqual([[SENSOR, "running"], [ROGUE, "running"]]);
    for (const n of [SENSOR, ROGUE]) {
      const info = await docker.inspectContainer(`edgetrust-${n}`);
      expect(info?.Config.User).toBe("1000:1000");
      expect(info?.HostConfig).toMatchObject({ Privileged: false, ReadonlyRootfs: true, NetworkMode: "host", CapDrop: ["ALL"] });
      expect(info?.HostConfig.Binds).toEqual([`${join(device.socketsDir, n)}:/run/edgetrust/workload:ro`]);
      logs.follow(n, info?.Id ?? "");
    }
  });

  it("each module gets a certificate over its own socket, bound to the image digest and manifest version", async () => {
    for (const n of [SENSOR, ROGUE]) {
      const id = (await containerOf(n)) ?? "";
      await until(`${n}'s trust bundle`, () => logs.of(n, id).some((l) => l.step === "trust-bundle"));
      const cert = await until(`${n}'s certificate`, () => certificateLogged(n, id));
      expect(parseModuleAttestation(cert)).toMatchObject({ imageDigest: image.digest, manifestVersion: 1 });
      const san = cert.getExtension(x509.SubjectAlternativeNameExtension)?.names.toJSON();
      expect(san).toEqual([{ type: "url", value: moduleUri(device.trustDomain, DEVICE, n) }]);
      expect(logs.of(n).map((l) => l.step).slice(0, 5)).toEqual(["start", "key", "csr", "certificate", "trust-bundle"]);
    }
    // The key was made in the container and stays there: nothing the module printed carries one.
    expect([...logs.lines.values()].flat().some((l) => JSON.stringify(l).includes("PRIVATE KEY"))).toBe(false);
  });

  it("both connect to the hub with mTLS as themselves, and their telemetry reaches the upstream outbox", async () => {
    for (const n of [SENSOR, ROGUE]) {
      const id = await until(`${n} connected`, () => connected.find((c) => c.key === key(n)));
      expect(id).toMatchObject({ principal: "module", deviceId: DEVICE, moduleId: n, attestation: { imageDigest: image.digest, manifestVersion: 1 } });
    }
    const sensorTopic = `devices/${DEVICE}/modules/${SENSOR}/messages/events/`;
    const rogueTopic = `devices/${DEVICE}/modules/${ROGUE}/messages/events/`;
    const got = await until("telemetry of both modules in the outbox", () => {
      const o = outbox();
      return o.some((m) => m.topic.startsWith(sensorTopic)) && o.some((m) => m.topic.startsWith(rogueTopic)) && o;
    });
    for (const m of got.filter((x) => x.topic.startsWith(sensorTopic))) expect(m.body.module).toBe(SENSOR);
    for (const m of got.filter((x) => x.topic.startsWith(rogueTopic))) expect(m.body.module).toBe(ROGUE);
  });

  it("attack (a): the rogue module publishing on the sensor's topic from inside its container is refused and cut off", async () => {
    const refusal = await until("the hub refusing the rogue's publish", () =>
      rejected.find((r) => r.stage === "publish" && r.identity === key(ROGUE)));
    expect(refusal.reason).toBe("policy-denied");
    const rogueId = (await containerOf(ROGUE)) ?? "";
    const steps = () => logs.of(ROGUE, rogueId).map((l) => l.step);
    await until("the rogue seeing its connection closed", () => steps().indexOf("disconnected") > steps().indexOf("attack-publish"));
    expect(steps()).toContain("attack-publish");
    // Refused before routing: nothing forged is in the outbox under any topic.
    expect(outbox().filter((m) => m.body.forgedBy !== undefined)).toEqual([]);
    expect(outbox().filter((m) => m.topic.includes(`/modules/${SENSOR}/`)).every((m) => m.body.module === SENSOR)).toBe(true);
    // Only that connection was dropped: the rogue reconnects (it is still attested) and its own telemetry flows again.
    const before = outbox().filter((m) => m.topic.includes(`/modules/${ROGUE}/`)).length;
    await until("the rogue reconnected", () => connected.filter((c) => c.key === key(ROGUE)).length >= 2);
    await until("the rogue's telemetry after reconnecting", () => outbox().filter((m) => m.topic.includes(`/modules/${ROGUE}/`)).length > before);
  });

  it("renewal early in the lifetime (EDGETRUST_RENEW_AT of what is left): a fresh key and certificate, and the hub sees the new serial", async () => {
    const id = (await containerOf(SENSOR)) ?? "";
    const first = certificateLogged(SENSOR, id);
    const renewed = await until("the sensor renewing on lifetime", () => logs.of(SENSOR, id).find((l) => l.step === "renewed" && l.why === "lifetime"), 45_000);
    expect(renewed.serial).not.toBe(first?.serialNumber);
    const certs = logs.of(SENSOR, id).filter((l) => l.step === "certificate");
    expect(certs.length).toBeGreaterThanOrEqual(2);
    const second = new x509.X509Certificate(String(certs.find((c) => c.serial === renewed.serial)?.pem));
    expect(Buffer.from(second.publicKey.rawData).equals(Buffer.from(first?.publicKey.rawData ?? new ArrayBuffer(0)))).toBe(false);
    expect(parseModuleAttestation(second)).toMatchObject({ imageDigest: image.digest, manifestVersion: 1 });
    await until("the hub accepting the renewed certificate", () => connected.find((c) => c.key === key(SENSOR) && c.serial.toLowerCase() === String(renewed.serial).toLowerCase()));
  });

  it("attack (b): a manifest without the rogue removes it — deregistered, socket gone, off the hub", async () => {
    const rogueId = (await containerOf(ROGUE)) ?? "";
    const socket = join(device.socketsDir, ROGUE, "workload.sock");
    expect(existsSync(socket)).toBe(true);
    const offBefore = disconnected.filter((d) => d.key === key(ROGUE)).length;
    const r = await agent.apply(await sign(manifest(2, [SENSOR])));
    expect(r.applied).toBe(true);
    expect(r.modules.map((m) => [m.name, m.state])).toEqual([[SENSOR, "running"]]);
    expect(await docker.inspectContainer(rogueId)).toBeUndefined();
    expect(device.modules.get(ROGUE)).toBeUndefined();
    expect(device.attestation.current(DEVICE, ROGUE)).toBeUndefined();
    expect(existsSync(socket)).toBe(false);
    await until("the rogue off the hub", () => !hub.connectedIdentities().includes(key(ROGUE)) && disconnected.filter((d) => d.key === key(ROGUE)).length > offBefore);
    // The sensor was re-created for version 2 and comes back with a certificate that says so.
    const sensorId = (await containerOf(SENSOR)) ?? "";
    logs.follow(SENSOR, sensorId);
    const cert = await until("the sensor's version-2 certificate", () => certificateLogged(SENSOR, sensorId));
    expect(parseModuleAttestation(cert)).toMatchObject({ imageDigest: image.digest, manifestVersion: 2 });
    await until("the sensor back on the hub as version 2", () => connected.find((c) => c.key === key(SENSOR) && c.attestation?.manifestVersion === 2));
  });

  it("attack (b'): a module deregistered while its container still runs is disconnected by the hub and its valid certificate stops working", async () => {
    const sensorId = (await containerOf(SENSOR)) ?? "";
    const since = rejected.length;
    await registrar.deregister(SENSOR, "e2e: deregistered while running");
    const cut = await until("the hub disconnecting the sensor", () => rejected.slice(since).find((r) => r.identity === key(SENSOR) && r.stage === "session"));
    expect(cut.reason).toBe("deregistered");
    expect(existsSync(join(device.socketsDir, SENSOR, "workload.sock"))).toBe(false);
    // In the container: no new certificate (socket gone), and the still-unexpired old one is refused as not attested.
    await until("the sensor's certificate request failing", () => logs.of(SENSOR, sensorId).some((l) => l.step === "certificate-failed"));
    // A refused handshake has no identity yet: the verifier's detail names the module.
    const again = await until("the hub refusing the old certificate", () => rejected.slice(since).find((r) => r.stage === "connect" && r.detail.includes(`module ${SENSOR} `)));
    expect(again.reason).toBe("not-attested");
    await until("the sensor told it is not authorized", () => logs.of(SENSOR, sensorId).find((l) => l.step === "mqtt-error" && /not authorized/i.test(String(l.message))));
    expect(hub.connectedIdentities()).not.toContain(key(SENSOR));
    await docker.removeContainer(sensorId);
  });

  it("attack (c): containers started by hand from the same image get no certificate and never reach the hub", async () => {
    const since = connected.length;
    const cli = (args: string[]) => new Promise<string>((resolve, reject) => {
      const p = spawn("docker", args, { env: { ...process.env, DOCKER_HOST: `unix://${DOCKER_SOCKET}` }, stdio: ["ignore", "pipe", "pipe"] });
      let out = "";
      let err = "";
      p.stdout.on("data", (c: Buffer) => (out += c.toString()));
      p.stderr.on("data", (c: Buffer) => (err += c.toString()));
      p.on("close", (code) => (code === 0 ? resolve(out.trim()) : reject(new Error(err))));
    });
    const common = ["--network", "host", "--read-only", "--user", "1000:1000", "-e", `EDGETRUST_HUB_PORT=${hub.boundPort}`];
    // 1. No socket mounted at all. 2. The directory of a deregistered module mounted: nothing answers in it.
    const bare = await cli(["run", "-d", "--name", HAND, ...common, image.ref]);
    const stale = await cli(["run", "-d", "--name", `${HAND}-2`, ...common, "-v", `${join(device.socketsDir, SENSOR)}:/run/edgetrust/workload:ro`, image.ref]);
    logs.follow("hand", bare);
    logs.follow("hand-2", stale);
    for (const [n, id] of [["hand", bare], ["hand-2", stale]] as const) {
      await until(`${n} failing to get a certificate three times`, () => logs.of(n, id).filter((l) => l.step === "certificate-failed").length >= 3);
      const steps = logs.of(n, id).map((l) => l.step);
      expect(steps).not.toContain("certificate");
      expect(steps).not.toContain("connected");
      expect(String(logs.of(n, id).find((l) => l.step === "certificate-failed")?.message)).toMatch(/ENOENT/);
    }
    expect(connected.slice(since)).toEqual([]);
  });
});
