import "reflect-metadata";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import * as x509 from "@peculiar/x509";
import { Value } from "@sinclair/typebox/value";
import mqtt, { type MqttClient } from "mqtt";
import { createLogger } from "../common/index.js";
import { Pkcs11KeyStore, SOFTHSM_MODULE, createSoftHsmDir, initToken } from "../hsm/index.js";
import { CaConfig, CaStore, CertificateAuthority, createCaServer, initCa, type CaServer } from "../ca-service/index.js";
import { ClientVerifier, CrlCache, DEFAULT_CRL_POLL_SECONDS, EdgeHub, HubStore, MemoryAttestationSource } from "../edge-hub/index.js";
import { testPolicy } from "../edge-hub/fixtures.js";
import { row, type Benchmark, type BenchRow, type Progress } from "./types.js";

const ROUNDS = 7;
const TRUST_DOMAIN = "bench.edgetrust";

const quiet = (name: string) => createLogger(name, { level: "error", destination: new Writable({ write(_c, _e, cb) { cb(); } }) });

/** A key pair, its CSR and the PKCS#8 PEM a client presents. */
async function csrFor(cn: string): Promise<{ csr: string; keyPem: string }> {
  const keys = (await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"])) as CryptoKeyPair;
  const csr = (await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=${cn}`, keys, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } })).toString("pem");
  const der = Buffer.from(await crypto.subtle.exportKey("pkcs8", keys.privateKey));
  return { csr, keyPem: `-----BEGIN PRIVATE KEY-----\n${der.toString("base64").replace(/(.{64})/g, "$1\n").trimEnd()}\n-----END PRIVATE KEY-----\n` };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

/**
 * Revocation → hub refusal, end to end with the real parts: a cloud CA (ca-service on a SoftHSM token, SQLite store)
 * serving its CRL on the revocation listener with an ETag; an edge hub whose CRL cache polls that URL with a
 * conditional GET every `crlRefreshSeconds` (the default); a leaf device (a `leaf-device` certificate from the CA)
 * connected over mTLS. The revocation is made through the CA at a random point of the poll cycle; the latency is
 * until the hub cuts the live session. The reference is the configured poll interval: the median should be about
 * half of it (a revocation lands anywhere in an interval).
 */
export const revocationBenchmark: Benchmark = {
  id: "revocation",
  description: "revoke at ca-service → edge hub cuts the revoked leaf's live session, default CRL poll (conditional GET), vs the configured interval",
  async run(progress: Progress): Promise<BenchRow[]> {
    const dir = mkdtempSync(join(tmpdir(), "et-bench-revocation-"));
    const hsmDir = createSoftHsmDir();
    const clients: MqttClient[] = [];
    let server: CaServer | undefined;
    let hub: EdgeHub | undefined;
    let crl: CrlCache | undefined;
    let keys: Pkcs11KeyStore | undefined;
    let store: CaStore | undefined;
    try {
      progress.step("cloud CA on SoftHSM, CRL on its revocation listener");
      const pin = randomBytes(8).toString("hex");
      initToken({ module: SOFTHSM_MODULE, label: "bench-revocation", soPin: randomBytes(8).toString("hex"), userPin: pin });
      keys = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: "bench-revocation", pin, logger: quiet("hsm") });
      store = await CaStore.open({ sqlitePath: join(dir, "ca.db") });
      const config: CaConfig = { ...(Value.Default(CaConfig, {}) as CaConfig), host: "127.0.0.1", port: 0, revocationPort: 0, trustDomain: TRUST_DOMAIN };
      const init = await initCa(store, keys, { logger: quiet("ca-service") });
      const ca = await CertificateAuthority.load(store, keys, { trustDomain: TRUST_DOMAIN, publicBaseUrl: config.publicBaseUrl, logger: quiet("ca-service") });
      server = await createCaServer(config, { ca, store, logger: quiet("ca-service") });
      const { revocationUrl } = await server.listen();
      const issuing = ca.current();
      const issuingCert = new x509.X509Certificate(issuing.record.certPem);
      const rootPem = init.root.certPem;

      progress.step("edge hub with its Edge CA and server certificate from the CA, polling the CRL at its default interval");
      await store.upsertEnrollment({ deviceId: "bench-gw", kind: "device", commonName: "bench-gw", dnsNames: ["localhost"] }, "bench");
      const hubKey = await csrFor("bench-gw");
      const hubCert = await ca.issue({ csrPem: hubKey.csr, profile: "edge-hub-server", deviceId: "bench-gw", hostName: "localhost" }, "bench");
      // The gateway's Edge CA, from the same CA: the hub's verifier reads its own device from it.
      const edgeCa = await ca.issue({ csrPem: (await csrFor("bench-gw Edge CA")).csr, profile: "edge-ca", deviceId: "bench-gw" }, "bench");
      const log = quiet("edge-hub");
      crl = new CrlCache({ source: `${revocationUrl}/v1/crl/${issuing.record.id}.crl`, cacheDir: join(dir, "crl"), issuers: [issuingCert], require: true, log, fetchTimeoutMs: 5000 });
      await crl.start();
      const attestation = new MemoryAttestationSource();
      hub = new EdgeHub({
        host: "127.0.0.1", port: 0,
        serverTls: () => ({ cert: hubCert.chainPem, key: hubKey.keyPem }),
        clientCa: [rootPem, issuing.record.certPem],
        verifier: new ClientVerifier({ trustDomain: TRUST_DOMAIN, edgeCas: [edgeCa.certificate], issuingCas: [issuingCert], crl, attestation }),
        attestation,
        // The hub tests' policy: its device-telemetry rule admits the bench's leaf devices (only connecting matters here).
        policy: testPolicy(),
        limits: { maxPayloadBytes: 64 * 1024, maxTopicLevels: 12, allowRootWildcard: false },
        store: new HubStore(join(dir, "hub.db"), { maxMessages: 1000, maxBytes: 1024 * 1024 }),
        routes: [], defaultRoute: { priority: 0, ttlSeconds: 3600 },
        crl, log,
      });
      await hub.start();
      const h = hub;
      crl.watch();

      const latencies: number[] = [];
      for (let i = 0; i < ROUNDS; i++) {
        const id = `bench-leaf${i}`;
        await store.upsertEnrollment({ deviceId: id, kind: "leaf", commonName: id, dnsNames: [] }, "bench");
        const k = await csrFor(id);
        const leaf = await ca.issue({ csrPem: k.csr, profile: "leaf-device", deviceId: id }, "bench");
        const c = mqtt.connect(`mqtts://127.0.0.1:${h.boundPort}`, { cert: leaf.chainPem, key: k.keyPem, ca: rootPem, servername: "localhost", reconnectPeriod: 0, protocolVersion: 4, clientId: id });
        clients.push(c);
        await new Promise<void>((resolve, reject) => { c.once("connect", () => resolve()); c.once("error", reject); });
        // Land the revocation at a random point of the poll cycle, as a real one would.
        await new Promise((r) => setTimeout(r, Math.random() * DEFAULT_CRL_POLL_SECONDS * 1000));
        const cut = new Promise<number>((r) => {
          const on = (x: { stage: string; identity?: string }) => {
            if (x.stage === "session" && x.identity === id) {
              h.off("rejected", on);
              r(performance.now());
            }
          };
          h.on("rejected", on);
        });
        const at = performance.now();
        await ca.revoke(leaf.record.serial, "keyCompromise", "bench");
        const ms = (await cut) - at;
        latencies.push(ms / 1000);
        progress.step(`revocation round ${i + 1}/${ROUNDS}: ${(ms / 1000).toFixed(2)} s`);
      }
      return [
        row({
          name: `revoke at ca-service → hub cuts the leaf's live session, median of ${ROUNDS} (default CRL poll, conditional GET)`,
          value: median(latencies), unit: "s", higherIsBetter: false,
          reference: { name: "configured poll interval (hub.crlRefreshSeconds default)", value: DEFAULT_CRL_POLL_SECONDS },
          target: 1, source: "issue 17",
        }),
      ];
    } finally {
      for (const c of clients) await c.endAsync(true).catch(() => undefined);
      crl?.unwatch();
      await hub?.stop();
      await server?.close();
      await store?.close();
      await keys?.close();
      hsmDir.cleanup();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
