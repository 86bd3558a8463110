/**
 * `edgetrust demo`: the whole system on one machine, step by step, with real parts (DESIGN.md §3). Each step is one
 * function that returns what it proved; `runDemo` runs them in order and always tears down what it started.
 *
 * Separate processes (as in real life): ca-service (`edgetrust ca serve`), the device identity daemon
 * (`edgetrust device run`), Mosquitto as the cloud broker, the module containers on dockerd. In this process (what an
 * operator's device runs next to the daemon): the edge hub and the edge agent. This process must start with
 * OPENSSL_CONF registering the pkcs11 engine (cli/demo.ts does that), so the hub's and the device's TLS keys stay in
 * SoftHSM.
 */
import "reflect-metadata";
import { createHash, randomBytes } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import * as jose from "jose";
import mqtt, { type MqttClient } from "mqtt";
import { stringify } from "yaml";
import { createLogger, freePort, httpCall } from "../../common/index.js";
import { ENGINE_ID, Pkcs11KeyStore, SOFTHSM_MODULE, createSoftHsmDir, engineConfig, initToken, tlsKeyOptions, type KeyStore } from "../../hsm/index.js";
import { parsePolicy, parseTrustRoot, signManifest, signTrustRoot, signerFromPrivateKey, type JwsSigner, type Manifest, type Policy, type TrustRoot } from "../../policy/index.js";
import { DockerClient } from "../../engine/index.js";
import { CloudClient, EdgeAgent, ManagementSocketRegistrar, containerName, syncDeployment, type AgentReport } from "../../edge-agent/index.js";
import { REGISTRY, DOCKER_SOCKET, buildNodeModuleImage, type NodeModuleImage } from "../../dev-images/index.js";
import { ClientVerifier, CrlCache, EdgeHub, HubStore, Redactor, Upstream, loadOrCreateSecret, parseRoutes, type ClientIdentity, type Rejection } from "../../edge-hub/index.js";
import { ManagementAttestationSource, ManagementClient } from "../../identity-api/index.js";
import type { Daemon} from "./procs.js";
import { docker, edgetrust, edgetrustJson, engineRegistered, lastLines, repoRoot, run, startEdgetrust, startProcess, until } from "./procs.js";

export interface StepResult {
  id: string;
  title: string;
  ok: boolean;
  /** One line: what was shown, or why it failed. */
  detail: string;
  /** Facts behind the line (serials, digests, reasons) — what `--json` prints and the test asserts. */
  evidence: Record<string, unknown>;
  ms: number;
}

interface DemoOptions {
  /** Where the run's state goes (default `.edgetrust-demo/run-<time>` under the source tree). */
  baseDir?: string;
  /** Leave everything running and print how to stop it. */
  keep?: boolean;
  /** Progress lines (default: none). */
  progress?: (line: string) => void;
  /** Called as each step ends. */
  onStep?: (s: StepResult) => void;
}

export interface DemoResult {
  ok: boolean;
  steps: StepResult[];
  baseDir: string;
  /** With keep: what is still running and how to stop it. */
  leftRunning: string[];
  ms: number;
}

const TRUST_DOMAIN = "demo.edgetrust";
const PIN = { ca: "demo-ca-pin-1234", device: "demo-device-pin-1234" };

function pemCerts(text: string): x509.X509Certificate[] {
  return (text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []).map((p) => new x509.X509Certificate(p));
}

/** HTTPS JSON call to ca-service (admin or line token); the answer's JSON, or its text when it is none. */
async function caCall(url: string, ca: string, method: string, path: string, token: string, body?: unknown, extraHeaders: Record<string, string> = {}): Promise<{ status: number; json: unknown }> {
  const a = await httpCall({
    method, url: new URL(path, url), body, tls: { ca }, timeoutMs: 120_000, peer: `CA at ${url}`,
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...extraHeaders },
  });
  let json: unknown = a.text;
  try {
    json = JSON.parse(a.text);
  } catch {
    /* not JSON */
  }
  return { status: a.status, json };
}

/** Everything the steps share; filled as the flow goes. */
class Demo {
  readonly tag = randomBytes(2).toString("hex");
  readonly deviceId = `demo-device-${this.tag}`;
  readonly modules = { sensor: `sensor-${this.tag}`, gateway: `gateway-${this.tag}`, analytics: `analytics-${this.tag}` };
  readonly docker = new DockerClient({ socketPath: DOCKER_SOCKET });
  readonly daemons: Daemon[] = [];
  readonly log = createLogger("demo", { level: process.env.EDGETRUST_LOG_LEVEL ?? "silent" });
  readonly paths;
  caUrl = "";
  revocationUrl = "";
  adminToken = "";
  rootPem = "";
  caTrustPem = "";
  deviceKeys?: KeyStore;
  signers: JwsSigner[] = [];
  trustRoot?: TrustRoot;
  policy?: Policy;
  image?: NodeModuleImage;
  imageTag = "";
  hub?: EdgeHub;
  attestation?: ManagementAttestationSource;
  hubStore?: HubStore;
  crl?: CrlCache;
  upstream?: Upstream;
  agent?: EdgeAgent;
  cloud?: CloudClient;
  brokerPort = 0;
  cloudSubscriber?: MqttClient;
  readonly upstreamMessages: { topic: string; body: Record<string, unknown> }[] = [];
  readonly rejected: Rejection[] = [];
  readonly connected: ClientIdentity[] = [];
  readonly reports: AgentReport[] = [];
  v1Jws = "";
  caEnv: NodeJS.ProcessEnv = {};
  /** Image references this run built and pushed (removed from the local engine at teardown). */
  readonly pushedImages: string[] = [];

  constructor(readonly base: string, readonly progress: (line: string) => void) {
    this.paths = {
      caConfig: join(base, "ca", "edgetrust.yaml"),
      deviceConfig: join(base, "device", "edgetrust.yaml"),
      deviceState: join(base, "device", "identity"),
      mgmtSocket: join(base, "device", "mgmt.sock"),
      workloadDir: join(base, "device", "modules"),
      hubCert: join(base, "device", "hub", "server.chain.pem"),
      hubState: join(base, "device", "hub-state"),
      agentState: join(base, "device", "agent"),
      team: join(base, "security-team"),
      devicePolicy: join(base, "device", "policy.yaml"),
      deviceTrustRoot: join(base, "device", "trust-root.json"),
      logs: join(base, "logs"),
      broker: join(base, "broker"),
      opensslConf: join(base, "openssl.cnf"),
    };
  }

  stateFile(name: string): string {
    return join(this.paths.deviceState, name);
  }

  async containerRunning(module: string): Promise<boolean> {
    return (await this.docker.inspectContainer(containerName(module)))?.State.Running === true;
  }
}

type Step = (d: Demo) => Promise<{ detail: string; evidence: Record<string, unknown> }>;

// ---- 1. the cloud CA --------------------------------------------------------------------------------------------

const createCa: Step = async (d) => {
  d.progress("the security team writes its policy (with attestation reference values) and a 2-of-3 trust root");
  await securityTeam(d);
  d.progress("creating SoftHSM tokens (ca, device) and the root + issuing CA");
  const hsm = createSoftHsmDir({ parent: d.base });
  initToken({ module: SOFTHSM_MODULE, label: "ca", soPin: `so-${PIN.ca}`, userPin: PIN.ca });
  initToken({ module: SOFTHSM_MODULE, label: "device", soPin: `so-${PIN.device}`, userPin: PIN.device });
  writeFileSync(join(hsm.dir, "ca.pin"), `${PIN.ca}\n`, { mode: 0o600 });
  writeFileSync(join(hsm.dir, "device.pin"), `${PIN.device}\n`, { mode: 0o600 });
  writeFileSync(d.paths.opensslConf, engineConfig({ module: SOFTHSM_MODULE }));
  d.caEnv = { SOFTHSM2_CONF: hsm.conf, OPENSSL_CONF: d.paths.opensslConf, EDGETRUST_BOOTSTRAP_TOKEN: "" };
  const port = await freePort();
  const revocationPort = await freePort();
  d.caUrl = `https://127.0.0.1:${port}`;
  d.revocationUrl = `http://127.0.0.1:${revocationPort}`;
  mkdirSync(join(d.base, "ca"), { recursive: true });
  writeFileSync(d.paths.caConfig, stringify({
    log: { level: "warn" },
    hsm: { backend: "pkcs11", module: SOFTHSM_MODULE, tokenLabel: "ca", pinFile: join(hsm.dir, "ca.pin") },
    ca: {
      host: "127.0.0.1", port, revocationPort, publicBaseUrl: d.revocationUrl, sqlitePath: join(d.base, "ca", "ca.db"), trustDomain: TRUST_DOMAIN,
      // The verifier appraises evidence against the security team's policy (its attestation: section), re-read each time.
      attestation: { policyFile: join(d.paths.team, "policy.yaml") },
    },
  }));
  writeFileSync(join(d.base, "device.pin.path"), join(hsm.dir, "device.pin"));
  const init = await edgetrustJson<{ root: string; issuing: string; rootCertificatePem: string; adminToken: string; keyStore: string }>(["ca", "init", "-c", d.paths.caConfig, "--json"], d.caEnv);
  d.adminToken = init.adminToken;
  d.rootPem = init.rootCertificatePem;
  // The CA keys are in the token, marked sensitive and never extractable.
  const caKeys = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: "ca", pin: PIN.ca, logger: d.log });
  let keys: { label: string; extractable: boolean; sensitive: boolean }[];
  try {
    keys = (await caKeys.list()).map((k) => ({ label: k.label, extractable: k.extractable, sensitive: k.sensitive }));
  } finally {
    await caKeys.close();
  }
  if (keys.length < 2 || keys.some((k) => k.extractable || !k.sensitive)) throw new Error(`CA keys not as expected: ${JSON.stringify(keys)}`);
  const ca = startEdgetrust("ca-service", ["ca", "serve", "-c", d.paths.caConfig], d.caEnv, join(d.paths.logs, "ca-service.log"));
  d.daemons.push(ca);
  await ca.waitFor(/"listening"/, "ca-service listening");
  const root = new x509.X509Certificate(d.rootPem);
  return {
    detail: `root "${root.subject}" + issuing CA ${init.issuing}; ${keys.length} keys in SoftHSM (sensitive, not extractable); ca-service (pid ${ca.pid}) on ${d.caUrl}, appraising attestation against security-team/policy.yaml`,
    evidence: { root: init.root, issuing: init.issuing, keyStore: init.keyStore, keys, caUrl: d.caUrl, pid: ca.pid },
  };
};

// ---- 2. a provisioning line enrolls the device -----------------------------------------------------------------

const hsmSection = (d: Demo) => ({ backend: "pkcs11", module: SOFTHSM_MODULE, tokenLabel: "device", pinFile: readFileSync(join(d.base, "device.pin.path"), "utf8") });

const enrollDevice: Step = async (d) => {
  const rootFile = join(d.base, "ca", "root.pem");
  writeFileSync(rootFile, d.rootPem);
  mkdirSync(join(d.base, "device"), { recursive: true });
  // The factory installs the security team's policy and trust root on the device (the first root comes out of band).
  copyFileSync(join(d.paths.team, "policy.yaml"), d.paths.devicePolicy);
  copyFileSync(join(d.paths.team, "trust-root.json"), d.paths.deviceTrustRoot);
  writeFileSync(d.paths.deviceConfig, stringify({
    log: { level: "info" },
    hsm: hsmSection(d),
    device: {
      deviceId: d.deviceId, trustDomain: TRUST_DOMAIN, stateDir: d.paths.deviceState, caUrl: d.caUrl, caTrustFile: rootFile,
      enrollment: "registration", managementSocket: d.paths.mgmtSocket, workloadDir: d.paths.workloadDir, dockerSocket: DOCKER_SOCKET,
      hubServerCertFile: d.paths.hubCert, moduleLifetimeSeconds: 3600,
      measurements: { agentFile: agentBuildFile(), policyFile: d.paths.devicePolicy, trustRootFile: d.paths.deviceTrustRoot, manifestFile: join(d.paths.agentState, "current.jws") },
    },
  }));
  const line = await edgetrustJson<{ line: { id: string; name: string }; token: string }>(["ca", "line", "create", "-c", d.paths.caConfig, "--name", "factory-line-1", "--json"], d.caEnv);
  d.progress("device: generating its keys in SoftHSM (device, Edge CA, hub)");
  const keys = await edgetrustJson<{ publicKeyPem: string; keys: unknown }>(["device", "provision", "-c", d.paths.deviceConfig, "--keys-only", "--json"], d.caEnv);
  // The factory line enrolls the device's HSM public key over the enrollment API with its own token.
  const r = await caCall(d.caUrl, d.rootPem, "PUT", `/v1/enrollments/${d.deviceId}`, line.token, { attestation: "publicKey", credential: keys.publicKeyPem, dnsNames: ["edgehub", "localhost"] });
  if (r.status !== 201 && r.status !== 200) throw new Error(`enrollment refused: HTTP ${r.status} ${JSON.stringify(r.json)}`);
  const e = r.json as { registrationId: string; lineId: string; credentialSha256: string };
  return {
    detail: `line "${line.line.name}" enrolled ${e.registrationId} (publicKey, sha256 ${e.credentialSha256.slice(0, 12)}…) with its line token`,
    evidence: { lineId: line.line.id, registrationId: e.registrationId, enrolledByLine: e.lineId, status: r.status },
  };
};

// ---- 3. the device registers and attests -----------------------------------------------------------------------

const registerDevice: Step = async (d) => {
  const p = await edgetrustJson<{ deviceId: string; generation: number; certificates: { kind: string; serial: string; notAfter: string }[] }>(["device", "provision", "-c", d.paths.deviceConfig, "--json"], d.caEnv);
  const daemon = startEdgetrust("device-identity", ["device", "run", "-c", d.paths.deviceConfig], d.caEnv, join(d.paths.logs, "device-identity.log"));
  d.daemons.push(daemon);
  await until("the device management socket", () => existsSync(d.paths.mgmtSocket) && existsSync(d.paths.hubCert), 60_000);
  await daemon.waitFor(/device identity daemon running/, "device identity daemon running");
  const att = await attest(d);
  if (att.status !== "affirming") throw new Error(`attestation ${att.status}: ${claimLine(att.claims, true)}`);
  const dev = new x509.X509Certificate(readFileSync(d.stateFile("device.cert.pem"), "utf8"));
  const uri = dev.getExtension(x509.SubjectAlternativeNameExtension)?.names.items.find((n) => n.type === "url")?.value;
  d.caTrustPem = readFileSync(d.stateFile("ca-bundle.pem"), "utf8");
  return {
    detail: `registered as ${uri} (${p.certificates.map((c) => c.kind).join(", ")}); daemon pid ${daemon.pid}; attestation: ${att.status} (${claimLine(att.claims)})`,
    evidence: { deviceUri: uri, certificates: p.certificates, attestation: att.status, claims: att.claims, pid: daemon.pid },
  };
};

// ---- 4. the cloud broker and the edge hub -----------------------------------------------------------------------

async function startBroker(d: Demo): Promise<void> {
  const dir = d.paths.broker;
  mkdirSync(dir, { recursive: true });
  const ossl = (args: string[]) => run("openssl", args, dir);
  // The broker's own CA: its server certificate, and a client certificate for the cloud back-end that reads telemetry.
  await ossl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "broker-ca.key", "-out", "broker-ca.pem", "-days", "1", "-subj", "/CN=demo cloud broker CA"]);
  for (const [name, ext] of [["server", "subjectAltName=IP:127.0.0.1,DNS:localhost"], ["backend", "extendedKeyUsage=clientAuth"]] as const) {
    await ossl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=demo broker ${name}`]);
    writeFileSync(join(dir, `${name}.ext`), `${ext}\n`);
    await ossl(["x509", "-req", "-in", `${name}.csr`, "-CA", "broker-ca.pem", "-CAkey", "broker-ca.key", "-CAcreateserial", "-days", "1", "-extfile", `${name}.ext`, "-out", `${name}.pem`]);
  }
  // Client certificates must chain to the edgetrust CA (devices) or the broker CA (the back-end).
  writeFileSync(join(dir, "clients.pem"), d.caTrustPem + readFileSync(join(dir, "broker-ca.pem"), "utf8"));
  d.brokerPort = await freePort();
  writeFileSync(join(dir, "mosquitto.conf"), [`listener ${d.brokerPort} 127.0.0.1`, `cafile ${join(dir, "clients.pem")}`, `certfile ${join(dir, "server.pem")}`, `keyfile ${join(dir, "server.key")}`,
    "require_certificate true", "allow_anonymous true", "persistence false",
    // As root Mosquitto would drop to the mosquitto user, which cannot read this run's files.
    ...(process.getuid?.() === 0 ? ["user root"] : []), "log_dest stderr", ""].join("\n"));
  const m = startProcess("mosquitto", "mosquitto", ["-c", join(dir, "mosquitto.conf")], join(d.paths.logs, "mosquitto.log"));
  d.daemons.push(m);
  await m.waitFor(/mosquitto version \S+ running/, "mosquitto running", 15_000);
  d.cloudSubscriber = await mqtt.connectAsync(`mqtts://127.0.0.1:${d.brokerPort}`, {
    ca: readFileSync(join(dir, "broker-ca.pem")), cert: readFileSync(join(dir, "backend.pem")), key: readFileSync(join(dir, "backend.key")),
    protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 10_000, clientId: `demo-backend-${d.tag}`,
  });
  d.cloudSubscriber.on("message", (topic, payload) => {
    try {
      d.upstreamMessages.push({ topic, body: JSON.parse(payload.toString("utf8")) as Record<string, unknown> });
    } catch {
      d.upstreamMessages.push({ topic, body: { raw: payload.toString("utf8") } });
    }
  });
  await d.cloudSubscriber.subscribeAsync("devices/#", { qos: 1 });
}

const POLICY_YAML = `version: 1
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
  subscribe:
    - id: own-inputs
      principals: [module]
      topics: ["devices/{device}/modules/{module}/inputs/#"]
privacy:
  redact:
    - path: location
      action: remove
    - path: operator
      action: hash
`;

const startHub: Step = async (d) => {
  d.progress("starting the cloud broker (TLS Mosquitto) and the edge hub");
  const policy = d.policy;
  if (!policy) throw new Error("no policy: the security team's step did not run");
  await startBroker(d);
  const hsm = hsmSection(d);
  d.deviceKeys = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: "device", pin: PIN.device, logger: d.log });
  const labels = (await d.deviceKeys.list()).map((k) => k.label);
  const deviceLabel = labels.find((l) => l.startsWith("device-identity"));
  if (!deviceLabel) throw new Error(`no device key in the token: ${labels.join(", ")}`);
  if (!engineRegistered(ENGINE_ID)) throw new Error("OPENSSL_CONF does not register the pkcs11 engine: start through `edgetrust demo`");
  const keyOpts = (label: string) => tlsKeyOptions(d.deviceKeys as KeyStore, { label }, { module: hsm.module, tokenLabel: "device", pin: PIN.device });
  const hubKey = await keyOpts("edge-hub-server");
  const deviceKey = await keyOpts(deviceLabel);
  const edgeCas = pemCerts(readFileSync(d.stateFile("edge-ca.cert.pem"), "utf8"));
  const issuingCas = pemCerts(readFileSync(d.stateFile("issuing-ca.cert.pem"), "utf8"));
  const trust = pemCerts(readFileSync(d.stateFile("trust-bundle.pem"), "utf8"));
  mkdirSync(join(d.paths.hubState, "crl"), { recursive: true });
  const dp = issuingCas.length > 0 ? crlSourceOf(readFileSync(d.stateFile("device.cert.pem"), "utf8")) : "";
  const crl = new CrlCache({ source: dp, cacheDir: join(d.paths.hubState, "crl"), issuers: issuingCas, require: false, log: d.log });
  await crl.start();
  d.crl = crl;
  const attestation = new ManagementAttestationSource(new ManagementClient(d.paths.mgmtSocket), d.deviceId, { log: d.log });
  await attestation.start();
  d.attestation = attestation;
  d.hubStore = new HubStore(join(d.paths.hubState, "hub.db"), { maxMessages: 100_000, maxBytes: 64 * 1024 * 1024 });
  d.upstream = new Upstream({
    url: `mqtts://127.0.0.1:${d.brokerPort}`, clientId: d.deviceId,
    tls: { ...deviceKey, cert: readFileSync(d.stateFile("device.chain.pem")), ca: readFileSync(join(d.paths.broker, "broker-ca.pem")) } as ConstructorParameters<typeof Upstream>[0]["tls"],
    store: d.hubStore, maxInflight: 50, drainRatePerSecond: 200, reconnectMs: 1000, log: d.log,
  });
  d.hub = new EdgeHub({
    host: "127.0.0.1", port: 0,
    serverTls: () => ({ cert: readFileSync(d.paths.hubCert), ...hubKey }),
    clientCa: [...trust, ...issuingCas, ...edgeCas].map((c) => c.toString("pem")),
    verifier: new ClientVerifier({ trustDomain: TRUST_DOMAIN, edgeCas, issuingCas, crl, attestation }),
    attestation, policy,
    limits: { maxPayloadBytes: 256 * 1024, maxTopicLevels: 16, allowRootWildcard: false },
    store: d.hubStore, routes: parseRoutes({ telemetry: "FROM /messages/modules/* INTO $upstream" }),
    defaultRoute: { priority: 5, ttlSeconds: 86_400 },
    redactor: new Redactor(policy.privacy?.redact ?? [], loadOrCreateSecret(join(d.paths.hubState, "privacy.key"))),
    upstream: d.upstream, upstreamTopicPrefix: "", crl, log: d.log,
  });
  d.hub.on("rejected", (r) => d.rejected.push(r));
  d.hub.on("connected", (id) => d.connected.push(id));
  await d.hub.start();
  await until("the hub's upstream connection", () => d.upstream?.connected === true || undefined, 30_000).catch(() => undefined);
  return {
    detail: `edge hub on 127.0.0.1:${d.hub.boundPort} (server key hsm:edge-hub-server, upstream as ${d.deviceId} with hsm:${deviceLabel}) → Mosquitto mqtts://127.0.0.1:${d.brokerPort}; CRL ${dp || "none"}`,
    evidence: { hubPort: d.hub.boundPort, brokerPort: d.brokerPort, crl: dp, deviceKeyLabel: deviceLabel },
  };
};

/** The CRL distribution point of a certificate (where the hub fetches the issuing CA's CRL). */
function crlSourceOf(pem: string): string {
  const cert = new x509.X509Certificate(pem);
  const ext = cert.getExtension(x509.CRLDistributionPointsExtension);
  const uri = ext?.distributionPoints.flatMap((p) => p.distributionPoint?.fullName ?? []).find((n) => n.uniformResourceIdentifier)?.uniformResourceIdentifier;
  return uri ?? "";
}

/** The file whose sha256 is the device's agent measurement: the CLI entry the daemon runs (built, or the sources). */
function agentBuildFile(): string {
  const root = repoRoot();
  return import.meta.url.endsWith(".ts") ? join(root, "cli", "index.ts") : join(root, "dist", "cli", "index.js");
}

/**
 * The security team, before any device exists: three signer keys, a 2-of-3 trust root, and the policy — whose
 * attestation: section is what ca-service appraises evidence against (the agent build it ships, this very policy,
 * the trust root it names, a manifest the CA serves, modules exactly as that manifest pins them).
 */
async function securityTeam(d: Demo): Promise<void> {
  mkdirSync(d.paths.team, { recursive: true });
  d.signers = [await makeSigner("ES256"), await makeSigner("ES384"), await makeSigner("EdDSA")];
  const body = { type: "edgetrust-trust-root" as const, version: 1, expires: new Date(Date.now() + 365 * 86_400_000).toISOString(), threshold: 2, keys: d.signers.map((s) => s.publicKey) };
  let rootJws = await signTrustRoot(body, d.signers[0] as JwsSigner);
  rootJws = await signTrustRoot(rootJws, d.signers[1] as JwsSigner);
  const rootText = JSON.stringify(rootJws);
  writeFileSync(join(d.paths.team, "trust-root.json"), rootText);
  d.trustRoot = await parseTrustRoot(rootText);
  const agent = `sha256:${createHash("sha256").update(readFileSync(agentBuildFile())).digest("hex")}`;
  const text = POLICY_YAML + [
    "attestation:",
    `  agent: ["${agent}"]`,
    "  policy: self",
    "  trustRoot: policy",
    "  manifest: { minVersion: 1, digests: deployments, absent: affirming }",
    "  modules: manifest",
    "",
  ].join("\n");
  writeFileSync(join(d.paths.team, "policy.yaml"), text);
  d.policy = parsePolicy(text, join(d.paths.team, "policy.yaml"));
}

type Claims = Record<string, { status: string; reason: string; measured?: string; reference?: string }>;

/** `edgetrust device attest --json`: nonce from ca-service, evidence signed by the daemon's HSM key, the CA's verdict. */
async function attest(d: Demo): Promise<{ status: string; claims: Claims }> {
  const r = await edgetrust(["device", "attest", "-c", d.paths.deviceConfig, "--json"], d.caEnv);
  try {
    return JSON.parse(r.stdout) as { status: string; claims: Claims };
  } catch {
    throw new Error(`edgetrust device attest exited ${r.code}: ${lastLines(r.stderr)}`);
  }
}

/** `agent ✔ policy ✔ …`, or with `reasons` every claim that is not affirming with its reason. */
function claimLine(claims: Claims, reasons = false): string {
  const mark = (s: string): string => (s === "affirming" ? "✔" : s === "warning" ? "!" : "✘");
  if (reasons) return Object.entries(claims).filter(([, c]) => c.status !== "affirming").map(([k, c]) => `${k} ${c.status}: ${c.reason}`).join("; ");
  return Object.entries(claims).map(([k, c]) => `${k} ${mark(c.status)}`).join(" ");
}

// ---- 5. the security team signs a 3-module deployment -------------------------------------------------------------

async function makeSigner(alg: "ES256" | "ES384" | "EdDSA"): Promise<JwsSigner> {
  const { privateKey } = await jose.generateKeyPair(alg, { extractable: true, ...(alg === "EdDSA" ? { crv: "Ed25519" } : {}) });
  return signerFromPrivateKey(JSON.stringify(await jose.exportJWK(privateKey)));
}

function manifest(d: Demo, version: number, imageRef: string, names = Object.values(d.modules)): Manifest {
  const image = imageRef;
  const env = (extra: Record<string, string>) => ({ EDGETRUST_HUB_PORT: String(d.hub?.boundPort ?? 0), EDGETRUST_TELEMETRY_MS: "1000", ...extra });
  const options = { user: "1000:1000", network: "host", readOnlyRootfs: true } as const;
  const all: Manifest["modules"] = {
    [d.modules.sensor]: { image, options, env: env({ EDGETRUST_TELEMETRY_FIELDS: JSON.stringify({ temperature: 21.5, location: "52.5200,13.4050", operator: "Jane Doe" }) }), restartPolicy: "always", startupOrder: 0 },
    [d.modules.gateway]: { image, options, env: env({}), restartPolicy: "always", startupOrder: 1 },
    // analytics is curious: once connected it tries to read the sensor's telemetry topic.
    [d.modules.analytics]: { image, options, env: env({ EDGETRUST_ATTACK_SUBSCRIBE: d.modules.sensor }), restartPolicy: "always", startupOrder: 2 },
  };
  const now = Date.now();
  return {
    schemaVersion: 1, deploymentId: `demo-${d.tag}`, version, targets: [d.deviceId],
    modules: Object.fromEntries(Object.entries(all).filter(([n]) => names.includes(n))),
    routes: { telemetry: "FROM /messages/modules/* INTO $upstream" },
    issuedAt: new Date(now - 60_000).toISOString(), expiresAt: new Date(now + 86_400_000).toISOString(),
  };
}

async function sign(d: Demo, m: Manifest, by: [number, number] = [0, 1]): Promise<string> {
  let jws = await signManifest(m, d.signers[by[0]] as JwsSigner);
  jws = await signManifest(jws, d.signers[by[1]] as JwsSigner);
  return JSON.stringify(jws);
}

const signDeployment: Step = async (d) => {
  d.progress("building the module image (node runtime FROM scratch + module program) and pushing it");
  const marker = `demo-${d.tag}-${Date.now()}`;
  d.image = await buildNodeModuleImage("demo-module", marker);
  d.pushedImages.push(d.image.ref);
  d.imageTag = `${d.image.repository}:${marker.replace(/[^a-zA-Z0-9_.-]/g, "-").slice(0, 60)}`;
  d.v1Jws = await sign(d, manifest(d, 1, d.image.ref));
  writeFileSync(join(d.paths.team, "deployment-v1.jws"), d.v1Jws);
  const r = await caCall(d.caUrl, d.rootPem, "PUT", "/v1/deployments", d.adminToken, JSON.parse(d.v1Jws));
  if (r.status !== 201) throw new Error(`upload refused: HTTP ${r.status} ${JSON.stringify(r.json)}`);
  const sigs = (JSON.parse(d.v1Jws) as { signatures: unknown[] }).signatures.length;
  return {
    detail: `3 modules pinned to ${d.image.digest.slice(0, 19)}…, signed by ${sigs} of 3 trusted signers (threshold 2), uploaded to ca-service`,
    evidence: { digest: d.image.digest, image: d.image.ref, signatures: sigs, threshold: 2, modules: Object.values(d.modules), imageBytes: d.image.sizeBytes },
  };
};

// ---- 6. the agent verifies and starts the modules -------------------------------------------------------------------

const agentRuns: Step = async (d) => {
  const labels = (await (d.deviceKeys as KeyStore).list()).map((k) => k.label);
  const deviceLabel = labels.find((l) => l.startsWith("device-identity")) ?? "device-identity";
  const key = await tlsKeyOptions(d.deviceKeys as KeyStore, { label: deviceLabel }, { module: SOFTHSM_MODULE, tokenLabel: "device", pin: PIN.device });
  d.cloud = new CloudClient(d.caUrl, { cert: readFileSync(d.stateFile("device.cert.pem"), "utf8"), ca: d.caTrustPem, ...key });
  d.agent = new EdgeAgent({
    docker: d.docker, identity: new ManagementSocketRegistrar(d.paths.mgmtSocket, d.paths.workloadDir), policy: d.policy as Policy, trustRoot: d.trustRoot as TrustRoot,
    deviceId: d.deviceId, stateDir: d.paths.agentState, log: d.log, backoff: { baseMs: 500, maxMs: 5000 },
    report: (r) => d.reports.push(r),
  });
  d.progress("agent: fetching the deployment over mTLS, verifying, pulling by digest, starting containers");
  const s = await syncDeployment(d.agent, d.cloud);
  if (!s.applied) throw new Error(`deployment not applied: ${JSON.stringify(d.reports.at(-1))}`);
  d.agent.supervise(1000);
  const states = d.agent.status().map((m) => `${m.name}: ${m.state}`);
  for (const n of Object.values(d.modules)) if (!(await d.containerRunning(n))) throw new Error(`${n} is not running`);
  return {
    detail: `fetched v${s.version} over mTLS (device key in SoftHSM), 2-of-3 signatures verified, ${states.join(", ")}`,
    evidence: { version: s.version, modules: d.agent.status().map((m) => ({ name: m.name, state: m.state, imageDigest: m.imageDigest })) },
  };
};

// ---- 7. modules get certificates and send telemetry; it arrives upstream redacted ---------------------------------------

const telemetryUpstream: Step = async (d) => {
  d.progress("waiting for the modules' certificates, hub connections and telemetry upstream");
  for (const n of Object.values(d.modules)) {
    await until(`${n} on the hub`, () => d.connected.find((c) => c.moduleId === n), 60_000).catch(async (e: unknown) => {
      const logs = await docker(["logs", "--tail", "4", containerName(n)]).catch(() => "");
      throw new Error(`${(e as Error).message}; hub rejections: ${JSON.stringify(d.rejected.slice(-2))}; module log: ${logs.trim().split("\n").join(" | ").slice(0, 600)}`);
    });
  }
  const sensorTopic = `devices/${d.deviceId}/modules/${d.modules.sensor}/messages/events/`;
  const msg = await until("the sensor's telemetry at the cloud broker", () => d.upstreamMessages.find((m) => m.topic.startsWith(sensorTopic)), 60_000);
  const id = d.connected.find((c) => c.moduleId === d.modules.sensor);
  const body = msg.body;
  if ("location" in body) throw new Error("location reached the cloud");
  if (typeof body.operator !== "string" || !body.operator.startsWith("hmac-sha256:")) throw new Error(`operator not hashed: ${JSON.stringify(body.operator)}`);
  if (body.temperature !== 21.5) throw new Error("telemetry value lost");
  return {
    detail: `3 modules on the hub with mTLS certificates bound to the image digest; upstream got ${JSON.stringify(body).slice(0, 140)} (location removed, operator hashed)`,
    evidence: {
      connected: d.connected.map((c) => ({ module: c.moduleId, serial: c.serial, imageDigest: c.attestation?.imageDigest, manifestVersion: c.attestation?.manifestVersion })),
      sensorAttestation: id?.attestation, upstreamTopic: msg.topic, upstreamBody: body, sent: { location: "52.5200,13.4050", operator: "Jane Doe" },
    },
  };
};

// ---- refusals ---------------------------------------------------------------------------------------------------------

const tamperedManifest: Step = async (d) => {
  const good = JSON.parse(d.v1Jws) as { payload: string; signatures: unknown[] };
  // Someone between the security team and the device rewrites the payload (v2, privileged) and keeps the signatures.
  const evil = manifest(d, 2, (d.image as NodeModuleImage).ref);
  for (const m of Object.values(evil.modules)) m.options = { ...m.options, privileged: true };
  const tampered = { ...good, payload: Buffer.from(JSON.stringify(evil)).toString("base64url") };
  const up = await caCall(d.caUrl, d.rootPem, "PUT", "/v1/deployments", d.adminToken, tampered);
  const before = d.reports.length;
  const s = await syncDeployment(d.agent as EdgeAgent, d.cloud as CloudClient);
  const rejected = d.reports.slice(before).find((r) => r.kind === "manifest-rejected");
  if (s.applied || !rejected) throw new Error(`the tampered manifest was not refused: ${JSON.stringify(s)}`);
  const reasons = (rejected.reasons ?? []) as string[];
  const still = d.agent?.current()?.version;
  if (still !== 1) throw new Error(`running version is ${still}`);
  return {
    detail: `refused: ${reasons[0] ?? "?"}; v1 keeps running`,
    evidence: { uploadStatus: up.status, applied: s.applied, reasons, runningVersion: still },
  };
};

async function registryDigest(tagRef: string): Promise<string> {
  const [repoPath = "", tag = ""] = tagRef.slice(REGISTRY.length + 1).split(":");
  const r = await fetch(`http://${REGISTRY}/v2/${repoPath}/manifests/${tag}`, {
    method: "HEAD",
    headers: { accept: "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json" },
  });
  return r.headers.get("docker-content-digest") ?? "";
}

const swappedImage: Step = async (d) => {
  const image = d.image as NodeModuleImage;
  d.progress("pushing an impostor image under the deployment's tag");
  const impostor = await buildNodeModuleImage("demo-impostor", `impostor-${d.tag}-${Date.now()}`);
  d.pushedImages.push(impostor.ref);
  await docker(["tag", impostor.ref, d.imageTag]);
  await docker(["push", d.imageTag]);
  const tagNow = await registryDigest(d.imageTag);
  if (tagNow !== impostor.digest) throw new Error(`the tag did not move to the impostor (${tagNow})`);
  // The sensor's container is removed: the agent re-creates it — from the pinned digest, not from the tag.
  const sensor = containerName(d.modules.sensor);
  const oldId = (await d.docker.inspectContainer(sensor))?.Id;
  await d.docker.removeContainer(sensor);
  const info = await until("the agent re-creating the sensor", async () => {
    const c = await d.docker.inspectContainer(sensor);
    return c && c.Id !== oldId && c.State.Running ? c : undefined;
  }, 60_000);
  const img = await d.docker.inspectImage(info.Image);
  const runsPinned = (img?.RepoDigests ?? []).some((r) => r.endsWith(`@${image.digest}`));
  if (!runsPinned) throw new Error(`re-created sensor runs ${info.Image}, not ${image.digest}`);
  // A manifest that names the tag (signed properly) is refused before anything runs.
  const byTag = manifest(d, 3, d.imageTag);
  const r = await (d.agent as EdgeAgent).apply(await sign(d, byTag, [0, 2]));
  if (r.applied) throw new Error("a manifest naming a tag was applied");
  const reasons = r.verdict.reasons.map((x) => `${x.check}: ${x.message}`);
  return {
    detail: `tag now → ${tagNow.slice(0, 19)}… (impostor); the agent re-created the sensor from ${image.digest.slice(0, 19)}…; a manifest naming the tag is refused: ${reasons[0] ?? "?"}`,
    evidence: { impostorImage: impostor.ref, tagDigest: tagNow, impostorDigest: impostor.digest, pinnedDigest: image.digest, recreatedRunsPinned: runsPinned, tagManifestReasons: reasons },
  };
};

const foreignTopic: Step = async (d) => {
  const key = `${d.deviceId}/${d.modules.analytics}`;
  const r = await until("the hub refusing analytics' subscription", () => d.rejected.find((x) => x.stage === "subscribe" && x.identity === key), 60_000);
  // Nothing of the sensor's ever reached analytics: the hub delivers only on granted subscriptions.
  return {
    detail: `analytics subscribing to ${d.modules.sensor}'s telemetry: SUBACK refused (${r.reason}: ${r.detail.slice(0, 120)})`,
    evidence: { stage: r.stage, reason: r.reason, detail: r.detail, identity: r.identity },
  };
};

const changedPolicy: Step = async (d) => {
  // Deployed and running: the device attests affirming, every module as the manifest the CA serves pins it.
  const before = await attest(d);
  if (before.status !== "affirming") throw new Error(`the deployed device attests ${before.status}: ${claimLine(before.claims, true)}`);
  // Someone with a shell on the device loosens its installed policy after the fact (audit: denials only reported).
  const original = readFileSync(d.paths.devicePolicy, "utf8");
  writeFileSync(d.paths.devicePolicy, original.replace("mode: enforce", "mode: audit"));
  let after: Awaited<ReturnType<typeof attest>>;
  try {
    after = await attest(d);
  } finally {
    writeFileSync(d.paths.devicePolicy, original);
  }
  const policyClaim = after.claims.policy;
  if (after.status !== "contraindicated" || policyClaim?.status !== "contraindicated") throw new Error(`a changed policy file attested ${after.status}: ${JSON.stringify(policyClaim)}`);
  return {
    detail: `running device attests affirming (${claimLine(before.claims)}); its policy.yaml switched to mode: audit → contraindicated: ${policyClaim.reason} [${policyClaim.reference ?? ""}]`,
    evidence: { before: before.status, beforeClaims: before.claims, after: after.status, afterClaims: after.claims, policyClaim },
  };
};

/** A leaf device (its own key, a `leaf-device` certificate from the CA) connecting to the edge hub over mTLS. */
async function leafConnect(d: Demo, leaf: { id: string; cert: string; key: string }): Promise<string> {
  try {
    const c = await mqtt.connectAsync(`mqtts://127.0.0.1:${d.hub?.boundPort ?? 0}`, {
      ca: d.caTrustPem, cert: leaf.cert, key: leaf.key, servername: "localhost", clientId: leaf.id, protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 10_000,
    });
    await c.endAsync(true);
    return "connected";
  } catch (e) {
    return `refused: ${(e as Error).message}`;
  }
}

const revokedDevice: Step = async (d) => {
  // A leaf device behind the hub: enrolled by the line... here by the admin API, certificate from ca-service.
  const leafId = `demo-leaf-${d.tag}`;
  const dir = join(d.base, "leaf");
  mkdirSync(dir, { recursive: true });
  const ossl = (args: string[]) => run("openssl", args, dir);
  await ossl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "leaf.key"]);
  await ossl(["pkey", "-in", "leaf.key", "-pubout", "-out", "leaf.pub.pem"]);
  await ossl(["req", "-new", "-key", "leaf.key", "-subj", `/CN=${leafId}`, "-out", "leaf.csr"]);
  const enr = await caCall(d.caUrl, d.rootPem, "PUT", `/v1/enrollments/${leafId}`, d.adminToken, { attestation: "publicKey", credential: readFileSync(join(dir, "leaf.pub.pem"), "utf8"), profile: "leaf-device", edgeCa: false });
  if (enr.status !== 201 && enr.status !== 200) throw new Error(`leaf enrollment refused: HTTP ${enr.status} ${JSON.stringify(enr.json)}`);
  // The leaf registers itself: its CSR (signed by the enrolled key) is the proof of possession.
  const reg = await caCall(d.caUrl, d.rootPem, "PUT", `/v1/registrations/${leafId}`, "", { csr: readFileSync(join(dir, "leaf.csr"), "utf8") }, { "idempotency-key": `leaf-${d.tag}-registration` });
  if (reg.status !== 201 && reg.status !== 200) throw new Error(`leaf registration refused: HTTP ${reg.status} ${JSON.stringify(reg.json)}`);
  const leafCert = (reg.json as { identity: { serial: string; certificatePem: string } }).identity;
  const leaf = { id: leafId, cert: leafCert.certificatePem, key: readFileSync(join(dir, "leaf.key"), "utf8") };
  const first = await leafConnect(d, leaf);
  if (first !== "connected") throw new Error(`the leaf device could not connect before revocation: ${first}`);
  const rl = await caCall(d.caUrl, d.rootPem, "POST", `/v1/certificates/${leafCert.serial}/revoke`, d.adminToken, { reason: "keyCompromise" });
  if (rl.status !== 200) throw new Error(`leaf revocation refused: HTTP ${rl.status} ${JSON.stringify(rl.json)}`);
  // The hub loads ca-service's CRL (the distribution point in the certificates); refresh now instead of on schedule.
  await d.crl?.refresh();
  const before = d.rejected.length;
  const second = await leafConnect(d, leaf);
  const hubRejection = d.rejected.slice(before).find((r) => r.identity === leafId || r.detail.includes(leafCert.serial.toLowerCase()) || r.reason === "revoked");
  if (second === "connected") throw new Error("the revoked leaf device connected to the hub");
  const hubRefusal = hubRejection ? `${hubRejection.reason}: ${hubRejection.detail}` : second;

  const dev = new x509.X509Certificate(readFileSync(d.stateFile("device.cert.pem"), "utf8"));
  const r = await caCall(d.caUrl, d.rootPem, "POST", `/v1/certificates/${dev.serialNumber}/revoke`, d.adminToken, { reason: "keyCompromise" });
  if (r.status !== 200) throw new Error(`revocation refused: HTTP ${r.status} ${JSON.stringify(r.json)}`);
  let refusal = "";
  try {
    await (d.cloud as CloudClient).fetchDeployment();
  } catch (e) {
    refusal = (e as Error).message;
  }
  if (!/revoked/i.test(refusal)) throw new Error(`the revoked device was not refused: ${refusal || "deployment fetched"}`);
  return {
    detail: `device certificate ${dev.serialNumber.slice(0, 16)}… revoked (keyCompromise): its next mTLS deployment fetch: ${refusal.slice(0, 120)}; leaf device ${leafId} connected to the hub, its certificate revoked, the hub (ca-service's CRL) refuses it: ${hubRefusal.slice(0, 120)}`,
    evidence: { serial: dev.serialNumber, revokeStatus: r.status, refusal, leaf: { id: leafId, serial: leafCert.serial, before: first, after: second, hubRefusal } },
  };
};

// ---- the run -------------------------------------------------------------------------------------------------------

const STEPS: { id: string; title: string; run: Step; core: boolean }[] = [
  { id: "ca", title: "root and issuing CA created (keys in SoftHSM), ca-service up", run: createCa, core: true },
  { id: "enroll", title: "a provisioning line enrolls the device", run: enrollDevice, core: true },
  { id: "register", title: "the device registers and attests", run: registerDevice, core: true },
  { id: "hub", title: "edge hub up, upstream to the cloud broker", run: startHub, core: true },
  { id: "sign", title: "security team signs a 3-module deployment (2 of 3)", run: signDeployment, core: true },
  { id: "agent", title: "the agent verifies it and starts the modules", run: agentRuns, core: true },
  { id: "telemetry", title: "modules get certificates, telemetry arrives upstream redacted", run: telemetryUpstream, core: true },
  { id: "tampered", title: "refused: a tampered manifest", run: tamperedManifest, core: false },
  { id: "swapped", title: "refused: an image swapped under its tag", run: swappedImage, core: false },
  { id: "foreign-topic", title: "refused: a module reading another module's topic", run: foreignTopic, core: false },
  { id: "policy-changed", title: "refused: a device whose policy file changed after the fact (attestation)", run: changedPolicy, core: false },
  { id: "revoked", title: "refused: revoked certificates (the device at the cloud, a leaf device at the hub)", run: revokedDevice, core: false },
];

/** What runs inside this process (hub, agent, MQTT back-end, HSM session): always stopped when the run ends. */
async function stopInProcess(d: Demo): Promise<void> {
  await d.agent?.stop().catch(() => undefined);
  await d.cloudSubscriber?.endAsync(true).catch(() => undefined);
  await d.hub?.stop().catch(() => undefined);
  await d.attestation?.stop().catch(() => undefined);
  await d.deviceKeys?.close().catch(() => undefined);
}

/** Image IDs of what this run built and pushed, as the local engine has them. */
async function pushedImageIds(d: Demo): Promise<string[]> {
  const ids = new Set<string>();
  for (const ref of d.pushedImages) {
    const img = await d.docker.inspectImage(ref).catch(() => undefined);
    if (img?.Id) ids.add(img.Id);
  }
  return [...ids];
}

async function teardown(d: Demo): Promise<void> {
  await d.agent?.stop().catch(() => undefined);
  for (const n of Object.values(d.modules)) await d.docker.removeContainer(containerName(n)).catch(() => undefined);
  await stopInProcess(d);
  for (const p of [...d.daemons].reverse()) await p.stop().catch(() => undefined);
  // The images this run pushed leave the local engine (their blobs stay in the registry; the shared runtime base stays).
  const ids = await pushedImageIds(d);
  if (ids.length > 0) await docker(["rmi", "-f", ...ids]).catch((e: unknown) => d.progress(`could not remove images: ${(e as Error).message}`));
}

export async function runDemo(opts: DemoOptions = {}): Promise<DemoResult> {
  const started = Date.now();
  const base = opts.baseDir ?? join(repoRoot(), ".edgetrust-demo", `run-${new Date().toISOString().replace(/[:.]/g, "-")}-${process.pid}`);
  mkdirSync(base, { recursive: true });
  const d = new Demo(base, opts.progress ?? (() => undefined));
  const steps: StepResult[] = [];
  let coreFailed = false;
  try {
    for (const s of STEPS) {
      if (coreFailed) {
        const r = { id: s.id, title: s.title, ok: false, detail: "not run: an earlier step failed", evidence: {}, ms: 0 };
        steps.push(r);
        opts.onStep?.(r);
        continue;
      }
      const t = Date.now();
      let r: StepResult;
      try {
        const out = await s.run(d);
        r = { id: s.id, title: s.title, ok: true, detail: out.detail, evidence: out.evidence, ms: Date.now() - t };
      } catch (e) {
        r = { id: s.id, title: s.title, ok: false, detail: (e as Error).message, evidence: {}, ms: Date.now() - t };
        if (s.core) coreFailed = true;
      }
      steps.push(r);
      opts.onStep?.(r);
    }
  } finally {
    if (!opts.keep) {
      d.progress("tearing down: containers, hub, agent, device daemon, ca-service, Mosquitto, pushed images, state");
      await teardown(d);
      rmSync(base, { recursive: true, force: true });
    } else {
      d.progress("--keep: stopping what runs in this process (hub, agent); leaving the detached processes and containers");
      await stopInProcess(d);
    }
  }
  let leftRunning: string[] = [];
  if (opts.keep) {
    const alive = d.daemons.filter((p) => p.running());
    const dockerCmd = `docker -H unix://${DOCKER_SOCKET}`;
    const ids = await pushedImageIds(d);
    const stop = [
      ...(alive.length ? [`kill ${alive.map((p) => p.pid).join(" ")}`] : []),
      `${dockerCmd} rm -f ${Object.values(d.modules).map(containerName).join(" ")}`,
      ...(ids.length ? [`${dockerCmd} rmi -f ${ids.map((i) => i.replace(/^sha256:/, "").slice(0, 12)).join(" ")}`] : []),
      `rm -rf ${base}`,
    ];
    leftRunning = [
      ...alive.map((p) => `${p.name}: pid ${p.pid}, log ${p.logFile}`),
      `containers: ${Object.values(d.modules).map(containerName).join(", ")} (the edge hub and agent ran inside the demo process and stopped with it)`,
      `stop everything: ${stop.join("; ")}`,
    ];
  }
  return { ok: steps.every((s) => s.ok), steps, baseDir: base, leftRunning, ms: Date.now() - started };
}

