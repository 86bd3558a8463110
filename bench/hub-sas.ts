import { webcrypto } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { createLogger } from "../common/index.js";
import { AttestedModules, ModuleEventLog, SasKeys, WorkloadSockets, startManagementApi, type AttestedModuleInput } from "../device-identity/index.js";
import { ClientVerifier, CrlCache, EdgeHub, HubStore, MemoryAttestationSource } from "../edge-hub/index.js";
import { Pkcs11KeyStore, SOFTHSM_MODULE, createSoftHsmDir, initToken } from "../hsm/index.js";
import { ManagementClient } from "../identity-api/index.js";
import { issueCertificate } from "../pki/index.js";
import { parsePolicy } from "../policy/index.js";
import { loadProcess, type LoadProcess } from "./mqtt-load.js";
import { row, type Benchmark, type BenchRow, type Progress } from "./types.js";

/**
 * SAS-authenticated modules (unmodified Azure IoT Edge modules) beside X.509 modules, through one edge hub in one run,
 * in alternating rounds:
 *
 * - Connections/s: CONN_WORKERS load processes each open connections one after another (TLS handshake, CONNECT →
 *   CONNACK, close). X.509: a module certificate checked by the hub (chain, URI SAN, Edge CA, attestation). SAS: no
 *   client certificate; the token (as the SDK sends it: client id `<d>/<m>`, user name `<host>/<d>/<m>/?api-version=`)
 *   goes to the identity daemon's management socket (`POST /v1/sas/verify`), which recomputes the HMAC with the
 *   module's key in SoftHSM2; then the hub's own policy and attestation checks. Ratio: SAS / X.509.
 * - QoS 1 messages/s: PUBLISHERS load processes, each connected as its own module, publish telemetry with a window of
 *   WINDOW unacknowledged messages until every PUBACK is back (the hub's per-publish path: limits, the module ACL,
 *   routing). Ratio: SAS modules / X.509 modules — after CONNECT both are the same principal with the same ACL.
 *
 * The daemon runs in this process, beside the hub (one event loop for both): on a device they are two processes, so
 * the SAS connect figure is a lower bound. The load average at the end of the run is printed with the figures.
 */
const SOURCE = "issue 15 (SAS modules)";
const ROUNDS = 3;
const CONN_WORKERS = 4;
const CONN_PER_WORKER = 50;
const PUBLISHERS = 2;
const PER_PUBLISHER = 4000;
const WINDOW = 32;
const PAYLOAD_BYTES = 256;
const HOST = "edgetrust.local";
const DEVICE = "bench-sas-dev";
const TRUST_DOMAIN = "edgetrust.bench";
const ATT = { imageDigest: `sha256:${"5".repeat(64)}`, manifestVersion: 1 };
const EC = { name: "ECDSA", namedCurve: "P-256" } as const;

const sasName = (i: number) => `sas${i}`;
const x509Name = (i: number) => `x509m${i}`;

/** SAS granted to the sas* modules (x509 stays the default for the others); each module may send its own telemetry. */
const POLICY_YAML = `version: 1
mode: enforce
trust:
  trustRoot: trust-root.json
images:
  registries: ["127.0.0.1:5000"]
modules:
  allow: ["*"]
  overrides:
${[...Array(Math.max(CONN_WORKERS, PUBLISHERS)).keys()].map((i) => `    ${sasName(i)}: { auth: sas }\n`).join("")}hub:
  publish:
    - id: module-telemetry
      principals: [module]
      topics: ["devices/{device}/modules/{module}/messages/events/#"]
`;

const pem = (label: string, der: ArrayBuffer) => `-----BEGIN ${label}-----\n${Buffer.from(der).toString("base64").replace(/(.{64})/g, "$1\n").trimEnd()}\n-----END ${label}-----\n`;

/** Root → this device's Edge CA → the hub's server certificate and X.509 module certificates (bound to ATT). */
async function benchPki(moduleNames: string[]) {
  const subtle = webcrypto.subtle;
  const rootKeys = (await subtle.generateKey(EC, false, ["sign", "verify"])) as CryptoKeyPair;
  const root = await issueCertificate({ profile: "root-ca", subject: { commonName: "bench root" }, publicKey: rootKeys.publicKey, issuer: { signingKey: rootKeys.privateKey } });
  const edgeKeys = (await subtle.generateKey(EC, false, ["sign", "verify"])) as CryptoKeyPair;
  const edgeCa = await issueCertificate({
    profile: "edge-ca", subject: { commonName: `${DEVICE} Edge CA` }, identity: { trustDomain: TRUST_DOMAIN, deviceId: DEVICE, dnsNames: [DEVICE, "edgehub", "localhost"] },
    publicKey: edgeKeys.publicKey, issuer: { certificate: root, signingKey: rootKeys.privateKey },
  });
  const leafOf = async (make: (publicKey: CryptoKey) => Promise<Awaited<ReturnType<typeof issueCertificate>>>) => {
    const k = (await subtle.generateKey(EC, true, ["sign", "verify"])) as CryptoKeyPair;
    const cert = await make(k.publicKey);
    return { chainPem: [cert, edgeCa].map((c) => c.toString("pem")).join("\n"), keyPem: pem("PRIVATE KEY", await subtle.exportKey("pkcs8", k.privateKey)) };
  };
  const issuer = { certificate: edgeCa, signingKey: edgeKeys.privateKey };
  const server = await leafOf((publicKey) => issueCertificate({ profile: "edge-hub-server", subject: { commonName: "edgehub" }, identity: { hostName: DEVICE }, publicKey, issuer }));
  const modules = await Promise.all(moduleNames.map((name) => leafOf((publicKey) => issueCertificate({
    profile: "module", subject: { commonName: name }, identity: { trustDomain: TRUST_DOMAIN, deviceId: DEVICE, moduleId: name }, attestation: ATT, publicKey, issuer,
  }))));
  return { root, edgeCa, server, modules };
}

interface Who {
  clientId: string;
  cert?: string;
  key?: string;
  username?: string;
  password?: string;
}

async function timed(procs: LoadProcess[], ready: RegExp, finished: RegExp): Promise<number> {
  try {
    await Promise.all(procs.map((p) => p.line(ready)));
    const t0 = process.hrtime.bigint();
    for (const p of procs) p.go();
    await Promise.all(procs.map((p) => p.line(finished)));
    return Number(process.hrtime.bigint() - t0) / 1e9;
  } finally {
    for (const p of procs) if (p.proc.exitCode === null) p.proc.kill("SIGKILL");
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN;

export const hubSasBenchmark: Benchmark = {
  id: "hub-sas",
  description: "Edge hub: SAS-authenticated modules (token verified by the identity daemon, key in SoftHSM2) beside X.509 modules — connections/s and QoS 1 messages/s",
  async run(progress: Progress): Promise<BenchRow[]> {
    const dir = mkdtempSync(join(tmpdir(), "bench-hub-sas-"));
    const hsm = createSoftHsmDir();
    const log = createLogger("device-identity", { level: "silent" });
    let keys: Pkcs11KeyStore | undefined;
    let mgmt: { close(): Promise<void> } | undefined;
    let hub: EdgeHub | undefined;
    try {
      progress.step("SoftHSM token and the identity daemon's management socket (SAS keys, /v1/sas/verify)");
      initToken({ module: SOFTHSM_MODULE, label: "bench-sas", soPin: "so-bench-sas", userPin: "pin-bench-sas" });
      keys = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: "bench-sas", pin: "pin-bench-sas", logger: createLogger("hsm", { level: "silent" }) });
      const modules = new AttestedModules(join(dir, "attested.json"));
      const events = new ModuleEventLog(modules);
      const sas = new SasKeys({ deviceId: DEVICE, mac: keys.mac, modules, log });
      // The benchmark registers modules directly (no containers): the workload sockets are never opened.
      const sockets = new WorkloadSockets(join(dir, "modules"), modules, {
        issueModuleCertificate: () => Promise.reject(new Error("not in this benchmark")), trustBundle: () => [], checkCaller: () => Promise.resolve({ ok: false, reason: "not in this benchmark" }),
      }, log);
      const mgmtSocket = join(dir, "mgmt.sock");
      mgmt = await startManagementApi({ path: mgmtSocket, modules, sockets, events, sas, log, backend: { checkContainer: () => Promise.resolve({ ok: true }), status: () => ({ deviceId: DEVICE }) } });
      const nSas = Math.max(CONN_WORKERS, PUBLISHERS);
      const tokens: string[] = [];
      for (let i = 0; i < nSas; i++) {
        const m: AttestedModuleInput = {
          name: sasName(i), containerId: "c".repeat(64), imageRepository: "127.0.0.1:5000/bench", imageDigest: ATT.imageDigest, manifestVersion: ATT.manifestVersion,
          deploymentId: "bench", uid: 1000, gid: 1000, auth: "sas", generationId: `gen${String(i).padStart(8, "0")}`,
        };
        await sas.prepare(m);
        modules.register(m);
        // The token the SDK would hold: what the workload socket's sign route returns, built as the SDK builds it.
        const sr = encodeURIComponent(`${HOST}/devices/${DEVICE}/modules/${m.name}`);
        const se = Math.floor(Date.now() / 1000) + 3600;
        const sig = await sas.sign(m.name, m.generationId ?? "", Buffer.from(`${sr}\n${se}`));
        tokens.push(`SharedAccessSignature sr=${sr}&sig=${encodeURIComponent(sig.toString("base64"))}&se=${se}`);
      }

      progress.step("edge hub with the SAS verifier; X.509 module certificates");
      const pki = await benchPki([...Array(nSas).keys()].map(x509Name));
      const attestation = new MemoryAttestationSource();
      for (let i = 0; i < nSas; i++) {
        attestation.register(DEVICE, sasName(i), ATT);
        attestation.register(DEVICE, x509Name(i), ATT);
      }
      const hubLog = createLogger("edge-hub", { level: "silent" });
      mkdirSync(join(dir, "crl"));
      const crl = new CrlCache({ source: "", cacheDir: join(dir, "crl"), issuers: [], require: false, log: hubLog });
      await crl.start();
      hub = new EdgeHub({
        host: "127.0.0.1", port: 0, serverTls: () => ({ cert: pki.server.chainPem, key: pki.server.keyPem }), clientCa: [pki.root, pki.edgeCa].map((c) => c.toString("pem")),
        verifier: new ClientVerifier({ trustDomain: TRUST_DOMAIN, edgeCas: [pki.edgeCa], issuingCas: [], crl, attestation }),
        attestation, policy: parsePolicy(POLICY_YAML, "bench-policy.yaml"),
        limits: { maxPayloadBytes: 65536, maxTopicLevels: 16, allowRootWildcard: false },
        store: new HubStore(join(dir, "hub.db"), { maxMessages: 100_000, maxBytes: 1 << 26 }), routes: [], defaultRoute: { priority: 0, ttlSeconds: 3600 },
        sas: new ManagementClient(mgmtSocket), log: hubLog,
      });
      await hub.start();
      const port = hub.boundPort;
      const ca = pki.root.toString("pem");
      const certs = pki.modules;
      const sasWho = (i: number): Who => ({
        clientId: `${DEVICE}/${sasName(i)}`, username: `${HOST}/${DEVICE}/${sasName(i)}/?api-version=2020-09-30&DeviceClientType=azure-iot-device%2F1.18.4`, password: tokens[i] ?? "",
      });
      const x509Who = (i: number): Who => ({ clientId: `${DEVICE}/${x509Name(i)}`, cert: certs[i]?.chainPem ?? "", key: certs[i]?.keyPem ?? "" });
      let refused = 0;
      hub.on("rejected", () => (refused += 1));

      const conn: Record<"sas" | "x509", number[]> = { sas: [], x509: [] };
      const msgs: Record<"sas" | "x509", number[]> = { sas: [], x509: [] };
      for (let r = 0; r < ROUNDS; r++) {
        // Alternate which kind goes first, so neither always runs on a warmer process.
        const order: ("sas" | "x509")[] = r % 2 === 0 ? ["x509", "sas"] : ["sas", "x509"];
        for (const kind of order) {
          const who = kind === "sas" ? sasWho : x509Who;
          progress.step(`round ${r + 1}/${ROUNDS}: ${kind} connections (${CONN_WORKERS} × ${CONN_PER_WORKER})`);
          const wall = await timed([...Array(CONN_WORKERS).keys()].map((i) => loadProcess({ mode: "conn", port, ca, count: CONN_PER_WORKER, ...who(i) })), /^READY$/m, /^CONNECTED$/m);
          conn[kind].push((CONN_WORKERS * CONN_PER_WORKER) / wall);
        }
        for (const kind of order) {
          const who = kind === "sas" ? sasWho : x509Who;
          const name = kind === "sas" ? sasName : x509Name;
          progress.step(`round ${r + 1}/${ROUNDS}: ${kind} QoS 1 publishes (${PUBLISHERS} × ${PER_PUBLISHER})`);
          const wall = await timed([...Array(PUBLISHERS).keys()].map((i) => loadProcess({
            mode: "pub", port, ca, count: PER_PUBLISHER, window: WINDOW, size: PAYLOAD_BYTES, topic: `devices/${DEVICE}/modules/${name(i)}/messages/events/`, ...who(i),
          })), /^READY$/m, /^SENT$/m);
          msgs[kind].push((PUBLISHERS * PER_PUBLISHER) / wall);
        }
      }
      if (refused > 0) throw new Error(`the hub refused ${refused} connection(s) or publish(es) during the benchmark`);
      const load = loadavg().map((x) => x.toFixed(2)).join(" ");
      progress.step(`load average at the end: ${load}; connections/s sas ${conn.sas.map((x) => x.toFixed(0)).join(",")} x509 ${conn.x509.map((x) => x.toFixed(0)).join(",")}; msg/s sas ${msgs.sas.map((x) => x.toFixed(0)).join(",")} x509 ${msgs.x509.map((x) => x.toFixed(0)).join(",")}`);
      return [
        row({
          name: `SAS module connections/s through the hub (TLS + CONNECT, token verified in SoftHSM2 by the identity daemon; median of ${ROUNDS}; load ${load})`,
          value: median(conn.sas), unit: "conn/s", reference: { name: "X.509 module connections/s, same hub, same run", value: median(conn.x509) },
          target: 0.5, source: SOURCE,
        }),
        row({
          name: `QoS 1 messages/s from SAS modules through the hub (${PUBLISHERS} publishers, window ${WINDOW}, ${PAYLOAD_BYTES} B; median of ${ROUNDS})`,
          value: median(msgs.sas), unit: "msg/s", reference: { name: "QoS 1 messages/s from X.509 modules, same hub, same run", value: median(msgs.x509) },
          target: 0.9, source: SOURCE,
        }),
      ];
    } finally {
      await hub?.stop();
      await mgmt?.close();
      await keys?.close();
      hsm.cleanup();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
