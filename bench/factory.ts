import { generateKeyPairSync, randomBytes, sign, verify } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import * as x509 from "@peculiar/x509";
import { createLogger } from "../common/index.js";
import { SoftwareKeyStore } from "../hsm/index.js";
import { issueCertificateDer, verifyCsr, type Issuer } from "../pki/index.js";
import { CaStore, CertificateAuthority, initCa } from "../ca-service/index.js";
import { row, type Benchmark, type BenchRow, type Progress } from "./types.js";

/**
 * Issue 12's in-process rows: the crypto floor of one certificate (Node sign + verify of a P-256 TBSCertificate on
 * one core) measured in the same run, the certificate factory alone, CSR check + factory, and stored issuance
 * (`CertificateAuthority.issue` on SQLite, hash-chained audit entry included); Vault's published 2,200 certs/s as
 * context; and the memory check (RSS after N issuances within 10 % of after N/10).
 */

const SOURCE = "issue 12";
const SECONDS = Number(process.env.ET_BENCH_FACTORY_SECONDS ?? 3);
const MEMORY_N = Number(process.env.ET_BENCH_FACTORY_MEMORY_N ?? 100_000);
const quiet = () => createLogger("bench", { level: "warn", destination: new Writable({ write(_c, _e, cb) { cb(); } }) });

function rate(seconds: number, f: (i: number) => void): number {
  const end = performance.now() + seconds * 1000;
  const t0 = performance.now();
  let n = 0;
  while (performance.now() < end) for (let k = 0; k < 20; k++) f(n++);
  return n / ((performance.now() - t0) / 1000);
}

async function rateAsync(seconds: number, f: (i: number) => Promise<unknown>): Promise<number> {
  const end = performance.now() + seconds * 1000;
  const t0 = performance.now();
  let n = 0;
  while (performance.now() < end) await f(n++);
  return n / ((performance.now() - t0) / 1000);
}

async function csrPool(n: number): Promise<{ pem: string[]; spki: Buffer[] }> {
  const pem: string[] = [];
  const spki: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const keys = (await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"])) as CryptoKeyPair;
    const req = await x509.Pkcs10CertificateRequestGenerator.create({ name: "CN=bench", keys, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } });
    pem.push(req.toString("pem"));
    spki.push(Buffer.from(await crypto.subtle.exportKey("spki", keys.publicKey)));
  }
  return { pem, spki };
}

export const factoryBenchmark: Benchmark = {
  id: "factory",
  description: "certificate factory in-process: crypto floor (sign + verify), factory, CSR check + factory, stored issuance (SQLite), memory growth",
  async run(progress: Progress): Promise<BenchRow[]> {
    const rows: BenchRow[] = [];
    const dir = mkdtempSync(join(tmpdir(), "et-bench-factory-"));
    try {
      progress.step("512 P-256 CSRs (one key each)");
      const pool = await csrPool(512);

      progress.step(`crypto floor: Node sign + verify of a P-256 TBSCertificate, ${SECONDS}s`);
      const ca = generateKeyPairSync("ec", { namedCurve: "P-256" });
      const tbs = randomBytes(420);
      const sig = sign("sha256", tbs, { key: ca.privateKey, dsaEncoding: "der" });
      const floor = rate(SECONDS, () => {
        sign("sha256", tbs, { key: ca.privateKey, dsaEncoding: "der" });
        verify("sha256", tbs, { key: ca.publicKey, dsaEncoding: "der" }, sig);
      });
      const floorRef = { name: "crypto floor: Node P-256 sign + verify per certificate, 1 core (certs/s)", value: floor };
      rows.push(row({ name: "crypto floor (reference itself)", value: floor, unit: "certs/s", reference: floorRef, target: 1, source: SOURCE }));

      // A software issuing CA on Node keys (the factory's synchronous signer).
      const store = await SoftwareKeyStore.open({ dir: join(dir, "keys"), passphrase: randomBytes(8).toString("hex") });
      const db = await CaStore.open({ sqlitePath: join(dir, "ca.db") });
      try {
        const init = await initCa(db, store, { logger: quiet() });
        const authority = await CertificateAuthority.load(db, store, { trustDomain: "bench.edgetrust", publicBaseUrl: "http://127.0.0.1:8080", logger: quiet() });
        const cur = authority.current();
        const nodeKeys = (await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"])) as CryptoKeyPair;
        const issuer: Issuer = { certificate: cur.cert, signingKey: nodeKeys.privateKey };
        const params = (i: number) => ({
          profile: "device-identity" as const, subject: { commonName: `dev-${i}` }, identity: { trustDomain: "bench.edgetrust", deviceId: `dev-${i}` },
          publicKey: pool.spki[i % pool.spki.length] as Buffer, issuer, crlUrl: authority.crlUrl(cur.record.id), ocspUrl: authority.ocspUrl(),
        });

        progress.step(`factory alone (issueCertificateDer, Node key), ${SECONDS}s`);
        const factory = await rateAsync(SECONDS, (i) => issueCertificateDer(params(i)));
        rows.push(row({ name: "factory: build + sign one certificate (no CSR, no storage)", value: factory, unit: "certs/s", reference: floorRef, target: 0.5, source: SOURCE }));

        progress.step(`CSR check + factory, ${SECONDS}s`);
        const checked = await rateAsync(SECONDS, async (i) => {
          const v = await verifyCsr(pool.pem[i % pool.pem.length] as string, { profile: "device-identity" });
          return issueCertificateDer({ ...params(i), publicKey: v.spki });
        });
        rows.push(row({ name: "CSR check (proof of possession) + factory, in-process", value: checked, unit: "certs/s", reference: floorRef, target: 0.5, source: SOURCE }));

        progress.step(`stored issuance: CertificateAuthority.issue, SQLite, issuing key in the software key store, ${SECONDS}s`);
        await db.upsertEnrollment({ deviceId: "bench-dev", kind: "device", commonName: "bench-dev", dnsNames: [] }, "bench");
        const issue = (i: number) => authority.issue({ csrPem: pool.pem[i % pool.pem.length] as string, profile: "device-identity", deviceId: "bench-dev" }, "bench");
        const stored = await rateAsync(SECONDS, issue);
        rows.push(row({ name: "in-process issuance with storage (CSR check, factory, SQLite record + audit entry)", value: stored, unit: "certs/s", reference: floorRef, target: 0.5, source: SOURCE }));
        rows.push(row({ name: "(context) in-process issuance with storage vs Vault's published rate", value: stored, unit: "certs/s", reference: { name: "HashiCorp Vault PKI, published (stored certs/s)", value: 2200 }, target: 1, source: SOURCE }));

        progress.step(`memory: RSS after ${MEMORY_N} stored issuances vs after ${MEMORY_N / 10}`);
        let rssTenth = 0;
        for (let i = 0; i < MEMORY_N; i++) {
          await issue(i);
          if (i + 1 === MEMORY_N / 10) {
            global.gc?.();
            rssTenth = process.memoryUsage().rss;
          }
          if ((i + 1) % 10_000 === 0) progress.step(`  ${i + 1} issued, RSS ${(process.memoryUsage().rss / 1048576).toFixed(0)} MB`);
        }
        global.gc?.();
        const rssAll = process.memoryUsage().rss;
        rows.push(row({
          name: `RSS after ${MEMORY_N} issuances (MB; ratio = after ${MEMORY_N / 10} / after ${MEMORY_N})`, value: rssAll / 1048576, unit: "MB",
          reference: { name: `RSS after ${MEMORY_N / 10} issuances (MB)`, value: rssTenth / 1048576 }, target: 1 / 1.1, higherIsBetter: false, source: SOURCE,
        }));
        void init;
      } finally {
        await db.close();
        await store.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    return rows;
  },
};
