import { execFileSync } from "node:child_process";
import { createPublicKey, verify } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../common/index.js";
import { Pkcs11KeyStore } from "./pkcs11.js";
import { TPM2_PKCS11_MODULE, initToken, startSwtpm, type Swtpm } from "./token-setup.js";
import { defaultScheme, type KeyAlgorithm } from "./types.js";

/** The same KeyStore on a software TPM 2.0: swtpm on loopback + Debian's tpm2-pkcs11, token made with C_InitToken. */
function swtpmMissing(): string | undefined {
  try {
    execFileSync("swtpm", ["--version"], { stdio: "ignore" });
  } catch {
    return "swtpm is not installed (Debian: swtpm swtpm-tools)";
  }
  if (!existsSync(TPM2_PKCS11_MODULE)) return `${TPM2_PKCS11_MODULE} is missing (Debian: libtpm2-pkcs11-1)`;
  return undefined;
}
const skipReason = swtpmMissing();
if (skipReason) console.warn(`hsm/tpm.test.ts skipped: ${skipReason}`);

const PIN = "tpm-user-pin-8841";
let dir: string;
let tpm: Swtpm;
let store: Pkcs11KeyStore;

describe.skipIf(skipReason !== undefined)("Pkcs11KeyStore on tpm2-pkcs11 + swtpm", () => {
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "edgetrust-tpm-"));
    tpm = await startSwtpm(dir);
    Object.assign(process.env, tpm.env);
    initToken({ module: TPM2_PKCS11_MODULE, label: "et-tpm", soPin: "tpm-so-pin-1", userPin: PIN });
    store = await Pkcs11KeyStore.open({ module: TPM2_PKCS11_MODULE, tokenLabel: "et-tpm", pin: PIN, sessionPoolSize: 2, logger: createLogger("hsm", { level: "warn" }) });
  });

  afterAll(async () => {
    await store?.close();
    await tpm?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  // swtpm has 3 transient object slots, there is no resource manager between it and tpm2-pkcs11, and tpm2-pkcs11
  // keeps a used key loaded until its sessions close: one key in use per open store, so each step reopens the store.
  it.each([["EC-P256"], ["RSA-2048"]] as [KeyAlgorithm][])("generates %s in the TPM and signs verifiably", async (alg) => {
    await store.close();
    store = await Pkcs11KeyStore.open({ module: TPM2_PKCS11_MODULE, tokenLabel: "et-tpm", pin: PIN, sessionPoolSize: 2, logger: createLogger("hsm", { level: "warn" }) });
    const info = await store.generateKey(`tpm-${alg}`, alg);
    expect(info).toMatchObject({ algorithm: alg, extractable: false, sensitive: true });
    const pub = await store.getPublicKey({ label: info.label });
    const data = Buffer.from("attested by a TPM");
    const scheme = defaultScheme(alg);
    const sig = await store.sign({ label: info.label }, scheme, data);
    const key = createPublicKey({ key: pub.spki, format: "der", type: "spki" });
    expect(scheme.name === "ECDSA" ? verify("sha256", data, { key, dsaEncoding: "ieee-p1363" }, sig) : verify("sha256", data, key, sig)).toBe(true);
  });

  it("lists the TPM keys and signs from concurrent callers", async () => {
    await store.close();
    store = await Pkcs11KeyStore.open({ module: TPM2_PKCS11_MODULE, tokenLabel: "et-tpm", pin: PIN, sessionPoolSize: 2, logger: createLogger("hsm", { level: "warn" }) });
    expect((await store.list()).map((k) => k.label)).toEqual(["tpm-EC-P256", "tpm-RSA-2048"]);
    const pub = createPublicKey({ key: (await store.getPublicKey({ label: "tpm-EC-P256" })).spki, format: "der", type: "spki" });
    const msgs = Array.from({ length: 10 }, (_, i) => Buffer.from(`tpm message ${i}`));
    const sigs = await Promise.all(msgs.map((m) => store.sign({ label: "tpm-EC-P256" }, defaultScheme("EC-P256"), m)));
    sigs.forEach((s, i) => expect(verify("sha256", msgs[i] as Buffer, { key: pub, dsaEncoding: "ieee-p1363" }, s)).toBe(true));
  });
});
