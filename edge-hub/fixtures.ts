/**
 * Test fixtures for the hub (used by the tests and the benchmark, not by the hub): a development PKI from certs-dev,
 * plus the certificates the attack tests need (another device's Edge CA, modules with chosen image digests, a revoked
 * leaf, odd SANs) issued with pki/ from the certs-dev CA keys, a CRL, a policy and a ready-to-start hub.
 */
import "reflect-metadata";
import { spawn, type ChildProcess } from "node:child_process";
import { webcrypto } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import * as x509 from "@peculiar/x509";
import mqtt, { type MqttClient } from "mqtt";
import { createLogger } from "../common/index.js";
import { createDevPki } from "../certs-dev/index.js";
import { issueCertificate, type Issuer } from "../pki/index.js";
import { parsePolicy, type Policy } from "../policy/index.js";
import { MemoryAttestationSource } from "./attestation.js";
import { CrlCache } from "./crl.js";
import { EdgeHub, type HubOptions } from "./hub.js";
import { HubStore } from "./store.js";
import { ClientVerifier } from "./verify.js";

const subtle = webcrypto.subtle as SubtleCrypto;
const crypto = webcrypto as unknown as Crypto;

const TRUST_DOMAIN = "example.com";
export const DEVICE = "d1";
export const digest = (c: string): string => `sha256:${c.repeat(64).slice(0, 64)}`;

export interface Credential {
  cert: x509.X509Certificate;
  /** Certificate followed by its intermediates (what a client presents). */
  chainPem: string;
  keyPem: string;
}

function pemBody(pem: string): Uint8Array<ArrayBuffer> {
  const b64 = pem.replace(/^#.*$/gm, "").replace(/-----[^-]+-----/g, "").replace(/\s+/g, "");
  return new Uint8Array(Buffer.from(b64, "base64")) as Uint8Array<ArrayBuffer>;
}

async function importKey(file: string, curve: "P-256" | "P-384"): Promise<CryptoKey> {
  return subtle.importKey("pkcs8", pemBody(readFileSync(file, "utf8")), { name: "ECDSA", namedCurve: curve }, false, ["sign"]);
}

async function newKey(): Promise<{ pair: CryptoKeyPair; pem: string }> {
  const pair = (await subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"])) as CryptoKeyPair;
  const der = Buffer.from(await subtle.exportKey("pkcs8", pair.privateKey));
  const pem = `-----BEGIN PRIVATE KEY-----\n${der.toString("base64").replace(/(.{64})/g, "$1\n").trimEnd()}\n-----END PRIVATE KEY-----\n`;
  return { pair, pem };
}

export class TestPki {
  private constructor(
    readonly dir: string,
    readonly root: x509.X509Certificate,
    readonly issuing: Issuer & { certificate: x509.X509Certificate },
    readonly edgeCa: Issuer & { certificate: x509.X509Certificate },
  ) {}

  static async create(): Promise<TestPki> {
    const dir = mkdtempSync(join(tmpdir(), "edgehub-pki-"));
    const out = join(dir, "pki");
    await createDevPki({ out, trustDomain: TRUST_DOMAIN, deviceId: DEVICE, modules: ["sensor"], leafDeviceId: "leaf1", logger: createLogger("certs-dev", { level: "error" }) });
    const cert = (n: string) => new x509.X509Certificate(readFileSync(join(out, `${n}.cert.pem`), "utf8").replace(/^#.*\n/gm, ""));
    const root = cert("root-ca");
    const issuing = { certificate: cert("issuing-ca"), signingKey: await importKey(join(out, "issuing-ca.key.pem"), "P-256"), crypto };
    const edgeCa = { certificate: cert("edge-ca"), signingKey: await importKey(join(out, "edge-ca.key.pem"), "P-256"), crypto };
    return new TestPki(dir, root, issuing, edgeCa);
  }

  get out(): string {
    return join(this.dir, "pki");
  }

  /** The hub's server chain + key from certs-dev. */
  hubServer(): { cert: string; key: string } {
    return { cert: readFileSync(join(this.out, "edge-hub-server.chain.pem"), "utf8"), key: readFileSync(join(this.out, "edge-hub-server.key.pem"), "utf8") };
  }

  /** Root, issuing CA and Edge CA: what the hub's TLS handshake accepts a client chain to end in. */
  clientCa(): string[] {
    return [this.root, this.issuing.certificate, this.edgeCa.certificate].map((c) => c.toString("pem"));
  }

  rootPem(): string {
    return this.root.toString("pem");
  }

  private cred(cert: x509.X509Certificate, chain: x509.X509Certificate[], keyPem: string): Credential {
    return { cert, chainPem: [cert, ...chain].map((c) => c.toString("pem")).join("\n"), keyPem };
  }

  /** A module certificate; `validity` makes one outside its validity period (e.g. expired an hour ago). */
  async module(name: string, att: { imageDigest: string; manifestVersion: number }, edgeCa: Issuer & { certificate: x509.X509Certificate } = this.edgeCa, deviceId = DEVICE, validity?: { notBefore: Date; lifetimeSeconds: number }): Promise<Credential> {
    const k = await newKey();
    const cert = await issueCertificate({
      profile: "module", subject: { commonName: name }, identity: { trustDomain: TRUST_DOMAIN, deviceId, moduleId: name },
      attestation: att, publicKey: k.pair.publicKey, issuer: edgeCa, ...(validity ?? {}),
    });
    return this.cred(cert, [edgeCa.certificate, this.issuing.certificate], k.pem);
  }

  async leaf(deviceId: string, validity?: { notBefore: Date; lifetimeSeconds: number }): Promise<Credential> {
    const k = await newKey();
    const cert = await issueCertificate({
      profile: "leaf-device", subject: { commonName: deviceId }, identity: { trustDomain: TRUST_DOMAIN, deviceId }, publicKey: k.pair.publicKey, issuer: this.issuing,
      ...(validity ?? {}),
    });
    return this.cred(cert, [this.issuing.certificate], k.pem);
  }

  /** Another device's Edge CA (same issuing CA, so the TLS handshake itself accepts its modules). */
  async otherEdgeCa(deviceId: string): Promise<Issuer & { certificate: x509.X509Certificate }> {
    const k = await newKey();
    const cert = await issueCertificate({
      profile: "edge-ca", subject: { commonName: `${deviceId} Edge CA` }, identity: { trustDomain: TRUST_DOMAIN, deviceId, dnsNames: ["edgehub", "localhost"] },
      publicKey: k.pair.publicKey, issuer: this.issuing,
    });
    return { certificate: cert, signingKey: k.pair.privateKey, crypto };
  }

  /** A client certificate from the issuing CA with arbitrary SANs (pki/ refuses to make these; an attacker's CA bug might). */
  async oddLeaf(sans: x509.JsonGeneralName[], issuer: Issuer & { certificate: x509.X509Certificate } = this.issuing): Promise<Credential> {
    const k = await newKey();
    const exts: x509.Extension[] = [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension(["1.3.6.1.5.5.7.3.2"]),
      await x509.SubjectKeyIdentifierExtension.create(k.pair.publicKey, false, crypto),
      new x509.AuthorityKeyIdentifierExtension(issuer.certificate.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId ?? "", false),
    ];
    if (sans.length > 0) exts.push(new x509.SubjectAlternativeNameExtension(sans, false));
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: "7f" + Buffer.from(webcrypto.getRandomValues(new Uint8Array(15))).toString("hex"),
      subject: "CN=odd", issuer: issuer.certificate.subject, notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 3_600_000),
      publicKey: k.pair.publicKey, signingKey: issuer.signingKey, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" }, extensions: exts,
    }, crypto);
    return this.cred(cert, issuer === this.issuing ? [this.issuing.certificate] : [issuer.certificate, this.issuing.certificate], k.pem);
  }

  /** A CRL of the issuing CA listing `revoked`. */
  async crl(revoked: x509.X509Certificate[], thisUpdate = new Date()): Promise<Buffer> {
    const crl = await x509.X509CrlGenerator.create({
      issuer: this.issuing.certificate.subject, thisUpdate, nextUpdate: new Date(thisUpdate.getTime() + 86_400_000),
      entries: revoked.map((c) => ({ serialNumber: c.serialNumber, revocationDate: new Date() })),
      signingKey: this.issuing.signingKey, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
    }, crypto);
    return Buffer.from(crl.rawData);
  }

  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export const TEST_POLICY_YAML = `
version: 1
mode: enforce
trust:
  keys:
    - { kid: k1, alg: ES256, kty: EC, crv: P-256, x: "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", y: "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0" }
  threshold: 1
images:
  registries: ["127.0.0.1:5000"]
modules:
  allow: ["*"]
hub:
  publish:
    - id: module-telemetry
      principals: [module]
      topics: ["devices/{device}/modules/{module}/messages/events/#"]
    - id: device-telemetry
      principals: [device, leaf]
      topics: ["devices/{device}/messages/events/#"]
    - id: twin-and-methods
      principals: [device, module, leaf]
      topics: ["$iothub/twin/#", "$iothub/methods/res/#"]
    - id: status
      principals: [module, leaf]
      topics: ["status/{device}/#"]
  subscribe:
    - id: module-inputs
      principals: [module]
      topics: ["devices/{device}/modules/{module}/inputs/#"]
    - id: twin-and-methods
      principals: [device, module, leaf]
      topics: ["$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#", "$iothub/methods/POST/#"]
    - id: status-watch
      principals: [module]
      modules: ["monitor"]
      topics: ["status/#"]
privacy:
  redact:
    - path: location
      action: remove
    - path: operator.name
      action: hash
`;

export function testPolicy(): Policy {
  return parsePolicy(TEST_POLICY_YAML, "test-policy.yaml");
}

export interface TestHub {
  hub: EdgeHub;
  attestation: MemoryAttestationSource;
  crl: CrlCache;
  store: HubStore;
  dir: string;
}

/** A hub on 127.0.0.1 (port 0 = any) with the test PKI and policy; override any option. */
export async function startTestHub(pki: TestPki, o: Partial<HubOptions> & { port?: number; crlSource?: string; crlCacheDir?: string; crlRequired?: boolean; storeFile?: string; maxMessages?: number; attestation?: MemoryAttestationSource } = {}): Promise<TestHub> {
  const dir = mkdtempSync(join(tmpdir(), "edgehub-"));
  mkdirSync(join(dir, "crl"), { recursive: true });
  const attestation = o.attestation ?? new MemoryAttestationSource();
  const log = createLogger("edge-hub", { level: process.env.EDGETRUST_LOG_LEVEL ?? "silent" });
  const crl = new CrlCache({ source: o.crlSource ?? "", cacheDir: o.crlCacheDir ?? join(dir, "crl"), issuers: [pki.issuing.certificate], require: o.crlRequired ?? false, log, fetchTimeoutMs: 5000 });
  await crl.start();
  const store = o.store ?? new HubStore(o.storeFile ?? join(dir, "hub.db"), { maxMessages: o.maxMessages ?? 10_000, maxBytes: 64 * 1024 * 1024 });
  const verifier = new ClientVerifier({ trustDomain: TRUST_DOMAIN, edgeCas: [pki.edgeCa.certificate], issuingCas: [pki.issuing.certificate], crl, attestation });
  const server = pki.hubServer();
  const hub = new EdgeHub({
    host: "127.0.0.1",
    port: o.port ?? 0,
    serverTls: () => server,
    clientCa: pki.clientCa(),
    verifier,
    attestation,
    policy: testPolicy(),
    limits: { maxPayloadBytes: 64 * 1024, maxTopicLevels: 12, allowRootWildcard: false },
    store,
    routes: [],
    defaultRoute: { priority: 0, ttlSeconds: 3600 },
    crl,
    log,
    ...o,
  });
  await hub.start();
  return { hub, attestation, crl, store, dir };
}

export async function stopTestHub(t: TestHub): Promise<void> {
  await t.hub.stop();
  rmSync(t.dir, { recursive: true, force: true });
}

export function writeTemp(dir: string, name: string, data: string | Buffer): string {
  const p = join(dir, name);
  writeFileSync(p, data);
  return p;
}

/** `p`, or a rejection naming `what` after `ms` (a bound on a hang, not a timing assertion). */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<T>((_, rej) => (timer = setTimeout(() => rej(new Error(`${what}: not within ${ms} ms`)), ms)))]).finally(() => clearTimeout(timer));
}

/** The next message on `c` whose topic matches `re`, within `ms`. */
export function nextMessage(c: MqttClient, re: RegExp, what: string, ms: number): Promise<{ topic: string; payload: Buffer }> {
  return within(new Promise((resolve) => {
    const on = (topic: string, payload: Buffer) => {
      if (!re.test(topic)) return;
      c.off("message", on);
      resolve({ topic, payload });
    };
    c.on("message", on);
  }), ms, what);
}

/** A test's cleanup list: `later(f)` runs f after the test (edge-hub's process tests keep one each). */
type Later = (f: () => Promise<void> | void) => void;

const ROOT = resolve(import.meta.dirname, "..");
/** `edgetrust …` from the sources through tsx, as an operator starts it (cli/index.ts main(); no dist/ build needed). */
const CLI_ENTRY = `const { main } = await import(${JSON.stringify(join(ROOT, "cli/index.ts"))}); process.exitCode = await main(["node", "edgetrust", ...process.argv.slice(1)]);`;

export interface HubProcess {
  proc: ChildProcess;
  out: () => string;
  /** Resolves with the first match of `re` in the output (stdout and stderr) written after `from` (a length of out()). */
  waitFor(re: RegExp, what: string, from?: number): Promise<RegExpMatchArray>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** `edgetrust hub run --config <config>` as its own process (so a test can SIGTERM or SIGKILL it); killed by `later` if still running. */
export function startHubProcess(config: string, later: Later, env: NodeJS.ProcessEnv = {}): HubProcess {
  const proc = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", CLI_ENTRY, "--", "hub", "run", "--config", config], {
    cwd: ROOT, env: { ...process.env, EDGETRUST_LOG_LEVEL: "info", ...env }, stdio: ["ignore", "pipe", "pipe"],
  });
  let text = "";
  const waiters: { re: RegExp; from: number; resolve: (m: RegExpMatchArray) => void }[] = [];
  const feed = (b: Buffer) => {
    text += b.toString();
    for (const w of [...waiters]) {
      const m = text.slice(w.from).match(w.re);
      if (m) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(m);
      }
    }
  };
  proc.stdout?.on("data", feed);
  proc.stderr?.on("data", feed);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => proc.once("exit", (code, signal) => r({ code, signal })));
  later(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill("SIGKILL");
      await exited;
    }
  });
  return {
    proc, exited, out: () => text,
    waitFor: (re, what, from = 0) => within(new Promise<RegExpMatchArray>((resolve, reject) => {
      const m = text.slice(from).match(re);
      if (m) return resolve(m);
      waiters.push({ re, from, resolve });
      void exited.then(({ code }) => reject(new Error(`${what}: the hub exited (${code}) first:\n${text}`)));
    }), 45_000, `${what}\n${text.slice(-4000)}`),
  };
}

/**
 * Mosquitto as the cloud broker on `port`: TLS with `tls.cert`/`tls.key`, client certificates chaining to `tls.clientCa`
 * required, `extra` config lines; resolves when it runs, stopped by `later`.
 */
export async function startMosquitto(dir: string, port: number, tls: { cert: string; key: string; clientCa: string }, later: Later, extra: string[] = []): Promise<void> {
  const conf = join(dir, "mosquitto.conf");
  // Sessions live in the broker's memory (persistence off is about disk): enough for a hub restart.
  writeFileSync(conf, [`listener ${port} 127.0.0.1`, `cafile ${tls.clientCa}`, `certfile ${tls.cert}`, `keyfile ${tls.key}`,
    "require_certificate true", "allow_anonymous true", "persistence false", "user root", "log_dest stderr", ...extra, ""].join("\n"));
  const p = spawn("mosquitto", ["-c", conf], { stdio: ["ignore", "ignore", "pipe"] });
  const exited = new Promise<void>((r) => p.once("exit", () => r()));
  later(async () => {
    if (p.exitCode === null && p.signalCode === null) {
      p.kill("SIGTERM");
      await exited;
    }
  });
  let log = "";
  await within(new Promise<void>((resolve, reject) => {
    p.stderr?.on("data", (b: Buffer) => {
      log = (log + b.toString()).slice(-8192); // always drained: a full pipe would block Mosquitto
      if (/mosquitto version \S+ running/.test(log)) resolve();
    });
    void exited.then(() => reject(new Error(`mosquitto exited: ${log}`)));
  }), 15_000, "mosquitto start");
}

/** An MQTT client with the certs-dev credential `<pkiDir>/<name>.{chain,key}.pem`, trusting `caFile`; ended by `later`. */
export async function connectWithCertificate(port: number, pkiDir: string, name: string, caFile: string, later: Later, extra: mqtt.IClientOptions = {}): Promise<MqttClient> {
  const c = await within(mqtt.connectAsync(`mqtts://127.0.0.1:${port}`, {
    cert: readFileSync(join(pkiDir, `${name}.chain.pem`)), key: readFileSync(join(pkiDir, `${name}.key.pem`)), ca: readFileSync(caFile),
    servername: "localhost", reconnectPeriod: 0, protocolVersion: 4, connectTimeout: 15_000, ...extra,
  }), 20_000, `connect ${name}`);
  later(() => c.endAsync(true).then(() => undefined, () => undefined));
  return c;
}
