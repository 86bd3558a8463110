import { spawnSync } from "node:child_process";
import { createPrivateKey } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openssl } from "../test/helpers/openssl.js";
import { DEV_HEADER, type DevPkiManifest } from "./generate.js";

/** `edgetrust certs-dev create` run as a user runs it (child process through cli/index.ts main(), via tsx). */
const ROOT = resolve(import.meta.dirname, "..");
const ENTRY = `const { main } = await import(${JSON.stringify(join(ROOT, "cli/index.ts"))}); process.exitCode = await main(["node", "edgetrust", ...process.argv.slice(1)]);`;

function run(...args: string[]): { code: number; stdout: string; stderr: string } {
  return runEnv({}, ...args);
}

function runEnv(env: Record<string, string>, ...args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", ENTRY, "--", ...args], {
    cwd: ROOT, env: { ...process.env, EDGETRUST_LOG_LEVEL: "error", ...env }, encoding: "utf8", timeout: 60_000,
  });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

let base: string;
let out: string;
let manifest: DevPkiManifest & { ok: boolean };
const f = (name: string): string => join(out, name);

beforeAll(() => {
  base = mkdtempSync(join(tmpdir(), "edgetrust-certs-dev-"));
  out = join(base, "pki");
  const r = run("certs-dev", "create", "--out", out, "--trust-domain", "example.com", "--device", "dev1", "--modules", "a,b", "--json");
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  manifest = JSON.parse(r.stdout) as DevPkiManifest & { ok: boolean };
});
afterAll(() => { rmSync(base, { recursive: true, force: true }); });

describe("edgetrust certs-dev create", () => {
  it("writes every certificate, key, chain and a manifest", () => {
    expect(manifest.ok).toBe(true);
    const paths = manifest.files.map((x) => x.path);
    for (const n of ["root-ca", "issuing-ca", "device-identity", "edge-ca", "edge-hub-server", "module-a", "module-b", "leaf-dev1-leaf1"]) {
      expect(paths).toContain(`${n}.cert.pem`);
      expect(paths).toContain(`${n}.key.pem`);
    }
    expect(paths).toContain("trust-bundle.pem");
    const onDisk = JSON.parse(readFileSync(f("manifest.json"), "utf8")) as DevPkiManifest;
    expect(onDisk.files).toEqual(manifest.files);
    expect(onDisk.keyBackend).toBe("software");
  });

  it("every PEM file starts with the development header and openssl/Node still read it", () => {
    for (const file of manifest.files) {
      const text = readFileSync(f(file.path), "utf8");
      expect(text.split("\n")[0]).toBe(DEV_HEADER);
      if (file.kind === "private-key") {
        expect(createPrivateKey(text).asymmetricKeyType).toBe("ec");
        expect(openssl(["pkey", "-noout", "-in", f(file.path)]).status).toBe(0);
      } else {
        expect(openssl(["x509", "-noout", "-in", f(file.path)]).status).toBe(0);
      }
    }
  });

  it("chains verify with openssl for the right purposes", () => {
    const verify = (leaf: string, untrusted: string[], purpose: string, extra: string[] = []): { status: number; out: string } =>
      openssl(["verify", "-x509_strict", "-CAfile", f("trust-bundle.pem"), ...untrusted.flatMap((u) => ["-untrusted", f(u)]), "-purpose", purpose, ...extra, f(leaf)]);
    expect(verify("device-identity.cert.pem", ["issuing-ca.cert.pem"], "sslclient").status).toBe(0);
    expect(verify("leaf-dev1-leaf1.cert.pem", ["issuing-ca.cert.pem"], "sslclient").status).toBe(0);
    for (const m of ["a", "b"]) expect(verify(`module-${m}.cert.pem`, ["issuing-ca.cert.pem", "edge-ca.cert.pem"], "sslclient").status).toBe(0);
    const hub = verify("edge-hub-server.cert.pem", ["ca-chain.pem"], "sslserver", ["-verify_hostname", "edgehub"]);
    expect(hub.out).toContain("OK");
    expect(hub.status).toBe(0);
    // the chain files carry the intermediates
    expect(verify("module-a.chain.pem", ["module-a.chain.pem"], "sslclient").status).toBe(0);
    // wrong purpose fails
    expect(verify("module-a.cert.pem", ["ca-chain.pem"], "sslserver").status).not.toBe(0);
    // a key matches its certificate
    const certPub = openssl(["x509", "-noout", "-pubkey", "-in", f("module-a.cert.pem")]).out;
    const keyPub = openssl(["pkey", "-pubout", "-in", f("module-a.key.pem")]).out;
    expect(certPub).toBe(keyPub);
  });

  it("the Edge CA carries name constraints for the trust domain and the device's names", () => {
    const text = openssl(["x509", "-noout", "-text", "-in", f("edge-ca.cert.pem")]).out;
    expect(text).toMatch(/Name Constraints: critical\s+Permitted:\s+URI:example.com\s+DNS:edgehub\s+DNS:localhost\s+DNS:dev1.local/);
    expect(text).toMatch(/CA:TRUE, pathlen:0/);
    expect(openssl(["x509", "-noout", "-text", "-in", f("module-a.cert.pem")]).out).toContain("URI:edgetrust://example.com/devices/dev1/modules/a");
  });

  it("refuses a non-empty directory unless --force", () => {
    const dir = join(base, "busy");
    mkdirSync(dir);
    writeFileSync(join(dir, "keep.txt"), "x");
    const r = run("certs-dev", "create", "--out", dir);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/not empty.*CONFLICT.*--force/);
    const forced = run("certs-dev", "create", "--out", dir, "--force", "--modules", "x");
    expect(forced.code).toBe(0);
    expect(forced.stdout).toContain("DEVELOPMENT");
  });

  it("--hsm-config keeps the CA, device and hub keys in a SoftHSM token and writes no key file for them", () => {
    const hsmDir = join(base, "softhsm");
    mkdirSync(join(hsmDir, "tokens"), { recursive: true });
    const conf = join(hsmDir, "softhsm2.conf");
    writeFileSync(conf, `directories.tokendir = ${join(hsmDir, "tokens")}\nobjectstore.backend = file\nlog.level = ERROR\n`);
    const init = spawnSync("softhsm2-util", ["--init-token", "--free", "--label", "certsdev", "--so-pin", "so-123456", "--pin", "user-123456"], {
      env: { ...process.env, SOFTHSM2_CONF: conf }, encoding: "utf8",
    });
    expect(init.status, init.stderr).toBe(0);
    const cfg = join(base, "edgetrust.yaml");
    writeFileSync(cfg, "hsm:\n  backend: pkcs11\n  module: /usr/lib/softhsm/libsofthsm2.so\n  tokenLabel: certsdev\n  pinEnv: CERTS_DEV_TEST_PIN\n");
    const dir = join(base, "hsm-pki");
    const r = runEnv({ SOFTHSM2_CONF: conf, CERTS_DEV_TEST_PIN: "user-123456" }, "certs-dev", "create", "--out", dir, "--hsm-config", cfg, "--json");
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const m = JSON.parse(r.stdout) as DevPkiManifest;
    expect(m.keyBackend).toBe("pkcs11");
    const paths = m.files.map((x) => x.path);
    for (const n of ["root-ca", "issuing-ca", "device-identity", "edge-ca", "edge-hub-server"]) {
      expect(paths).not.toContain(`${n}.key.pem`);
      expect(m.files.find((x) => x.path === `${n}.cert.pem`)?.keyUri).toMatch(new RegExp(`^pkcs11:token=certsdev;object=certs-dev-${n}`));
    }
    expect(paths).toContain("module-tempSensor.key.pem");
    const v = openssl(["verify", "-x509_strict", "-CAfile", join(dir, "trust-bundle.pem"), "-untrusted", join(dir, "ca-chain.pem"), "-purpose", "sslclient", join(dir, "module-tempSensor.cert.pem")]);
    expect(v.status, v.out).toBe(0);
    const listed = spawnSync("pkcs11-tool", ["--module", "/usr/lib/softhsm/libsofthsm2.so", "--token-label", "certsdev", "--login", "--pin", "user-123456", "--list-objects", "--type", "privkey"], {
      env: { ...process.env, SOFTHSM2_CONF: conf }, encoding: "utf8",
    });
    expect(listed.stdout).toContain("certs-dev-edge-ca");
  });
});
