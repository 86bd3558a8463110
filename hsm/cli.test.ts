import { spawnSync } from "node:child_process";
import { createPublicKey } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createSoftHsmDir, type SoftHsmDir } from "./token-setup.js";
import { cliBundleArgs } from "../test/fixtures/cli-bundle.js";

/**
 * `edgetrust hsm ...` as a user runs it: a child process running the current sources (bundled by cliBundleArgs, so the
 * test does not depend on a fresh dist/ build), against a SoftHSM token directory of this file's own.
 */
const ROOT = resolve(import.meta.dirname, "..");
const CLI = cliBundleArgs();

let hsm: SoftHsmDir;
let pinFile: string;
let wrongPinFile: string;
let soPinFile: string;
const PIN = "cli-user-pin-31337";

function run(...args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [...CLI, ...args], {
    cwd: ROOT,
    env: { ...process.env, SOFTHSM2_CONF: hsm.conf, EDGETRUST_LOG_LEVEL: "warn", EDGETRUST_HSM_PIN: "" },
    encoding: "utf8",
    timeout: 60_000,
  });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

beforeAll(() => {
  hsm = createSoftHsmDir({ activate: false });
  pinFile = join(hsm.dir, "user.pin");
  wrongPinFile = join(hsm.dir, "wrong.pin");
  soPinFile = join(hsm.dir, "so.pin");
  writeFileSync(pinFile, PIN + "\n", { mode: 0o600 });
  writeFileSync(wrongPinFile, "not-the-pin\n", { mode: 0o600 });
  writeFileSync(soPinFile, "cli-so-pin-4242\n", { mode: 0o600 });
});

afterAll(() => hsm?.cleanup());

describe("edgetrust hsm", () => {
  it("--help lists the verbs", () => {
    const r = run("hsm", "--help");
    expect(r.code).toBe(0);
    for (const verb of ["init", "keygen", "list", "pubkey", "delete", "doctor"]) expect(r.stdout).toContain(verb);
  });

  it("init, keygen, list, pubkey, doctor, delete on a fresh token", () => {
    const tok = ["--token", "cli-tok", "--pin-file", pinFile];
    expect(run("hsm", "init", ...tok, "--so-pin-file", soPinFile).code).toBe(0);

    const kg = run("hsm", "keygen", "device", "--alg", "EC-P256", "--json", ...tok);
    expect(kg.code, kg.stderr).toBe(0);
    const info = JSON.parse(kg.stdout) as { uri: string; id: string; extractable: boolean };
    expect(info.extractable).toBe(false);
    expect(info.uri).toMatch(/^pkcs11:token=cli-tok;object=device;id=/);

    const list = run("hsm", "list", "--json", ...tok);
    expect(list.code).toBe(0);
    expect((JSON.parse(list.stdout) as { keys: { label: string }[] }).keys.map((k) => k.label)).toEqual(["device"]);

    // a pkcs11: URI names the token and key on its own
    const pub = run("hsm", "pubkey", info.uri, "--pin-file", pinFile);
    expect(pub.code, pub.stderr).toBe(0);
    expect(createPublicKey(pub.stdout).asymmetricKeyDetails?.namedCurve).toBe("prime256v1");

    const doc = run("hsm", "doctor", "--key", "device", ...tok);
    expect(doc.code, doc.stdout + doc.stderr).toBe(0);
    expect(doc.stdout.split("\n").filter((l) => l.startsWith("ok "))).toHaveLength(5);

    expect(run("hsm", "delete", `id:${info.id}`, ...tok).code).toBe(0);
    expect(JSON.parse(run("hsm", "list", "--json", ...tok).stdout)).toEqual({ token: "cli-tok", keys: [] });
  });

  it("doctor stops at the first failed check with one sentence saying what to do", () => {
    const badPin = run("hsm", "doctor", "--token", "cli-tok", "--pin-file", wrongPinFile);
    expect(badPin.code).toBe(1);
    expect(badPin.stdout).toMatch(/^ok {4}module/m);
    expect(badPin.stdout).toMatch(/^ok {4}token/m);
    expect(badPin.stdout).toMatch(/^FAIL {2}pin .*HSM_PIN_INCORRECT/m);
    expect(badPin.stdout).not.toMatch(/mechanisms/);
    expect(badPin.stdout + badPin.stderr).not.toContain("not-the-pin");

    const noModule = run("hsm", "doctor", "--module", "/opt/none/libpkcs11.so", "--json");
    expect(noModule.code).toBe(1);
    const res = JSON.parse(noModule.stdout) as { ok: boolean; checks: { name: string; ok: boolean; code: string; fix: string }[] };
    expect(res.ok).toBe(false);
    expect(res.checks).toEqual([expect.objectContaining({ name: "module", ok: false, code: "HSM_MODULE_NOT_FOUND" })]);

    const noToken = run("hsm", "doctor", "--token", "missing-tok", "--pin-file", pinFile);
    expect(noToken.code).toBe(1);
    expect(noToken.stdout).toContain('tokens present: "cli-tok"');

    const noPin = run("hsm", "doctor", "--token", "cli-tok");
    expect(noPin.code).toBe(1);
    expect(noPin.stdout).toMatch(/FAIL {2}pin .*HSM_PIN_MISSING/);
  });

  it("fails with a one-line reason and a non-zero exit", () => {
    const r = run("hsm", "keygen", "k", "--token", "cli-tok", "--pin-file", pinFile, "--alg", "EC-P256", "--module", "/usr/lib/none.so");
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toMatch(/^edgetrust: PKCS#11 module \/usr\/lib\/none.so does not exist \(HSM_MODULE_NOT_FOUND\): /);

    const missingKey = run("hsm", "pubkey", "nope", "--token", "cli-tok", "--pin-file", pinFile, "--json");
    expect(missingKey.code).toBe(1);
    expect(JSON.parse(missingKey.stdout)).toMatchObject({ ok: false, code: "HSM_KEY_NOT_FOUND" });
  });
});
