/**
 * Test fixture (not exported from console/index.ts): a real CA on a private SoftHSM token and SQLite, served over
 * HTTPS with the console, and a fleet built through the real routes — devices with their own keys (openssl),
 * identity certificates issued by the CA, deployments signed 2-of-3 (or not) by the security team's keys, device
 * reports over mTLS, and attestation evidence signed by each device key and appraised by the CA's verifier.
 */
import { createHash } from "node:crypto";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as jose from "jose";
import { CaStore, SqliteDb, createCaServer, EnrollmentStore, DeploymentStore, type CaServer } from "../ca-service/index.js";
import { makeTestCa, opensslCsr, quietLogger, softHsm, testConfig, type SoftHsm, type TestCa } from "../ca-service/test-helpers.js";
import { signManifest, signerFromPrivateKey, signTrustRoot, type JwsSigner, type Manifest } from "../policy/index.js";
import { FIXTURE_POLICY_YAML } from "../policy/fixtures.js";
import { Value } from "@sinclair/typebox/value";
import { ConsoleConfig } from "./config.js";
import { consolePlugin } from "./plugin.js";

const AGENT_DIGEST = `sha256:${"5f".repeat(32)}`;
const sha256Text = (b: string | Buffer): string => `sha256:${createHash("sha256").update(b).digest("hex")}`;

export interface FleetDevice {
  id: string;
  keyPem: string;
  certPem: string;
  serial: string;
  keyFile: string;
  certFile: string;
}

export interface ConsoleFleet {
  dir: string;
  url: string;
  revocationUrl: string;
  origin: string;
  adminToken: string;
  auditorToken: string;
  rootPem: string;
  issuerPemFile: string;
  t: TestCa;
  server: CaServer;
  devices: Map<string, FleetDevice>;
  lines: Map<string, string>;
  /** How far the console's clock runs ahead of the real one (ms): sessions expire without waiting. */
  clock: { aheadMs: number };
  /** Enroll, issue and (optionally) attest one more device. */
  addDevice(spec: DeviceSpec): Promise<FleetDevice>;
  attest(deviceId: string, change?: Partial<Measurements>): Promise<{ status: string; claims: Record<string, { status: string; reason: string }> }>;
  report(deviceId: string, body: Record<string, unknown>): Promise<number>;
  /** What a healthy device measures for this deployment, as the fleet simulator takes reference values. */
  references(deploymentId: string, version: number): Promise<{ agent: string[]; policy: string[]; trustRoot: string[]; manifest: { minVersion: number; digests: string[] }; modules: Record<string, string[]> }>;
  /** Call the JSON API over HTTPS. */
  api(method: string, path: string, opts?: { token?: string; body?: unknown; device?: FleetDevice }): Promise<{ status: number; body: string }>;
  close(): Promise<void>;
}

export interface DeviceSpec {
  id: string;
  line?: string;
  labels?: Record<string, string>;
  edgeCa?: boolean;
}

interface Measurements {
  agent: string;
  policy: string;
  trustRoot: string;
  manifest: { digest: string; version: number };
  modules: Record<string, { imageDigest: string; manifestVersion: number }>;
}

async function signer(kid: string, alg: "ES256" | "ES384"): Promise<JwsSigner> {
  const { privateKey } = await jose.generateKeyPair(alg, { extractable: true });
  return signerFromPrivateKey(JSON.stringify(await jose.exportJWK(privateKey)), kid);
}

function manifest(deploymentId: string, version: number, targets: string[], digests: Record<string, string>): Manifest {
  const modules: Manifest["modules"] = {};
  Object.entries(digests).forEach(([name, d], i) => {
    modules[name] = {
      image: `127.0.0.1:5000/edgetrust/${name}@${d}`,
      options: { network: "host", user: "1000:1000", readOnlyRootfs: true, binds: [`/var/lib/edgetrust/data/${name}:/data:rw`] },
      env: {}, restartPolicy: "always", startupOrder: i,
    };
  });
  const now = Date.now();
  return {
    schemaVersion: 1, deploymentId, version, issuedAt: new Date(now - 86400e3).toISOString().replace(/\.\d+Z$/, "Z"),
    expiresAt: new Date(now + 90 * 86400e3).toISOString().replace(/\.\d+Z$/, "Z"), targets, modules, routes: {},
  };
}

export async function startConsoleFleet(opts: { sessionTtlSeconds?: number } = {}): Promise<ConsoleFleet> {
  const dir = mkdtempSync(join(tmpdir(), "et-console-"));
  const hsm: SoftHsm = softHsm("et-console");
  const keys = await hsm.open();
  const store = await CaStore.fromDb(new SqliteDb(join(dir, "ca.db")));

  // The security team's three signers, a 2-of-3 trust root, and a policy with attestation reference values.
  const signers = [await signer("alice.security", "ES256"), await signer("bob.security", "ES384"), await signer("carol.security", "ES256")];
  let rootJws = await signTrustRoot({ type: "edgetrust-trust-root", version: 1, expires: "2031-01-01T00:00:00Z", threshold: 2, keys: signers.map((s) => s.publicKey) }, signers[0] as JwsSigner);
  rootJws = await signTrustRoot(rootJws, signers[1] as JwsSigner);
  const trustRootText = JSON.stringify(rootJws);
  writeFileSync(join(dir, "trust-root.json"), trustRootText);
  const policyText = `${FIXTURE_POLICY_YAML}attestation:
  agent: ["${AGENT_DIGEST}"]
  policy: self
  trustRoot: policy
  manifest: { minVersion: 1, digests: deployments, absent: warning }
  modules: manifest
  mismatch: { agent: warning }
`;
  const policyFile = join(dir, "policy.yaml");
  writeFileSync(policyFile, policyText);

  const base = testConfig();
  const config = testConfig({ attestation: { ...base.attestation, policyFile }, policyFile: "" });
  const t = await makeTestCa(store, keys, config);
  const auditor = await store.createToken("night-shift auditor", "auditor", "test");
  const adminPrincipalName = "security admin";
  const admin = await store.createToken(adminPrincipalName, "admin", "test");
  const server = await createCaServer(config, { ca: t.ca, store, logger: quietLogger() });
  const consoleConfig = { ...(Value.Default(ConsoleConfig, {}) as ConsoleConfig), ...(opts.sessionTtlSeconds ? { sessionTtlSeconds: opts.sessionTtlSeconds } : {}) };
  const clock = { aheadMs: 0 };
  await server.app.register(consolePlugin, { ca: t.ca, store, caConfig: config, console: consoleConfig, now: () => Date.now() + clock.aheadMs });
  const addr = await server.listen();
  const rootPem = t.ca.rootCertificates().map((c) => c.toString("pem")).join("\n");
  const issuerPemFile = join(dir, "issuer.pem");
  writeFileSync(issuerPemFile, t.ca.current().cert.toString("pem"));
  writeFileSync(join(dir, "root.pem"), rootPem);

  const api: ConsoleFleet["api"] = (method, path, o = {}) => new Promise((resolve, reject) => {
    const body = o.body === undefined ? undefined : JSON.stringify(o.body);
    const u = new URL(path, addr.url);
    const req = request({
      host: u.hostname, port: u.port, path: u.pathname + u.search, method, ca: rootPem, servername: "localhost",
      headers: { ...(body ? { "content-type": "application/json" } : {}), ...(o.token ? { authorization: `Bearer ${o.token}` } : {}) },
      ...(o.device ? { key: o.device.keyPem, cert: o.device.certPem } : {}),
    }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => { text += c; });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: text }));
    });
    req.on("error", reject);
    req.end(body);
  });

  const es = new EnrollmentStore(store);
  const lines = new Map<string, string>();
  for (const [name, max, rate] of [["Shenzhen line 2", 500, 120], ["Porto line 1", 200, 60], ["Brno pilot line", 20, 10]] as const) {
    const l = await es.createLine({ name, maxEnrollments: max, ratePerMinute: rate }, "test");
    lines.set(name, l.line.id);
  }

  const devices = new Map<string, FleetDevice>();
  const addDevice = async (spec: DeviceSpec): Promise<FleetDevice> => {
    const k = opensslCsr(dir, spec.id, { cn: spec.id });
    const pub = execFileSync("openssl", ["pkey", "-in", k.keyFile, "-pubout"], { cwd: dir, encoding: "utf8" });
    const lineId = spec.line ? lines.get(spec.line) ?? null : null;
    const dnsNames = spec.edgeCa ? [`${spec.id}.edge.local`] : [];
    await es.putIndividual({ registrationId: spec.id, attestation: "publicKey", credential: pub, labels: spec.labels ?? {}, edgeCa: spec.edgeCa ?? false, dnsNames }, { actor: lineId ? `line:${spec.line}(${lineId})` : "test", lineId });
    await store.upsertEnrollment({ deviceId: spec.id, kind: "device", commonName: spec.id, dnsNames }, "registration");
    const issued = await t.ca.issue({ csrPem: k.csr, profile: "device-identity", deviceId: spec.id }, `registration:${spec.id}`);
    if (spec.edgeCa) {
      const e = opensslCsr(dir, `${spec.id}-edgeca`, { cn: `${spec.id} Edge CA` });
      await t.ca.issue({ csrPem: e.csr, profile: "edge-ca", deviceId: spec.id }, `registration:${spec.id}`);
    }
    const certFile = join(dir, `${spec.id}.crt`);
    writeFileSync(certFile, issued.record.certPem);
    const d: FleetDevice = { id: spec.id, keyPem: k.key, certPem: issued.record.certPem, serial: issued.record.serial, keyFile: join(dir, k.keyFile), certFile };
    devices.set(spec.id, d);
    return d;
  };

  // Measurements a healthy device reports for a deployment the CA serves.
  const good = async (deploymentId: string, version: number): Promise<Measurements> => {
    const rec = (await new DeploymentStore(store).list()).find((r) => r.deploymentId === deploymentId && r.version === version);
    if (!rec) throw new Error(`no deployment ${deploymentId}@${version}`);
    const payload = JSON.parse(Buffer.from((JSON.parse(rec.jws) as { payload: string }).payload, "base64url").toString("utf8")) as Manifest;
    const modules = Object.fromEntries(Object.entries(payload.modules).map(([n, m]) => [n, { imageDigest: m.image.slice(m.image.lastIndexOf("@") + 1), manifestVersion: version }]));
    return { agent: AGENT_DIGEST, policy: sha256Text(policyText), trustRoot: sha256Text(trustRootText), manifest: { digest: sha256Text(rec.jws), version }, modules };
  };

  const attest: ConsoleFleet["attest"] = async (deviceId, change = {}) => {
    const d = devices.get(deviceId);
    if (!d) throw new Error(`no device ${deviceId}`);
    const nonce = (JSON.parse((await api("POST", "/v1/attestation/nonce", { body: {} })).body) as { nonce: string }).nonce;
    const m: Measurements = { ...(await good("line-sensors", 4)), ...change };
    const key = await jose.importPKCS8(d.keyPem, "ES256");
    const x5c = [d.certPem, t.ca.current().cert.toString("pem")].map((p) => p.replace(/-----(BEGIN|END) CERTIFICATE-----/g, "").replace(/\s+/g, ""));
    const evidence = await new jose.CompactSign(new TextEncoder().encode(JSON.stringify({
      eat_nonce: nonce, iat: Math.floor(Date.now() / 1000), sub: `edgetrust://${config.trustDomain}/devices/${deviceId}`, eat_profile: "tag:edgetrust.dev,2026:evidence/v1", measurements: m,
    }))).setProtectedHeader({ alg: "ES256", typ: "eat+jwt", x5c }).sign(key);
    const r = await api("POST", "/v1/attestation/verify", { body: { evidence } });
    if (r.status !== 200) throw new Error(`attestation of ${deviceId}: ${r.status} ${r.body}`);
    return JSON.parse(r.body) as { status: string; claims: Record<string, { status: string; reason: string }> };
  };

  const report: ConsoleFleet["report"] = async (deviceId, body) => {
    const d = devices.get(deviceId);
    if (!d) throw new Error(`no device ${deviceId}`);
    const r = await api("POST", "/v1/device/reports", { device: d, body: { at: new Date().toISOString(), deviceId, ...body } });
    return r.status;
  };

  // Deployments: v3 and v4 signed by 2 of 3 (threshold met), v5 signed by carol alone (a device must refuse it).
  const digests = { sensor: `sha256:${"1a".repeat(32)}`, filter: `sha256:${"2b".repeat(32)}` };
  const upload = async (version: number, by: JwsSigner[], ds: Record<string, string>): Promise<void> => {
    let jws = await signManifest(manifest("line-sensors", version, ["*"], ds), by[0] as JwsSigner);
    for (const s of by.slice(1)) jws = await signManifest(jws, s);
    const r = await api("PUT", "/v1/deployments", { token: admin.token, body: jws });
    if (r.status !== 201) throw new Error(`upload v${version}: ${r.status} ${r.body}`);
  };
  await upload(3, [signers[0] as JwsSigner, signers[1] as JwsSigner], digests);
  await upload(4, [signers[1] as JwsSigner, signers[2] as JwsSigner], { ...digests, filter: `sha256:${"3c".repeat(32)}` });
  await upload(5, [signers[2] as JwsSigner], { ...digests, filter: `sha256:${"4d".repeat(32)}` });

  return {
    dir, url: addr.url, revocationUrl: addr.revocationUrl ?? "", origin: addr.url, adminToken: admin.token, auditorToken: auditor.token, rootPem, issuerPemFile,
    t, server, devices, lines, clock, addDevice, attest, report, api,
    async references(deploymentId, version) {
      const m = await good(deploymentId, version);
      return {
        agent: [m.agent], policy: [m.policy], trustRoot: [m.trustRoot], manifest: { minVersion: version, digests: [m.manifest.digest] },
        modules: Object.fromEntries(Object.entries(m.modules).map(([n, x]) => [n, [x.imageDigest]])),
      };
    },
    async close() {
      await server.close();
      await store.close();
      await keys.close();
      hsm.cleanup();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Build the demo fleet the screenshots show: several lines, statuses, deployments and refusals. */
export async function populateFleet(f: ConsoleFleet): Promise<void> {
  const specs: DeviceSpec[] = [
    { id: "gw-berlin-001", line: "Shenzhen line 2", labels: { site: "berlin", role: "gateway" }, edgeCa: true },
    { id: "gw-berlin-002", line: "Shenzhen line 2", labels: { site: "berlin", role: "gateway" }, edgeCa: true },
    { id: "gw-lisbon-001", line: "Porto line 1", labels: { site: "lisbon", role: "gateway" }, edgeCa: true },
    { id: "pump-lisbon-014", line: "Porto line 1", labels: { site: "lisbon", role: "pump-controller" } },
    { id: "pump-lisbon-015", line: "Porto line 1", labels: { site: "lisbon", role: "pump-controller" } },
    { id: "cam-brno-007", line: "Brno pilot line", labels: { site: "brno", role: "camera" } },
    { id: "cam-brno-008", line: "Brno pilot line", labels: { site: "brno", role: "camera" } },
    { id: "meter-oslo-101", labels: { site: "oslo", role: "meter" } },
  ];
  for (const s of specs) if (!f.devices.has(s.id)) await f.addDevice(s);
  // Reports first (what the devices did with the deployments), then attestation.
  for (const id of ["gw-berlin-001", "gw-berlin-002", "gw-lisbon-001", "pump-lisbon-014", "cam-brno-007"]) {
    await f.report(id, { kind: "manifest-accepted", deploymentId: "line-sensors", version: 3 });
    await f.report(id, { kind: "manifest-accepted", deploymentId: "line-sensors", version: 4 });
  }
  await f.report("pump-lisbon-015", { kind: "manifest-accepted", deploymentId: "line-sensors", version: 3 });
  await f.report("pump-lisbon-015", { kind: "manifest-rejected", deploymentId: "line-sensors", version: 4, reasons: ["image: 127.0.0.1:5000/edgetrust/filter is not reachable (pull failed, kept v3)"] });
  for (const id of ["gw-berlin-001", "gw-lisbon-001", "cam-brno-007"]) {
    await f.report(id, { kind: "manifest-rejected", deploymentId: "line-sensors", version: 5, reasons: ["threshold: 1 of the required 2 distinct trusted keys signed (carol.security)"] });
  }
  await f.attest("gw-berlin-001");
  await f.attest("gw-berlin-002");
  await f.attest("gw-lisbon-001");
  await f.attest("pump-lisbon-014", { agent: `sha256:${"77".repeat(32)}` });
  await f.attest("cam-brno-007", { modules: { sensor: { imageDigest: `sha256:${"ee".repeat(32)}`, manifestVersion: 4 }, filter: { imageDigest: `sha256:${"3c".repeat(32)}`, manifestVersion: 4 } } });
  await f.attest("pump-lisbon-015", { policy: `sha256:${"99".repeat(32)}` });
  // A refused enrollment by a line over its quota, as the refusal audit records it.
  await f.api("PUT", "/v1/enrollments/individual/not-a-device", { token: "et_" + "A".repeat(43) });
}
