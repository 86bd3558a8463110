import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { request as httpsRequest } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import * as x509 from "@peculiar/x509";
import { SOFTHSM_MODULE } from "../hsm/index.js";
import { initCa } from "./init.js";
import { DATABASE_URL, PG_SKIP_REASON, announcePgSkip, pgStore, quietLogger, softHsm, TEST_PIN, uniqueSchema, type SoftHsm, type TestStore } from "./test-helpers.js";

const ENTRY = fileURLToPath(new URL("./testdata/cli-entry.ts", import.meta.url));
const ROOT = fileURLToPath(new URL("..", import.meta.url));
const PROCESSES = 3;
const DEVICES = 45;

function post(url: string, rootPem: string, token: string, body: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const payload = Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, { method: url.includes("/enrollments/") ? "PUT" : "POST", ca: rootPem, headers: { authorization: `Bearer ${token}`, "content-type": "application/json", "content-length": String(payload.length) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(Buffer.concat(chunks).toString() || "{}") as Record<string, unknown> }));
    });
    req.on("error", reject);
    req.end(payload);
  });
}

async function csrFor(cn: string): Promise<string> {
  const keys = (await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"])) as CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=${cn}`, keys, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } });
  return csr.toString("pem");
}

announcePgSkip("ca-service/scaleout.test.ts");
describe.skipIf(!DATABASE_URL)(`scale-out: ${PROCESSES} \`ca serve\` processes on one PostgreSQL${DATABASE_URL ? "" : ` (skipped: ${PG_SKIP_REASON})`}`, () => {
  let hsm: SoftHsm;
  let ts: TestStore;
  let dir: string;
  let rootPem: string;
  let token: string;
  const procs: ChildProcess[] = [];
  const urls: string[] = [];

  beforeAll(async () => {
    hsm = softHsm("et-ca-scale");
    const schema = uniqueSchema("et_scale");
    ts = await pgStore(schema);
    const keys = await hsm.open();
    const init = await initCa(ts.store, keys, { logger: quietLogger() });
    await keys.close();
    rootPem = init.root.certPem;
    token = init.adminToken;
    dir = mkdtempSync(join(tmpdir(), "et-ca-scale-"));
    const cfg = join(dir, "edgetrust.yaml");
    writeFileSync(cfg, [
      "log:", "  level: warn",
      "hsm:", "  backend: pkcs11", `  module: ${SOFTHSM_MODULE}`, `  tokenLabel: ${hsm.tokenLabel}`, "  pinEnv: CA_TEST_PIN",
      "ca:", "  host: 127.0.0.1", "  port: 0", "  revocationPort: -1", `  databaseUrl: ${DATABASE_URL}`, `  databaseSchema: ${schema}`,
      "  trustDomain: scale.edgetrust", "  rateLimitPerMinute: 100000", "",
    ].join("\n"));
    for (let i = 0; i < PROCESSES; i++) {
      const p = spawn(process.execPath, ["--import", "tsx", ENTRY, "ca", "serve", "-c", cfg], {
        cwd: ROOT, env: { ...process.env, SOFTHSM2_CONF: hsm.conf, CA_TEST_PIN: TEST_PIN }, stdio: ["ignore", "pipe", "pipe"],
      });
      procs.push(p);
      let err = "";
      p.stderr?.on("data", (c: Buffer) => { err += c.toString(); });
      urls.push(await new Promise<string>((resolve, reject) => {
        let out = "";
        p.stdout?.on("data", (c: Buffer) => {
          out += c.toString();
          const m = /"listening":"([^"]+)"/.exec(out);
          if (m?.[1]) resolve(m[1]);
        });
        p.on("exit", (code) => reject(new Error(`ca serve exited ${code}: ${err}`)));
      }));
    }
  }, 120_000);

  afterAll(async () => {
    for (const p of procs) if (p.exitCode === null) p.kill("SIGKILL");
    await ts?.cleanup();
    hsm?.cleanup();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("concurrent issuance and revocation across processes: no duplicate serial, nothing lost, one audit chain", async () => {
    const devices = Array.from({ length: DEVICES }, (_, i) => `scale-${i}`);
    await Promise.all(devices.map((d, i) => post(`${urls[i % PROCESSES]}/v1/admin/enrollments/${d}`, rootPem, token, { dnsNames: [] })));
    const csrs = await Promise.all(devices.map((d) => csrFor(d)));
    // Every process issues for every device (two certificates per device), all at once.
    const issued = await Promise.all(devices.flatMap((d, i) => [0, 1].map((k) =>
      post(`${urls[(i + k) % PROCESSES]}/v1/certificates`, rootPem, token, { csr: csrs[i], profile: "device-identity", deviceId: d }))));
    expect(issued.every((r) => r.status === 201)).toBe(true);
    const serials = issued.map((r) => String(r.json.serial));
    expect(new Set(serials).size).toBe(serials.length);
    // Revoke every second certificate, spread over the processes, concurrently.
    const toRevoke = serials.filter((_, i) => i % 2 === 0);
    const revoked = await Promise.all(toRevoke.map((s, i) => post(`${urls[i % PROCESSES]}/v1/certificates/${s}/revoke`, rootPem, token, { reason: "superseded" })));
    expect(revoked.every((r) => r.status === 200)).toBe(true);

    const recorded = await ts.store.listCertificates({ limit: 10_000 });
    const bySerial = new Set(recorded.map((r) => r.serial));
    for (const s of serials) expect(bySerial.has(s)).toBe(true);
    expect(recorded.filter((r) => r.profile === "device-identity")).toHaveLength(serials.length);
    expect((await ts.store.listCertificates({ status: "revoked", limit: 10_000 })).map((r) => r.serial).sort()).toEqual([...toRevoke].sort());

    const v = await ts.store.verifyAudit();
    expect(v.ok).toBe(true);
    const actions = (await ts.store.listAudit({ limit: 10_000 })).map((e) => e.action);
    expect(actions.filter((a) => a === "cert.issue")).toHaveLength(serials.length);
    expect(actions.filter((a) => a === "cert.revoke")).toHaveLength(toRevoke.length);

    // The CRL stored last holds every revocation (CRL numbers were taken under a lock).
    const issuer = (await ts.store.listCas("issuing"))[0]?.id ?? "";
    const crl = await ts.store.currentCrl(issuer);
    expect(crl?.crlNumber).toBe(toRevoke.length);
    const parsed = new x509.X509Crl(new Uint8Array(crl?.der ?? []));
    expect(parsed.entries.map((e) => e.serialNumber.replace(/^0+/, "").toLowerCase()).sort()).toEqual([...toRevoke].sort());
  });

  it("SIGTERM shuts every process down gracefully (exit 0)", async () => {
    const codes = await Promise.all(procs.map((p) => new Promise<number | null>((resolve) => { p.once("exit", (c) => resolve(c)); p.kill("SIGTERM"); })));
    expect(codes).toEqual(procs.map(() => 0));
  });
});
