import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createLogger } from "../common/index.js";
import { Pkcs11KeyStore } from "./pkcs11.js";
import { SOFTHSM_MODULE } from "./token-setup.js";
import type * as x509 from "@peculiar/x509";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { issueCertificate, type Issuer } from "../pki/index.js";
import { openssl } from "../test/helpers/openssl.js";
import { SoftwareKeyStore } from "./software.js";
import type { MtlsOutcome, MtlsSpec } from "../test/helpers/mtls.js";
import { DEFAULT_ENGINE, ENGINE_ID, defaultEngine, describeTlsKey, engineConfig, engineKeyIdentifier, tlsKeyOptions, type TlsKeyOptions } from "./tls.js";
import { keyStoreCrypto, keyStoreCryptoKey } from "./webcrypto.js";

/**
 * mTLS with both private keys in SoftHSM, through the OpenSSL pkcs11 engine. The token and keys are made with the
 * real tools (softhsm2-util, pkcs11-tool) in a token directory of this file's own (SOFTHSM2_CONF). The handshakes
 * run in a child process started with OPENSSL_CONF registering the engine (Node reads it only at start-up).
 */
const ROOT = resolve(import.meta.dirname, "..");
const MODULE = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN = "tls-test";
const PIN = "tls-user-1234";
let dir: string;
let root: x509.X509Certificate;
let rootIssuer: Issuer;
let soft: SoftwareKeyStore;
const certs: Record<string, string> = {};

function tool(cmd: string, args: string[]): { status: number; out: string } {
  const r = spawnSync(cmd, args, { encoding: "utf8", env: process.env });
  return { status: r.status ?? -1, out: `${r.stdout ?? ""}${r.stderr ?? ""}` };
}

function p11(args: string[]): { status: number; out: string } {
  return tool("pkcs11-tool", ["--module", MODULE, "--token-label", TOKEN, ...args]);
}

async function issueFor(label: string, id: string, profile: "edge-hub-server" | "device-identity"): Promise<void> {
  const pubFile = join(dir, `${label}.pub.der`);
  const r = p11(["--read-object", "--type", "pubkey", "--id", id, "-o", pubFile]);
  expect(r.status, r.out).toBe(0);
  const spki = openssl(["pkey", "-pubin", "-inform", "DER", "-in", pubFile, "-outform", "PEM"]).out;
  const cert = await issueCertificate({
    profile, subject: { commonName: label },
    identity: profile === "device-identity" ? { trustDomain: "example.com", deviceId: label } : { hostName: "hub.example.com" },
    publicKey: spki, issuer: rootIssuer,
  });
  certs[label] = cert.toString("pem");
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "edgetrust-tls-"));
  const tokenDir = join(dir, "tokens");
  tool("mkdir", [tokenDir]);
  const conf = join(dir, "softhsm2.conf");
  writeFileSync(conf, `directories.tokendir = ${tokenDir}\nobjectstore.backend = file\nlog.level = ERROR\n`);
  process.env.SOFTHSM2_CONF = conf;
  opensslConf = join(dir, "openssl-engine.cnf");
  writeFileSync(opensslConf, engineConfig({ module: MODULE })); // the engine loads SoftHSM directly, not p11-kit-proxy
  const init = tool("softhsm2-util", ["--init-token", "--free", "--label", TOKEN, "--so-pin", "so-5678", "--pin", PIN]);
  expect(init.status, init.out).toBe(0);
  for (const [label, id] of [["server", "01"], ["client", "02"]] as const) {
    const g = p11(["--login", "--pin", PIN, "--keypairgen", "--key-type", "EC:prime256v1", "--label", label, "--id", id]);
    expect(g.status, g.out).toBe(0);
  }
  soft = await SoftwareKeyStore.open({ dir: join(dir, "soft"), passphrase: "tls-test" });
  await soft.generateKey("root", "EC-P256");
  const shim = keyStoreCrypto();
  const rootKey = await keyStoreCryptoKey(soft, { label: "root" });
  root = await issueCertificate({
    profile: "root-ca", subject: { commonName: "tls test root" }, publicKey: (await soft.getPublicKey({ label: "root" })).spki,
    issuer: { signingKey: rootKey, crypto: shim },
  });
  rootIssuer = { certificate: root, signingKey: rootKey, crypto: shim };
  await issueFor("server", "01", "edge-hub-server");
  await issueFor("client", "02", "device-identity");
});

afterAll(async () => {
  await soft.close();
  rmSync(dir, { recursive: true, force: true });
});

let opensslConf: string;

function runChild(specs: MtlsSpec[], env: Record<string, string> = {}): { outcomes: MtlsOutcome[]; pkcs11jsSignature?: number; error?: string; stderr: string } {
  const r = spawnSync(process.execPath, ["--import", "tsx", join(ROOT, "test/helpers/mtls-child.ts")], {
    cwd: ROOT, encoding: "utf8", timeout: 60_000,
    env: { ...process.env, OPENSSL_CONF: opensslConf, MTLS_SPECS: JSON.stringify(specs), EDGETRUST_LOG_LEVEL: "error", ...env },
  });
  const line = r.stdout.trim().split("\n").pop() ?? "{}";
  return { ...(JSON.parse(line) as { outcomes: MtlsOutcome[] }), stderr: r.stderr };
}

function spec(serverKey: TlsKeyOptions, clientKey?: TlsKeyOptions): MtlsSpec {
  return {
    ca: root.toString("pem"), servername: "hub.example.com",
    server: { cert: certs.server ?? "", key: serverKey },
    ...(clientKey ? { client: { cert: certs.client ?? "", key: clientKey } } : {}),
  };
}

const quiet = createLogger("hsm", { level: "silent" });
const engineKey = (object: string, engine = ENGINE_ID): TlsKeyOptions => {
  const file = join(dir, "user.pin");
  writeFileSync(file, PIN, { mode: 0o600 });
  return { privateKeyEngine: engine, privateKeyIdentifier: engineKeyIdentifier(`pkcs11:token=${TOKEN};object=${object}`, { file }) };
};

describe("TLS key source with keys in SoftHSM", () => {
  it("mTLS handshake: server and client keys both in the token, data exchanged, peer certificates checked", () => {
    const r = runChild([spec(engineKey("server"), engineKey("client")), spec(engineKey("server"), undefined)]);
    expect(r.error, r.stderr).toBeUndefined();
    const [o, noCert] = r.outcomes;
    expect(o?.serverError).toBeUndefined();
    expect(o?.clientError).toBeUndefined();
    expect(o?.serverGot).toBe("ping");
    expect(o?.clientGot).toBe("pong client");
    expect(o?.peerAtServer?.cn).toBe("client");
    expect(o?.peerAtServer?.san).toBe("URI:edgetrust://example.com/devices/client");
    expect(o?.peerAtClient?.cn).toBe("server");
    expect(o?.peerAtClient?.san).toContain("DNS:hub.example.com");
    // the same server key refuses a client without a certificate
    expect(noCert?.serverGot).toBeUndefined();
    expect(noCert?.clientGot).toBeUndefined();
    expect(`${noCert?.serverError ?? ""} ${noCert?.clientError ?? ""}`).toMatch(/certificate/i);
  });

  it("works in the same process as pkcs11js using the same token", () => {
    const r = runChild([spec(engineKey("server"), engineKey("client"))], { MTLS_PKCS11: JSON.stringify({ module: MODULE, token: TOKEN, pin: PIN, label: "server" }) });
    expect(r.error, r.stderr).toBeUndefined();
    expect(r.pkcs11jsSignature).toBe(64);
    expect(r.outcomes[0]?.clientGot).toBe("pong client");
  });

  it("an engine .so path (no OPENSSL_CONF) backs only the first TLS context of a process, with a clear error after", () => {
    const r = runChild([spec(engineKey("server", DEFAULT_ENGINE), engineKey("client", DEFAULT_ENGINE))], { OPENSSL_CONF: "/dev/null", PKCS11_MODULE_PATH: MODULE });
    expect(r.error).toMatch(/HSM|engine/i);
    expect(r.error).not.toContain(PIN);
  });

  it("the private keys are not extractable", () => {
    // pkcs11-tool refuses to read a private key (it exits 0 but writes nothing) …
    const stolen = join(dir, "stolen.der");
    const read = p11(["--login", "--pin", PIN, "--read-object", "--type", "privkey", "--id", "01", "-o", stolen]);
    expect(existsSync(stolen), read.out).toBe(false);
    // … and the token says why: CKA_SENSITIVE and never CKA_EXTRACTABLE
    const list = p11(["--login", "--pin", PIN, "--list-objects", "--type", "privkey"]);
    expect(list.status).toBe(0);
    for (const label of ["server", "client"]) {
      const block = list.out.split("Private Key Object").find((b) => new RegExp(`label:\\s+${label}\\n`).test(b)) ?? "";
      expect(block).toMatch(/Access:.*\bsensitive\b.*never extractable/);
    }
  });

  it("the identifier never carries the PIN: the engine reads it from a private file (libp11 prints identifiers to stderr)", async () => {
    const store = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: TOKEN, pin: PIN, logger: quiet });
    try {
      const k = await tlsKeyOptions(store, { label: "server" }, { pin: PIN, tokenLabel: TOKEN });
      const id = "privateKeyIdentifier" in k ? k.privateKeyIdentifier : "";
      expect(id).not.toContain(PIN);
      const file = /pin-source=file:(\S+)$/.exec(id)?.[1] ?? "";
      expect(readFileSync(file, "utf8")).toBe(PIN);
      expect(statSync(file).mode & 0o777).toBe(0o600);
      expect(statSync(dirname(file)).mode & 0o777).toBe(0o700);
    } finally {
      await store.close();
    }
    // the key's own URI attributes are kept, its type/pin replaced
    expect(engineKeyIdentifier("pkcs11:token=a%20b;object=k;id=%01;type=public?pin-value=x", { file: "/run/p" })).toBe("pkcs11:token=a%20b;object=k;id=%01;type=private;pin-source=file:/run/p");
    expect(engineKeyIdentifier("pkcs11:object=k", { file: "/p" }, "tok en")).toBe("pkcs11:token=tok%20en;object=k;type=private;pin-source=file:/p");
  });

  it("the default engine is the registered id when OPENSSL_CONF registers it, else the .so path", () => {
    expect(defaultEngine({ OPENSSL_CONF: opensslConf })).toBe(ENGINE_ID);
    expect(defaultEngine({ OPENSSL_CONF: "/dev/null" })).toBe(DEFAULT_ENGINE);
    expect(defaultEngine({})).toBe(DEFAULT_ENGINE);
  });

  it("the software store gives { key: pem } (development)", async () => {
    const o = await tlsKeyOptions(soft, { label: "root" });
    expect("key" in o && o.key).toContain("BEGIN PRIVATE KEY");
    expect(describeTlsKey(o)).not.toContain("BEGIN");
  });
});
