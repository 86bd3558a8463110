/**
 * The renewal soak (issue 17): every certificate on one device — device identity, Edge CA, hub server, each module —
 * renewed round after round with short lifetimes while the modules publish QoS 1 through the hub to an upstream
 * broker. What runs is what a device runs: `edgetrust device run` (SoftHSM token, key rotation on), `edgetrust hub run`
 * (server key and device key in that token through the OpenSSL pkcs11 engine, outbox, upstream) and
 * `edgetrust agent run` (cloud client to ca-service over mTLS with the device key), each a child process; ca-service
 * (SQLite, CA keys in SoftHSM) and the cloud MQTT broker (aedes behind a TLS server that requires the device
 * certificate) in this process. The modules are mqtt.js clients here, each anchored by a real container the daemon
 * checks before it issues (a host process may call a workload socket, see device-identity/README.md).
 *
 * A round: renew the device identity (rekey), the Edge CA (rekey) and the hub server certificate through the daemon's
 * management socket (the same code path as its scheduled renewal); the cloud closes the hub's upstream session, which
 * must come back presenting the renewed device certificate (so signed by the rotated key: the old one is erased);
 * the hub reloads its Edge CAs; each module gets a new key and certificate from its workload socket and reconnects.
 * Those closes and reconnects are planned; any other close of a module connection or of the upstream session is
 * counted as unplanned. At the end every acknowledged message must have reached the cloud broker.
 */
import "reflect-metadata";
import { spawn, type ChildProcess } from "node:child_process";
import { webcrypto } from "node:crypto";
import { appendFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { loadavg } from "node:os";
import { join, resolve } from "node:path";
import tls, { type TLSSocket } from "node:tls";
import * as x509 from "@peculiar/x509";
import { Aedes, type Client } from "aedes";
import { Value } from "@sinclair/typebox/value";
import mqtt from "mqtt";
import { stringify } from "yaml";
import { freePort } from "../../common/index.js";
import { HsmConfig, SOFTHSM_MODULE, engineConfig, type KeyStore } from "../../hsm/index.js";
import { DeviceConfig, identityFromConfig, splitPems } from "../../device-identity/index.js";
import { ManagementClient } from "../../identity-api/index.js";
import { DockerClient, ensureImage } from "../../engine/index.js";
import { createModuleContainer } from "../../edge-agent/index.js";
import { TEST_POLICY_YAML } from "../../edge-hub/fixtures.js";
import { makeTokens, silentLogger, startCa, tmp, TRUST_DOMAIN, type RunningCa, type Tokens } from "../../device-identity/test-helpers.js";
import { buildBusyboxImage, DOCKER_SOCKET } from "../fixtures/images.js";
import { cliBundleArgs } from "../fixtures/cli-bundle.js";

const ROOT = resolve(import.meta.dirname, "../..");
x509.cryptoProvider.set(webcrypto as unknown as Crypto);

interface SoakOptions {
  rounds: number;
  modules: number;
  /** Messages per second each module publishes (QoS 1, one in flight). */
  ratePerModule: number;
  /** Lifetime of the device identity and Edge CA certificates (the hub certificate never outlives the Edge CA). */
  lifetimeSeconds: number;
  /** Module certificate lifetime (the daemon's minimum is 300 s). */
  moduleLifetimeSeconds: number;
  /** After the last round: how long to wait for the outbox to drain before counting. */
  drainTimeoutMs: number;
  onProgress?: (line: string) => void;
}

export const DEFAULT_SOAK: SoakOptions = { rounds: 100, modules: 2, ratePerModule: 20, lifetimeSeconds: 600, moduleLifetimeSeconds: 300, drainTimeoutMs: 120_000 };

export interface SoakResult {
  rounds: number;
  modules: number;
  durationSeconds: number;
  loadAverage: { start: number; end: number; max: number };
  renewals: { device: number; edgeCa: number; hub: number; module: number };
  keyRotations: { device: number; edgeCa: number; hub: number };
  messages: { sent: number; delivered: number; duplicates: number; unacknowledged: number; missing: number };
  disconnects: { plannedModule: number; plannedUpstream: number; unplannedModule: number; unplannedUpstream: number };
  upstream: { connections: number; staleCertificate: number };
  agent: { requestsAnswered: number; requestsFailed: number };
  hub: { warnings: number; rejections: number };
  problems: string[];
}

interface Child {
  proc: ChildProcess;
  lines: Record<string, unknown>[];
  text: () => string;
  waitLog(pred: (l: Record<string, unknown>) => boolean, what: string, ms?: number, from?: number): Promise<Record<string, unknown>>;
  stop(): Promise<void>;
}

/** An `edgetrust` command as a child process through the test entry (its source bundle); its pino JSON lines collected. */
function startChild(args: string[], env: Record<string, string>): Child {
  const proc = spawn(process.execPath, [...cliBundleArgs(), ...args], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  const lines: Record<string, unknown>[] = [];
  let all = "";
  let partial = "";
  const waiters = new Set<() => void>();
  const logFile = process.env.SOAK_LOG_DIR ? join(process.env.SOAK_LOG_DIR, `${args[0]}.log`) : undefined;
  const feed = (d: Buffer): void => {
    if (logFile) appendFileSync(logFile, d);
    all += d.toString();
    if (all.length > 2_000_000) all = all.slice(-1_000_000);
    partial += d.toString();
    const parts = partial.split("\n");
    partial = parts.pop() ?? "";
    for (const p of parts) {
      try {
        lines.push(JSON.parse(p) as Record<string, unknown>);
      } catch {
        lines.push({ msg: p, raw: true });
      }
    }
    for (const w of waiters) w();
  };
  proc.stdout?.on("data", feed);
  proc.stderr?.on("data", feed);
  const exited = new Promise<void>((r) => proc.once("exit", () => { for (const w of waiters) w(); r(); }));
  return {
    proc, lines, text: () => all,
    waitLog: (pred, what, ms = 60_000, from = 0) => new Promise((res, rej) => {
      const check = (): void => {
        const hit = lines.slice(from).find(pred);
        if (hit) { waiters.delete(check); clearTimeout(t); res(hit); return; }
        if (proc.exitCode !== null || proc.signalCode !== null) { waiters.delete(check); clearTimeout(t); rej(new Error(`${args.join(" ")} exited waiting for ${what}:\n${all.slice(-3000)}`)); }
      };
      const t = setTimeout(() => { waiters.delete(check); rej(new Error(`timed out waiting for ${what}:\n${all.slice(-3000)}`)); }, ms);
      waiters.add(check);
      check();
    }),
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill("SIGTERM");
        const t = setTimeout(() => proc.kill("SIGKILL"), 15_000);
        await exited;
        clearTimeout(t);
      }
    },
  };
}

function firstCert(file: string): x509.X509Certificate {
  return new x509.X509Certificate(splitPems(readFileSync(file, "utf8"))[0] ?? "");
}

/** JSON over a module's workload socket (what a module does; this process is on the host, which the daemon lets through). */
function workload<T>(socket: string, method: string, path: string, body?: unknown): Promise<T> {
  return new Promise((res, rej) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = request({ socketPath: socket, method, path, headers: data ? { "content-type": "application/json", "content-length": Buffer.byteLength(data) } : {} }, (r) => {
      let text = "";
      r.on("data", (c: Buffer) => (text += c.toString()));
      r.on("end", () => (r.statusCode && r.statusCode < 300 ? res(JSON.parse(text) as T) : rej(new Error(`${method} ${path}: ${r.statusCode} ${text}`))));
    });
    req.on("error", rej);
    req.setTimeout(30_000, () => req.destroy(new Error(`${method} ${path}: no answer within 30 s`)));
    req.end(data);
  });
}

const pem = (label: string, der: ArrayBuffer): string => `-----BEGIN ${label}-----\n${Buffer.from(der).toString("base64").replace(/(.{64})/g, "$1\n").replace(/\n$/, "")}\n-----END ${label}-----\n`;

/**
 * One module: its own key (made here, never sent), a certificate from its workload socket, one mqtt.js connection
 * to the hub over which it publishes QoS 1 with one message in flight.
 */
class SoakModule {
  client: mqtt.MqttClient | undefined;
  seq = 0;
  acked = 0;
  unacknowledged = 0;
  planned = 0;
  unplanned = 0;
  renewals = 0;
  private reconnecting = false;
  private running = false;
  private loop: Promise<void> | undefined;
  private stopping: Promise<void> | undefined;
  private serial = "";

  constructor(readonly name: string, private readonly deviceId: string, private readonly socket: string, private readonly hubPort: () => number, private readonly intervalMs: number, private readonly problem: (p: string) => void) {}

  get certificateSerial(): string { return this.serial; }

  private async credential(): Promise<{ cert: string; key: string; ca: string }> {
    const keys = await webcrypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"]);
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=${this.name}`, keys, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } });
    const issued = await workload<{ certificate: string; chain: string[] }>(this.socket, "POST", "/v1/certificate", { csr: csr.toString("pem") });
    const bundle = await workload<{ certificates: string[] }>(this.socket, "GET", "/v1/trust-bundle");
    this.serial = new x509.X509Certificate(issued.certificate).serialNumber;
    return { cert: [issued.certificate, ...issued.chain].join("\n"), key: pem("PRIVATE KEY", await webcrypto.subtle.exportKey("pkcs8", keys.privateKey)), ca: bundle.certificates.join("\n") };
  }

  private async connect(): Promise<void> {
    const cred = await this.credential();
    const c = mqtt.connect(`mqtts://127.0.0.1:${this.hubPort()}`, {
      ...cred, servername: "localhost", reconnectPeriod: 0, protocolVersion: 4, clientId: this.name, connectTimeout: 20_000,
    });
    // connectAsync never settles when the socket closes before CONNACK (reconnectPeriod 0): close counts as a refusal.
    await new Promise<void>((res, rej) => {
      const fail = (e?: Error) => { c.removeAllListeners(); c.end(true); rej(new Error(`module ${this.name}: connection to the hub refused: ${e?.message ?? "closed before CONNACK"}`)); };
      c.once("connect", () => { c.removeAllListeners(); res(); });
      c.once("error", fail);
      c.once("close", () => fail());
    });
    c.on("close", () => {
      if (this.client !== c) return;
      if (this.reconnecting) return;
      this.unplanned++;
      this.problem(`module ${this.name}: connection closed outside a renewal`);
    });
    c.on("error", () => undefined);
    this.client = c;
  }

  private async publishLoop(): Promise<void> {
    const topic = `devices/${this.deviceId}/modules/${this.name}/messages/events/`;
    while (this.running) {
      const c = this.client;
      if (!c?.connected) {
        // Only after an unplanned close: reconnect with a fresh certificate.
        try { await this.connect(); } catch (e) { this.problem(`module ${this.name}: reconnect failed: ${(e as Error).message}`); await sleep(1000); }
        continue;
      }
      const seq = this.seq++;
      try {
        await c.publishAsync(topic, JSON.stringify({ m: this.name, seq }), { qos: 1 });
        this.acked++;
      } catch {
        this.unacknowledged++;
      }
      await sleep(this.intervalMs);
    }
  }

  async start(): Promise<void> {
    await this.connect();
    this.running = true;
    this.loop = this.publishLoop();
  }

  /** Planned: new key and certificate, then switch connections between two publishes (nothing in flight). */
  async renew(): Promise<void> {
    this.running = false;
    await this.loop;
    this.reconnecting = true;
    try {
      const old = this.client;
      await old?.endAsync();
      this.planned++;
      await this.connect();
      this.renewals++;
    } finally {
      this.reconnecting = false;
    }
    this.running = true;
    this.loop = this.publishLoop();
  }

  /** Once: the drain stops the modules and the clean-up again; a second endAsync on an ended client never settles. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.running = false;
      await this.loop;
      this.reconnecting = true;
      await this.client?.endAsync().catch(() => undefined);
    })();
    return this.stopping;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The cloud: aedes behind TLS that requires a client certificate from the cloud CA; records who connects and what arrives. */
class CloudBroker {
  readonly broker: Aedes;
  readonly server: tls.Server;
  readonly delivered = new Map<string, number>();
  /** Serial of the certificate each upstream connection presented, in order. */
  readonly connections: string[] = [];
  plannedDrops = 0;
  unplanned = 0;
  private dropping = new Set<Client>();
  constructor(aedes: Aedes, creds: { cert: string; key: string; ca: string }, private readonly problem: (p: string) => void) {
    this.broker = aedes;
    // Unauthorized clients are refused here rather than by OpenSSL so the refusal keeps its reason.
    this.server = tls.createServer({ ...creds, requestCert: true, rejectUnauthorized: false, minVersion: "TLSv1.2" }, (s) => {
      if (!s.authorized) {
        this.problem(`cloud broker: client certificate refused: ${String(s.authorizationError)}`);
        s.destroy();
        return;
      }
      aedes.handle(s);
    });
    this.server.on("tlsClientError", (e) => this.problem(`cloud broker: TLS handshake refused: ${e.message}`));
    aedes.on("client", (client) => {
      const cert = (client.conn as unknown as TLSSocket).getPeerCertificate?.();
      this.connections.push(cert?.serialNumber ?? "none");
    });
    aedes.on("clientDisconnect", (client) => {
      if (this.dropping.delete(client)) return;
      this.unplanned++;
      this.problem(`upstream session of ${client.id} closed outside a renewal`);
    });
    aedes.on("publish", (packet, client) => {
      if (!client) return;
      try {
        const { m, seq } = JSON.parse(packet.payload.toString()) as { m: string; seq: number };
        const k = `${m}/${seq}`;
        this.delivered.set(k, (this.delivered.get(k) ?? 0) + 1);
      } catch {
        this.problem(`upstream: a message that is not the soak's on ${packet.topic}`);
      }
    });
  }

  static async start(creds: { cert: string; key: string; ca: string }, problem: (p: string) => void): Promise<CloudBroker & { port: number }> {
    const aedes = await Aedes.createBroker({ id: `soak-cloud-${process.pid}` });
    const b = new CloudBroker(aedes, creds, problem);
    const port = await freePort();
    await new Promise<void>((r) => b.server.listen(port, "127.0.0.1", () => r()));
    return Object.assign(b, { port });
  }

  /** What the cloud does when a device renewed: ends the session of the superseded certificate. */
  dropSession(clientId: string): boolean {
    const c = (this.broker as unknown as { clients: Record<string, Client> }).clients[clientId];
    if (!c) return false;
    this.dropping.add(c);
    this.plannedDrops++;
    c.close();
    return true;
  }

  async close(): Promise<void> {
    for (const c of Object.values((this.broker as unknown as { clients: Record<string, Client> }).clients)) this.dropping.add(c);
    await new Promise<void>((r) => this.broker.close(() => r()));
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

/** The hub will verify the cloud broker against ca-bundle.pem as `localhost`: say why not, if not. */
function probeServer(port: number, ca: string): Promise<void> {
  return new Promise((res, rej) => {
    const s = tls.connect({ host: "127.0.0.1", port, ca, servername: "localhost", checkServerIdentity: tls.checkServerIdentity }, () => { s.destroy(); res(); });
    s.on("error", (e) => rej(new Error(`the cloud broker's certificate does not verify: ${e.message}`)));
  });
}

async function waitFor(cond: () => boolean, what: string, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await sleep(50);
  }
}

export async function runRenewalSoak(opts: SoakOptions): Promise<SoakResult> {
  const progress = opts.onProgress ?? (() => undefined);
  const problems: string[] = [];
  // Once the run is counted, the shutdown's own closes are not findings.
  let counting = true;
  const problem = (p: string): void => { if (counting && problems.length < 200) problems.push(p); };
  const started = Date.now();
  const loads: number[] = [loadavg()[0] ?? 0];
  const deviceId = `soak-${process.pid}-${Date.now().toString(36)}`;
  const docker = new DockerClient({ socketPath: DOCKER_SOCKET });
  const cleanups: (() => Promise<unknown> | unknown)[] = [];
  const later = (f: () => Promise<unknown> | unknown): void => void cleanups.unshift(f);
  try {
    progress("set-up: SoftHSM tokens, ca-service, device provisioning");
    const tokens: Tokens = await makeTokens();
    later(() => tokens.hsm.cleanup());
    later(() => tokens.caKeys.close());
    const ca: RunningCa = await startCa(tokens, {
      deviceId,
      profiles: { "device-identity": { lifetimeSeconds: opts.lifetimeSeconds }, "edge-ca": { lifetimeSeconds: opts.lifetimeSeconds } },
    });
    later(() => ca.close());
    const keys: KeyStore = await tokens.openDevice();
    const dir = tmp("et-soak-");
    later(() => rmSync(dir, { recursive: true, force: true }));
    const sd = join(dir, "identity");
    const hsm: HsmConfig = { ...(Value.Default(HsmConfig, {}) as HsmConfig), module: SOFTHSM_MODULE, tokenLabel: "device", engine: "pkcs11" };
    const device: DeviceConfig = {
      ...(Value.Default(DeviceConfig, {}) as DeviceConfig),
      deviceId, trustDomain: TRUST_DOMAIN, stateDir: sd, caUrl: ca.url,
      managementSocket: join(dir, "mgmt.sock"), workloadDir: join(dir, "modules"), hubServerCertFile: join(dir, "hub", "server.chain.pem"),
      dockerSocket: DOCKER_SOCKET, rotateKeys: true, moduleLifetimeSeconds: opts.moduleLifetimeSeconds,
    };
    writeFileSync(join(dir, "ca-trust.pem"), ca.trustPem);
    await identityFromConfig({ ...device, caTrustFile: join(dir, "ca-trust.pem") }, hsm, { keys, log: silentLogger() }).provision(ca.adminToken);
    await keys.close();

    // The cloud broker's server certificate from the cloud CA (the hub trusts ca-bundle.pem upstream).
    const cloudKeys = await webcrypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"]);
    const cloudCsr = await x509.Pkcs10CertificateRequestGenerator.create({ name: "CN=localhost", keys: cloudKeys, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } });
    const cloudCert = await ca.ca.issue({ csrPem: cloudCsr.toString("pem"), profile: "edge-hub-server", deviceId }, "soak");
    const cloud = await CloudBroker.start({
      cert: cloudCert.chainPem, key: pem("PRIVATE KEY", await webcrypto.subtle.exportKey("pkcs8", cloudKeys.privateKey)), ca: readFileSync(join(sd, "ca-bundle.pem"), "utf8"),
    }, problem);
    later(() => cloud.close());
    // The probe presents no client certificate: its refusal is expected, not a finding.
    counting = false;
    await probeServer(cloud.port, readFileSync(join(sd, "ca-bundle.pem"), "utf8"));
    await sleep(200);
    counting = true;

    const env = { OPENSSL_CONF: tokens.opensslConf, SOFTHSM2_CONF: tokens.hsm.conf, PKCS11_MODULE_PATH: "", EDGETRUST_LOG_LEVEL: "info" };
    const opensslConf = tokens.opensslConf;
    writeFileSync(opensslConf, engineConfig({ module: SOFTHSM_MODULE }));
    const hsmSection = { ...hsm, pinFile: tokens.pinFile };
    const configFile = join(dir, "edgetrust.yaml");
    mkdirSync(join(dir, "hub-state"), { recursive: true });
    mkdirSync(join(dir, "agent"), { recursive: true });
    writeFileSync(join(dir, "policy.yaml"), TEST_POLICY_YAML);
    writeFileSync(join(dir, "routes.json"), JSON.stringify({ routes: { up: "FROM /messages/modules/* INTO $upstream" } }));
    writeFileSync(configFile, stringify({
      log: { level: "info" }, hsm: hsmSection, device,
      hub: {
        // metricsPort: a free port, not the default 9601 — two runs on one machine (or a hub already there) collided.
        host: "127.0.0.1", port: 0, trustDomain: TRUST_DOMAIN, metricsPort: await freePort(),
        serverCertFile: join(sd, "hub-server.chain.pem"), serverKey: `hsm:${device.hubKeyLabel}`,
        edgeCaFile: join(sd, "edge-ca.cert.pem"), issuingCaFile: join(sd, "issuing-ca.cert.pem"), trustBundleFile: join(sd, "trust-bundle.pem"),
        policyFile: join(dir, "policy.yaml"), routesFile: join(dir, "routes.json"), managementSocket: device.managementSocket, stateDir: join(dir, "hub-state"),
        upstreamUrl: `mqtts://localhost:${cloud.port}`, upstreamCertFile: join(sd, "device.chain.pem"), upstreamKey: "hsm:device-identity", upstreamCaFile: join(sd, "ca-bundle.pem"),
      },
      agent: {
        deviceId, policyFile: join(dir, "policy.yaml"), stateDir: join(dir, "agent"), dockerSocket: DOCKER_SOCKET, managementSocket: device.managementSocket,
        workloadSocketsDir: device.workloadDir, cloudUrl: ca.url, cloudCaFile: join(sd, "ca-bundle.pem"), deviceCertFile: join(sd, "device.chain.pem"),
        deviceKey: "hsm:device-identity", pollIntervalMs: 1000, reportQueueFile: join(dir, "agent", "reports.jsonl"),
      },
    }));

    progress("set-up: device run, module containers, hub run, agent run");
    const daemon = startChild(["device", "run", "-c", configFile], env);
    later(() => daemon.stop());
    await daemon.waitLog((l) => l.msg === "device identity daemon running", "daemon start");
    const mgmt = new ManagementClient(device.managementSocket);

    const image = await ensureImage(docker, buildBusyboxImage("soak", `soak-${process.pid}-${Date.now()}`));
    // Containers are named edgetrust-<module> on the one engine: a run's own suffix keeps two soaks (a `make soak` beside
    // the shortened one in `make test`) from replacing each other's containers.
    const run = process.pid.toString(36);
    const names = Array.from({ length: opts.modules }, (_, i) => `sensor-${run}-${String.fromCharCode(97 + i)}`);
    for (const name of names) {
      const containerId = await createModuleContainer(docker, {
        deviceId, deploymentId: "soak", manifestVersion: 1, image, user: "1000:1000", capAdd: [], binds: [], devices: [], network: "none", readOnlyRootfs: true, env: {},
        module: name, cmd: ["sleep", "86400"],
      });
      later(() => docker.removeContainer(containerId).catch(() => undefined));
      await docker.startContainer(containerId);
      await mgmt.register({ name, containerId, imageRepository: image.repository, imageDigest: image.digest, manifestVersion: 1, deploymentId: "soak", uid: 1000, gid: 1000 });
    }

    const hub = startChild(["hub", "run", "-c", configFile], env);
    later(() => hub.stop());
    const listening = await hub.waitLog((l) => typeof l.msg === "string" && /edge hub listening on 127\.0\.0\.1:\d+/.test(l.msg), "hub listening");
    const hubPort = Number(/:(\d+)$/.exec(String(listening.msg))?.[1]);
    progress("set-up: waiting for the hub's upstream session");
    await waitFor(() => cloud.connections.length > 0, "hub upstream connected", 60_000).catch((e: unknown) => { throw new Error(`${(e as Error).message}\n${problems.slice(0, 5).join("\n")}\n${hub.text().slice(-4000)}`); });

    const agent = startChild(["agent", "run", "-c", configFile], env);
    later(() => agent.stop());

    const modules = names.map((n) => new SoakModule(n, deviceId, join(device.workloadDir, n, "workload.sock"), () => hubPort, Math.max(1, Math.round(1000 / opts.ratePerModule)), problem));
    progress("set-up: modules get certificates and connect");
    for (const m of modules) await m.start();
    progress("set-up done: renewal rounds");
    later(() => Promise.all(modules.map((m) => m.stop())));

    const deployRequests = async (): Promise<{ ok: number; failed: number }> => {
      const v = await ca.server.metrics.httpRequests.get();
      let ok = 0;
      let failed = 0;
      for (const s of v.values) {
        if (s.labels.route !== "/v1/device/deployment") continue;
        if (Number(s.labels.status) < 500 && s.labels.status !== "401" && s.labels.status !== "403") ok += s.value; else failed += s.value;
      }
      return { ok, failed };
    };
    const agentFailures = (): number => agent.lines.filter((l) => l.msg === "cloud unreachable; running what the device has").length;

    const renewals = { device: 0, edgeCa: 0, hub: 0, module: 0 };
    const rotations = { device: 0, edgeCa: 0, hub: 0 };
    let staleUpstream = 0;
    let agentOkAfterRekey = 0;
    const label = (kind: "device" | "edgeCa" | "hub"): string => (JSON.parse(readFileSync(join(sd, "current", "state.json"), "utf8")) as { keys: Record<string, string> }).keys[kind] ?? "";
    for (let round = 1; round <= opts.rounds; round++) {
      const t0 = Date.now();
      const before = { device: firstCert(join(sd, "device.cert.pem")).serialNumber, edgeCa: firstCert(join(sd, "edge-ca.cert.pem")).serialNumber, hub: firstCert(join(sd, "hub-server.chain.pem")).serialNumber };
      const labelsBefore = label("device");
      // The hub server key rotates with the Edge CA renewal (its certificate is reissued then), not with the hub's own
      // renewal below (rekey false); the hub signs with the replaced key until the SIGHUP below, which is kept till then.
      const hubLabelBefore = label("hub");
      await mgmt.renew("device", true);
      const deviceSerial = firstCert(join(sd, "device.cert.pem")).serialNumber;
      if (deviceSerial !== before.device) renewals.device++; else problem(`round ${round}: device certificate not renewed`);
      if (label("device") !== labelsBefore) rotations.device++;
      const labelsMid = label("edgeCa");
      await mgmt.renew("edge-ca", true);
      const edgeSerial = firstCert(join(sd, "edge-ca.cert.pem")).serialNumber;
      if (edgeSerial !== before.edgeCa) renewals.edgeCa++; else problem(`round ${round}: Edge CA not renewed`);
      if (label("edgeCa") !== labelsMid) rotations.edgeCa++;
      const hubBefore = firstCert(join(sd, "hub-server.chain.pem")).serialNumber;
      await mgmt.renew("hub", false);
      const hubSerial = firstCert(join(sd, "hub-server.chain.pem")).serialNumber;
      if (hubSerial !== hubBefore && hubSerial !== before.hub) renewals.hub++; else problem(`round ${round}: hub server certificate not renewed`);
      if (label("hub") !== hubLabelBefore) rotations.hub++;

      // The cloud ends the session of the superseded device certificate; the hub must come back with the new one.
      const seen = cloud.connections.length;
      if (!cloud.dropSession(deviceId)) problem(`round ${round}: no upstream session to end`);
      await waitFor(() => cloud.connections.length > seen, `round ${round}: upstream reconnect`, 60_000);
      const presented = cloud.connections.at(-1) ?? "";
      if (presented.toUpperCase() !== deviceSerial.toUpperCase()) { staleUpstream++; problem(`round ${round}: upstream presented ${presented}, device certificate is ${deviceSerial}`); }

      // The hub takes up the new Edge CA (SIGHUP = what its 5 s file poll does, without the wait).
      const mark = hub.lines.length;
      hub.proc.kill("SIGHUP");
      await hub.waitLog((l) => l.msg === "Edge CA certificates reloaded", `round ${round}: hub reloads its Edge CAs`, 30_000, mark);

      // The agent's next cloud request after the rekey must be answered (the old key is gone from the token).
      const agentBefore = await deployRequests();
      const agentDeadline = Date.now() + 15_000;
      while ((await deployRequests()).ok <= agentBefore.ok && Date.now() < agentDeadline) await sleep(100);
      if ((await deployRequests()).ok > agentBefore.ok) agentOkAfterRekey++; else problem(`round ${round}: no agent request answered after the rekey`);

      for (const m of modules) {
        await m.renew();
        renewals.module++;
      }
      loads.push(loadavg()[0] ?? 0);
      const sent = modules.reduce((a, m) => a + m.acked, 0);
      progress(`round ${round}/${opts.rounds}: renewed device ${deviceSerial.slice(0, 8)}… Edge CA ${edgeSerial.slice(0, 8)}… hub ${hubSerial.slice(0, 8)}… ${modules.length} modules; sent ${sent} delivered ${cloud.delivered.size}; ${((Date.now() - t0) / 1000).toFixed(1)} s; load ${loads.at(-1)?.toFixed(2)}`);
    }

    progress("draining: stop publishing, wait until every acknowledged message reached the cloud");
    for (const m of modules) await m.stop();
    progress("draining: modules stopped");
    const expected = new Set<string>();
    for (const m of modules) for (let s = 0; s < m.seq; s++) expected.add(`${m.name}/${s}`);
    const ackedTotal = modules.reduce((a, m) => a + m.acked, 0);
    const deliveredOf = (): number => [...cloud.delivered.keys()].filter((k) => expected.has(k)).length;
    await waitFor(() => deliveredOf() >= ackedTotal, "outbox drained", opts.drainTimeoutMs).catch((e: unknown) => problem((e as Error).message));
    const delivered = deliveredOf();
    const duplicates = [...cloud.delivered.values()].reduce((a, n) => a + (n - 1), 0);
    const agentReq = await deployRequests();
    const hubWarnings = hub.lines.filter((l) => typeof l.level === "number" && l.level >= 40 && l.msg !== "upstream disconnected").length;
    const rejections = hub.lines.filter((l) => typeof l.msg === "string" && /refused|rejected/i.test(l.msg)).length;
    loads.push(loadavg()[0] ?? 0);
    counting = false;
    return {
      rounds: opts.rounds, modules: opts.modules, durationSeconds: Math.round((Date.now() - started) / 100) / 10,
      loadAverage: { start: loads[0] ?? 0, end: loads.at(-1) ?? 0, max: Math.max(...loads) },
      renewals, keyRotations: rotations,
      messages: { sent: ackedTotal, delivered, duplicates, unacknowledged: modules.reduce((a, m) => a + m.unacknowledged, 0), missing: Math.max(0, ackedTotal - delivered) },
      disconnects: {
        plannedModule: modules.reduce((a, m) => a + m.planned, 0), plannedUpstream: cloud.plannedDrops,
        unplannedModule: modules.reduce((a, m) => a + m.unplanned, 0), unplannedUpstream: cloud.unplanned,
      },
      upstream: { connections: cloud.connections.length, staleCertificate: staleUpstream },
      agent: { requestsAnswered: agentReq.ok, requestsFailed: agentReq.failed + agentFailures() },
      hub: { warnings: hubWarnings, rejections },
      problems: agentOkAfterRekey === opts.rounds ? [...problems] : [...problems, `agent answered after ${agentOkAfterRekey} of ${opts.rounds} rekeys`],
    };
  } finally {
    counting = false;
    progress("cleaning up");
    for (const c of cleanups) {
      // Best effort, bounded: one stuck step must not keep the rest (containers, children) from being cleaned up.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.resolve().then(c),
        new Promise<void>((r) => { timer = setTimeout(() => { progress(`clean-up step took over 20 s, going on: ${c.toString().slice(0, 80)}`); r(); }, 20_000); }),
      ]).catch(() => undefined).finally(() => clearTimeout(timer));
    }
  }
}

/** The result as the table `make soak` prints. */
export function soakTable(r: SoakResult): string {
  const rows: [string, string][] = [
    ["rounds", String(r.rounds)],
    ["modules", String(r.modules)],
    ["duration", `${r.durationSeconds} s`],
    ["load average (1 min) start / end / max", `${r.loadAverage.start.toFixed(2)} / ${r.loadAverage.end.toFixed(2)} / ${r.loadAverage.max.toFixed(2)}`],
    ["renewals device / Edge CA / hub / module", `${r.renewals.device} / ${r.renewals.edgeCa} / ${r.renewals.hub} / ${r.renewals.module}`],
    ["key rotations device / Edge CA / hub server", `${r.keyRotations.device} / ${r.keyRotations.edgeCa} / ${r.keyRotations.hub}`],
    ["messages sent (PUBACKed by the hub)", String(r.messages.sent)],
    ["messages delivered upstream (distinct)", String(r.messages.delivered)],
    ["missing / duplicates / unacknowledged", `${r.messages.missing} / ${r.messages.duplicates} / ${r.messages.unacknowledged}`],
    ["planned reconnects modules / upstream", `${r.disconnects.plannedModule} / ${r.disconnects.plannedUpstream}`],
    ["unplanned disconnects modules / upstream", `${r.disconnects.unplannedModule} / ${r.disconnects.unplannedUpstream}`],
    ["upstream connections / with a stale certificate", `${r.upstream.connections} / ${r.upstream.staleCertificate}`],
    ["agent cloud requests answered / failed", `${r.agent.requestsAnswered} / ${r.agent.requestsFailed}`],
    ["hub warnings / rejections logged", `${r.hub.warnings} / ${r.hub.rejections}`],
  ];
  const w = Math.max(...rows.map(([k]) => k.length));
  return [...rows.map(([k, v]) => `${k.padEnd(w)}  ${v}`), ...(r.problems.length ? ["problems:", ...r.problems.map((p) => `  ${p}`)] : ["problems: none"])].join("\n");
}
