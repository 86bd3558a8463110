import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import * as jose from "jose";
import { SOFTHSM_MODULE } from "../hsm/index.js";
import { auditHash } from "./store.js";
import { softHsm, TEST_PIN, type SoftHsm } from "./test-helpers.js";
import { cliBundleArgs } from "../test/fixtures/cli-bundle.js";

/**
 * Issue 17: the audit chain could not detect a rewrite of its head and tail together. The attack: after a signed
 * checkpoint was taken (and kept outside the CA), an attacker with the database drops the append-only triggers,
 * edits an entry the checkpoint covers, recomputes every later hash and the head row. Plain `audit verify` passes —
 * the chain is self-consistent — and `audit verify --checkpoint` refuses it, naming the entry.
 */
const CLI = cliBundleArgs();
const ROOT = fileURLToPath(new URL("..", import.meta.url));

let hsm: SoftHsm;
let dir: string;
let cfg: string;

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [...CLI, "ca", ...args, "-c", cfg], {
      cwd: ROOT, env: { ...process.env, SOFTHSM2_CONF: hsm.conf, CA_TEST_PIN: TEST_PIN }, encoding: "utf8", timeout: 120_000,
    }, (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }));
  });
}

beforeAll(async () => {
  hsm = softHsm("et-ca-checkpoint");
  dir = mkdtempSync(join(tmpdir(), "et-ca-checkpoint-"));
  cfg = join(dir, "edgetrust.yaml");
  writeFileSync(cfg, [
    "log:", "  level: error",
    "hsm:", "  backend: pkcs11", `  module: ${SOFTHSM_MODULE}`, `  tokenLabel: ${hsm.tokenLabel}`, "  pinEnv: CA_TEST_PIN",
    "ca:", `  sqlitePath: ${join(dir, "ca.db")}`, "  trustDomain: checkpoint.edgetrust", "",
  ].join("\n"));
  expect((await cli(["init"])).code).toBe(0);
  for (const d of ["dev-a", "dev-b"]) expect((await cli(["enrollment", "set", d])).code).toBe(0);
}, 300_000);

afterAll(() => {
  hsm?.cleanup();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("signed audit checkpoints", () => {
  it("a checkpoint verifies against the untouched log, and later appends do not disturb it", async () => {
    const out = join(dir, "checkpoint.jws");
    const c = await cli(["audit", "checkpoint", "--out", out, "--json"]);
    expect(c.code, c.stderr).toBe(0);
    const cp = JSON.parse(c.stdout) as { seq: number; headHash: string; jws: string };
    expect(cp.seq).toBeGreaterThan(3);
    expect(readFileSync(out, "utf8").trim()).toBe(cp.jws);
    expect((await cli(["enrollment", "set", "dev-c"])).code).toBe(0);
    const v = await cli(["audit", "verify", "--checkpoint", out, "--json"]);
    expect(v.code, v.stderr).toBe(0);
    expect(JSON.parse(v.stdout)).toMatchObject({ ok: true, checkpoint: { seq: cp.seq, headHash: cp.headHash } });
  });

  it("the attack: head and tail rewritten together pass plain audit verify and fail --checkpoint", async () => {
    const out = join(dir, "checkpoint.jws");
    const cp = JSON.parse(Buffer.from(readFileSync(out, "utf8").split(".")[1] ?? "", "base64url").toString()) as { seq: number };
    const db = new Database(join(dir, "ca.db"));
    try {
      db.exec("DROP TRIGGER IF EXISTS audit_log_no_update; DROP TRIGGER IF EXISTS audit_log_no_delete;");
      const rows = db.prepare("SELECT * FROM audit_log WHERE seq >= ? ORDER BY seq").all(cp.seq - 1) as Record<string, string | number>[];
      let prev = String(rows[0]?.prev_hash);
      const update = db.prepare("UPDATE audit_log SET details = ?, prev_hash = ?, hash = ? WHERE seq = ?");
      for (const r of rows) {
        // Rewrite history: the entry before the checkpoint's head now says something else.
        const details = Number(r.seq) === cp.seq - 1 ? JSON.stringify({ rewritten: true }) : String(r.details);
        const h = auditHash(Number(r.seq), String(r.at), String(r.actor), String(r.action), String(r.target), details, prev);
        update.run(details, prev, h, r.seq);
        prev = h;
      }
      db.prepare("UPDATE audit_head SET hash = ? WHERE id = 1").run(prev);
    } finally {
      db.close();
    }
    const plain = await cli(["audit", "verify", "--json"]);
    expect(plain.code, "without a checkpoint the rewrite is invisible (the weakness the checkpoint closes)").toBe(0);
    const v = await cli(["audit", "verify", "--checkpoint", out]);
    expect(v.code).toBe(1);
    expect(v.stderr).toMatch(new RegExp(`entry ${cp.seq} hashes to .* the checkpoint of .* recorded`));
  });

  it("the attack: entries cut from the end and the head set back to match pass plain audit verify and fail --checkpoint", async () => {
    // A checkpoint of the log as it is now (self-consistent after the rewrite above), kept outside the CA.
    const out = join(dir, "checkpoint-tail.jws");
    const c = await cli(["audit", "checkpoint", "--out", out, "--json"]);
    expect(c.code, c.stderr).toBe(0);
    const cp = JSON.parse(c.stdout) as { seq: number };
    const db = new Database(join(dir, "ca.db"));
    try {
      db.exec("DROP TRIGGER IF EXISTS audit_log_no_update; DROP TRIGGER IF EXISTS audit_log_no_delete;");
      // Remove the last two entries (what the attacker wants forgotten) and point the head at the new last one.
      db.prepare("DELETE FROM audit_log WHERE seq > ?").run(cp.seq - 2);
      const last = db.prepare("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").get() as { seq: number; hash: string };
      expect(last.seq).toBe(cp.seq - 2);
      db.prepare("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1").run(last.seq, last.hash);
    } finally {
      db.close();
    }
    const plain = await cli(["audit", "verify", "--json"]);
    expect(plain.code, "without a checkpoint the cut is invisible").toBe(0);
    const v = await cli(["audit", "verify", "--checkpoint", out]);
    expect(v.code).toBe(1);
    expect(v.stderr).toMatch(new RegExp(`the log has ${cp.seq - 2} entries, fewer than the ${cp.seq} the checkpoint`));
  });

  it("a forged checkpoint (payload changed, or signed by another key) is refused", async () => {
    const jws = readFileSync(join(dir, "checkpoint.jws"), "utf8").trim();
    const [h, , s] = jws.split(".");
    const forged = join(dir, "forged.jws");
    writeFileSync(forged, `${h}.${Buffer.from(JSON.stringify({ seq: 1, headHash: "00", at: "x", issuerId: "y" })).toString("base64url")}.${s}`);
    const v = await cli(["audit", "verify", "--checkpoint", forged, "--json"]);
    expect(v.code).toBe(1);
    expect(String((JSON.parse(v.stdout) as { reason: string }).reason)).toMatch(/does not verify/);

    // The attacker's own key, under the real issuing CA's x5c (so the issuer lookup passes): the signature fails.
    const header = JSON.parse(Buffer.from(h ?? "", "base64url").toString()) as jose.CompactJWSHeaderParameters;
    const { privateKey } = await jose.generateKeyPair("ES256");
    const own = await new jose.CompactSign(Buffer.from(JSON.stringify({ seq: 1, headHash: "00", at: new Date().toISOString(), issuerId: "y" }))).setProtectedHeader({ ...header, alg: "ES256" }).sign(privateKey);
    writeFileSync(forged, own);
    const w = await cli(["audit", "verify", "--checkpoint", forged, "--json"]);
    expect(w.code).toBe(1);
    expect(String((JSON.parse(w.stdout) as { reason: string }).reason)).toMatch(/signature or payload does not verify/);

    // Its own certificate in x5c: not an issuing CA of this CA.
    writeFileSync(forged, await new jose.CompactSign(Buffer.from("{}")).setProtectedHeader({ ...header, alg: "ES256", x5c: ["MIIB"] }).sign(privateKey));
    const x = await cli(["audit", "verify", "--checkpoint", forged, "--json"]);
    expect(x.code).toBe(1);
    expect(String((JSON.parse(x.stdout) as { reason: string }).reason)).toMatch(/not signed by an issuing CA of this CA/);
  });
});
