import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { SOFTHSM_MODULE } from "../hsm/index.js";
import { openssl, softHsm, TEST_PIN, type SoftHsm } from "./test-helpers.js";
import { cliBundleArgs } from "../test/fixtures/cli-bundle.js";

const CLI = cliBundleArgs();
const ROOT = fileURLToPath(new URL("..", import.meta.url));

let hsm: SoftHsm;
let dir: string;
let cfg: string;

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [...CLI, "ca", ...args, "-c", cfg], {
      cwd: ROOT, env: { ...process.env, SOFTHSM2_CONF: hsm.conf, CA_TEST_PIN: TEST_PIN }, encoding: "utf8",
    }, (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }));
  });
}

beforeAll(() => {
  hsm = softHsm("et-ca-cli");
  dir = mkdtempSync(join(tmpdir(), "et-ca-cli-"));
  cfg = join(dir, "edgetrust.yaml");
  writeFileSync(cfg, [
    "log:", "  level: error",
    "hsm:", "  backend: pkcs11", `  module: ${SOFTHSM_MODULE}`, `  tokenLabel: ${hsm.tokenLabel}`, "  pinEnv: CA_TEST_PIN",
    "ca:", `  sqlitePath: ${join(dir, "ca.db")}`, "  trustDomain: cli.edgetrust", "",
  ].join("\n"));
});

afterAll(() => {
  hsm?.cleanup();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("edgetrust ca (CLI)", () => {
  it("init, enrollment set, issue, revoke, token create, audit verify; tampering makes audit verify fail", async () => {
    const init = await cli(["init", "--json", "--root-out", join(dir, "root.pem")]);
    expect(init.code, init.stderr).toBe(0);
    const j = JSON.parse(init.stdout) as { root: string; issuing: string; adminToken: string; keyStore: string };
    expect(j.keyStore).toBe("pkcs11");
    expect(j.adminToken).toMatch(/^et_/);
    const again = await cli(["init"]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/already initialised \(CONFLICT\)/);

    expect((await cli(["enrollment", "set", "cli-dev", "--dns", "cli-dev.local"])).code).toBe(0);
    openssl(dir, ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "d.key", "-subj", "/CN=x", "-out", "d.csr"]);
    const issued = await cli(["issue", "--device", "cli-dev", "--csr", join(dir, "d.csr"), "--out", join(dir, "chain.pem"), "--json"]);
    expect(issued.code, issued.stderr).toBe(0);
    const serial = (JSON.parse(issued.stdout) as { serial: string }).serial;
    expect(openssl(dir, ["verify", "-CAfile", "root.pem", "-untrusted", "chain.pem", "chain.pem"])).toMatch(/OK/);
    expect(readFileSync(join(dir, "chain.pem"), "utf8")).toContain("BEGIN CERTIFICATE");

    const rev = await cli(["revoke", serial, "--reason", "keyCompromise", "--json"]);
    expect(rev.code, rev.stderr).toBe(0);
    expect(JSON.parse(rev.stdout)).toMatchObject({ status: "revoked", reason: "keyCompromise" });
    const tok = await cli(["token", "create", "--name", "ops", "--role", "auditor", "--json"]);
    expect(JSON.parse(tok.stdout)).toMatchObject({ role: "auditor" });

    openssl(dir, ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ops.key", "-subj", "/CN=ops", "-days", "1", "-out", "ops.pem"]);
    const added = await cli(["admin-cert", "add", "--name", "ops-laptop", "--role", "admin", "--cert", join(dir, "ops.pem"), "--json"]);
    expect(added.code, added.stderr).toBe(0);
    const fp = openssl(dir, ["x509", "-in", "ops.pem", "-noout", "-fingerprint", "-sha256"]).split("=")[1]?.trim().replace(/:/g, "").toLowerCase();
    expect(JSON.parse(added.stdout)).toMatchObject({ role: "admin", fingerprint: fp });
    const notCert = await cli(["admin-cert", "add", "--name", "x", "--cert", join(dir, "ops.key")]);
    expect(notCert.code).toBe(1);
    expect(notCert.stderr).toMatch(/ops\.key is not a PEM certificate: .*\(INVALID_INPUT\)$/m);

    const ok = await cli(["audit", "verify", "--json"]);
    expect(ok.code).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ ok: true });

    // An attacker with write access to the database file edits one entry.
    const db = new Database(join(dir, "ca.db"));
    db.exec("DROP TRIGGER audit_log_no_update");
    db.prepare("UPDATE audit_log SET actor = 'nobody' WHERE seq = 2").run();
    db.close();
    const bad = await cli(["audit", "verify"]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/audit chain broken at entry 2/);
    const badJson = await cli(["audit", "verify", "--json"]);
    expect(badJson.code).toBe(1);
    expect(JSON.parse(badJson.stdout)).toMatchObject({ ok: false, problem: { seq: 2 } });
  }, 180_000); // a dozen CLI processes, one after another: each takes seconds to start on a loaded machine
});
