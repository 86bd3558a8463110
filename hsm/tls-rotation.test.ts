import "reflect-metadata";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../common/index.js";
import { Pkcs11KeyStore } from "./pkcs11.js";
import { SOFTHSM_MODULE, createSoftHsmDir, initToken } from "./token-setup.js";
import { currentKeyLabel, tlsCredentialsFromFile, tlsKeyFromSpec } from "./tls.js";

/**
 * A rotating device key alternates between `<label>` and `<label>.1` (device-identity rekey renewal). A consumer
 * configured with `hsm:<label>` must present the key of the certificate in force, whichever label holds it now.
 * Real SoftHSM token; certificates carry the token keys' public keys.
 */
const TOKEN = "tls-rotation";
const PIN = randomBytes(6).toString("hex");
let hsm: ReturnType<typeof createSoftHsmDir>;
let store: Pkcs11KeyStore;
let dir: string;
let pinFile: string;

async function certFor(label: string): Promise<string> {
  const spki = (await store.getPublicKey({ label })).spki;
  const signer = (await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"])) as CryptoKeyPair;
  const publicKey = await crypto.subtle.importKey("spki", new Uint8Array(spki), { name: "ECDSA", namedCurve: "P-256" }, true, ["verify"]);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: "01", subject: "CN=d1", issuer: "CN=test issuer", notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 3_600_000),
    publicKey, signingKey: signer.privateKey, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
  });
  return cert.toString("pem");
}

const cfg = () => ({ engine: "pkcs11", module: SOFTHSM_MODULE, pinFile, pinEnv: "EDGETRUST_TEST_NO_PIN_ENV", tokenLabel: TOKEN });

beforeAll(async () => {
  hsm = createSoftHsmDir();
  dir = mkdtempSync(join(tmpdir(), "et-tls-rotation-"));
  pinFile = join(dir, "pin");
  writeFileSync(pinFile, PIN, { mode: 0o600 });
  initToken({ module: SOFTHSM_MODULE, label: TOKEN, soPin: randomBytes(6).toString("hex"), userPin: PIN });
  store = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: TOKEN, pin: PIN, logger: createLogger("hsm", { level: "silent" }) });
  await store.generateKey("device-identity", "EC-P256");
});

afterAll(async () => {
  await store?.close();
  hsm?.cleanup();
  rmSync(dir, { recursive: true, force: true });
});

describe("TLS key source follows a rotated key", () => {
  it("picks <label> while its certificate is in force, <label>.1 after a rekey, and <label> again after the next", async () => {
    const first = await certFor("device-identity");
    expect(await currentKeyLabel(store, "device-identity", first)).toBe("device-identity");

    // Rekey renewal: the new key under the other label, the certificate for it, the old key erased.
    await store.generateKey("device-identity.1", "EC-P256");
    const second = await certFor("device-identity.1");
    await store.delete({ label: "device-identity" });
    expect(await currentKeyLabel(store, "device-identity", second)).toBe("device-identity.1");
    const opts = await tlsKeyFromSpec("hsm:device-identity", () => Promise.resolve(store), cfg(), second);
    expect("privateKeyIdentifier" in opts && opts.privateKeyIdentifier).toMatch(/;object=device-identity\.1;/);
    // Without the certificate the configured label is taken as is: the erased key (what consumers did before).
    const stale = await tlsKeyFromSpec("hsm:device-identity", () => Promise.resolve(store), cfg()).then(() => "ok", (e: Error) => e.message);
    expect(stale).not.toBe("ok");

    await store.generateKey("device-identity", "EC-P256");
    const third = await certFor("device-identity");
    await store.delete({ label: "device-identity.1" });
    expect(await currentKeyLabel(store, "device-identity.1", third)).toBe("device-identity");
  });

  it("follows a rekey made by another process: a label erased and made again there is looked up again here", async () => {
    // The hub's key store resolved device-identity at its first connect; the daemon (another store on the same token)
    // then rotated to .1 and back, erasing the key the hub had resolved and making a new one under its label.
    const hub = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: TOKEN, pin: PIN, logger: createLogger("hsm", { level: "silent" }) });
    try {
      await store.generateKey("proc-key", "EC-P256");
      const first = await certFor("proc-key");
      expect(await currentKeyLabel(hub, "proc-key", first)).toBe("proc-key");
      await store.generateKey("proc-key.1", "EC-P256");
      await store.delete({ label: "proc-key" });
      await store.generateKey("proc-key", "EC-P256");
      await store.delete({ label: "proc-key.1" });
      const renewed = await certFor("proc-key");
      expect(await currentKeyLabel(hub, "proc-key", renewed)).toBe("proc-key");
      expect((await hub.getPublicKey({ label: "proc-key" })).spki).toEqual((await store.getPublicKey({ label: "proc-key" })).spki);
    } finally {
      await hub.close();
    }
  });

  it("a read inside a rekey (certificate read before the switch, its key erased after) reads the certificate again", async () => {
    await store.generateKey("race-key", "EC-P256");
    const before = await certFor("race-key");
    await store.generateKey("race-key.1", "EC-P256");
    const after = await certFor("race-key.1");
    await store.delete({ label: "race-key" });
    const reads = [before, after];
    let n = 0;
    const got = await tlsCredentialsFromFile("hsm:race-key", () => reads[Math.min(n++, 1)] ?? "", () => Promise.resolve(store), cfg());
    expect(got.cert).toBe(after);
    expect("privateKeyIdentifier" in got && got.privateKeyIdentifier).toMatch(/;object=race-key\.1;/);
    // A certificate whose key is gone for good is still refused (one retry, not a loop).
    await expect(tlsCredentialsFromFile("hsm:race-key", () => before, () => Promise.resolve(store), cfg())).rejects.toMatchObject({ code: "HSM_KEY_NOT_FOUND" });
  });

  it("refuses a certificate whose key is in neither label, naming both", async () => {
    const foreign = (await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"])) as CryptoKeyPair;
    const cert = await x509.X509CertificateGenerator.createSelfSigned({ serialNumber: "02", name: "CN=other", keys: foreign, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } });
    await expect(currentKeyLabel(store, "device-identity", cert.toString("pem"))).rejects.toMatchObject({ code: "HSM_KEY_NOT_FOUND", message: expect.stringMatching(/device-identity nor device-identity\.1/) });
  });
});
