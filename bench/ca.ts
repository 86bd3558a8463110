import { execFile, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { Agent, request as httpsRequest } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { Writable } from "node:stream";
import { Value } from "@sinclair/typebox/value";
import { createLogger } from "../common/index.js";
import { Pkcs11KeyStore, SOFTHSM_MODULE, createSoftHsmDir, initToken } from "../hsm/index.js";
import { CaConfig, CaStore, CertificateAuthority, createCaServer, initCa } from "../ca-service/index.js";
import { row, type Benchmark, type BenchRow, type Progress } from "./types.js";

const execFileAsync = promisify(execFile);
const SOURCE = "issue 3 (ca-service)";
const ROUNDS = 4;
const ROUND_SECONDS = 1.5;
const CONCURRENCY = 4;
/**
 * Target: the service does far more per certificate than `openssl x509 -req` (HTTPS + JSON schema, token check,
 * CSR verification, enrollment lookup, signing through PKCS#11 (SoftHSM), one SQLite transaction with the audit
 * append), while openssl pays a process start per certificate (the reference the issue asks for: a script signing
 * in a loop). Measured on the 2 shared cores of the project machine: ~5x (105 vs 20 certs/s). We hold the service to
 * at least openssl's rate: a CA service slower than a shell loop around openssl would be a regression.
 */
const TARGET = 1;

const quiet = () => createLogger("ca-service", { level: "error", destination: new Writable({ write(_c, _e, cb) { cb(); } }) });

async function timed(seconds: number, worker: () => Promise<unknown>): Promise<{ ops: number; ms: number }> {
  const start = performance.now();
  const end = start + seconds * 1000;
  let ops = 0;
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (performance.now() < end) {
      await worker();
      ops++;
    }
  }));
  return { ops, ms: performance.now() - start };
}

export const caBenchmark: Benchmark = {
  id: "ca",
  description: "certificate issuance through ca-service (HTTPS, SoftHSM key, SQLite) vs openssl x509 -req on the same CSR",
  async run(progress: Progress): Promise<BenchRow[]> {
    const dir = mkdtempSync(join(tmpdir(), "et-bench-ca-"));
    const hsm = createSoftHsmDir();
    const pin = randomBytes(8).toString("hex");
    initToken({ module: SOFTHSM_MODULE, label: "bench-ca", soPin: randomBytes(8).toString("hex"), userPin: pin });
    const keys = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: "bench-ca", pin, logger: quiet() });
    const store = await CaStore.open({ sqlitePath: join(dir, "ca.db") });
    const config: CaConfig = { ...(Value.Default(CaConfig, {}) as CaConfig), port: 0, revocationPort: -1, rateLimitPerMinute: 1_000_000 };
    const agent = new Agent({ keepAlive: true, maxSockets: CONCURRENCY });
    let server: Awaited<ReturnType<typeof createCaServer>> | undefined;
    try {
      progress.step("initialising a CA on a SoftHSM token");
      const init = await initCa(store, keys, { logger: quiet() });
      const ca = await CertificateAuthority.load(store, keys, { trustDomain: config.trustDomain, publicBaseUrl: config.publicBaseUrl, logger: quiet() });
      server = await createCaServer(config, { ca, store, logger: quiet() });
      const { url } = await server.listen();
      await store.upsertEnrollment({ deviceId: "bench-dev", kind: "device", commonName: "bench-dev", dnsNames: [] }, "bench");

      // One CSR, signed by both.
      execFileSync("openssl", ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "dev.key"], { cwd: dir, stdio: "ignore" });
      execFileSync("openssl", ["req", "-new", "-key", "dev.key", "-subj", "/CN=bench-dev", "-out", "dev.csr"], { cwd: dir, stdio: "ignore" });
      const csr = readFileSync(join(dir, "dev.csr"), "utf8");
      // Reference CA for openssl: a P-256 key in a file, a self-signed CA cert, the same extensions as the profile.
      execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ref-ca.key", "-subj", "/CN=ref CA", "-days", "30", "-out", "ref-ca.pem"], { cwd: dir, stdio: "ignore" });
      writeFileSync(join(dir, "ext.cnf"), [
        "basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature", "extendedKeyUsage=clientAuth",
        "subjectKeyIdentifier=hash", "authorityKeyIdentifier=keyid", "subjectAltName=URI:edgetrust://edgetrust.local/devices/bench-dev",
        "crlDistributionPoints=URI:http://127.0.0.1:8080/v1/crl/x.crl", "authorityInfoAccess=OCSP;URI:http://127.0.0.1:8080/v1/ocsp", "",
      ].join("\n"));

      const body = Buffer.from(JSON.stringify({ csr, profile: "device-identity", deviceId: "bench-dev" }));
      const viaService = () => new Promise<void>((resolve, reject) => {
        const req = httpsRequest(`${url}/v1/certificates`, {
          method: "POST", agent, ca: init.root.certPem,
          headers: { authorization: `Bearer ${init.adminToken}`, "content-type": "application/json", "content-length": String(body.length) },
        }, (res) => {
          res.resume();
          res.on("end", () => (res.statusCode === 201 ? resolve() : reject(new Error(`issuance failed: HTTP ${res.statusCode}`))));
        });
        req.on("error", reject);
        req.end(body);
      });
      const viaOpenssl = () => execFileAsync("openssl", ["x509", "-req", "-in", "dev.csr", "-CA", "ref-ca.pem", "-CAkey", "ref-ca.key", "-set_serial", `0x${randomBytes(16).toString("hex").replace(/^[89a-f]/, "1")}`, "-days", "365", "-sha256", "-extfile", "ext.cnf", "-out", "/dev/null"], { cwd: dir });

      await viaService();
      await viaOpenssl();
      progress.step(`measuring ${ROUNDS} interleaved rounds of ${ROUND_SECONDS}s, ${CONCURRENCY} concurrent requests each`);
      const tot = { svc: { ops: 0, ms: 0 }, ref: { ops: 0, ms: 0 } };
      for (let i = 0; i < ROUNDS; i++) {
        const order: ["svc" | "ref", () => Promise<unknown>][] = i % 2 === 0 ? [["svc", viaService], ["ref", viaOpenssl]] : [["ref", viaOpenssl], ["svc", viaService]];
        for (const [k, f] of order) {
          const r = await timed(ROUND_SECONDS, f);
          tot[k].ops += r.ops;
          tot[k].ms += r.ms;
        }
      }
      const svc = tot.svc.ops / (tot.svc.ms / 1000);
      const ref = tot.ref.ops / (tot.ref.ms / 1000);
      return [row({
        name: `issuance via ca-service (HTTPS, SoftHSM, SQLite, audit), ${CONCURRENCY} concurrent`,
        value: svc, unit: "certs/s",
        reference: { name: `openssl x509 -req, ${CONCURRENCY} concurrent`, value: ref },
        target: TARGET, source: SOURCE,
      })];
    } finally {
      agent.destroy();
      await server?.close();
      await store.close();
      await keys.close();
      hsm.cleanup();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
