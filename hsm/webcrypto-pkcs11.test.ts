import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { issueCertificate, verifyCsr } from "../pki/index.js";
import { openssl } from "../test/helpers/openssl.js";
import * as x509 from "@peculiar/x509";
import { Pkcs11KeyStore } from "./pkcs11.js";
import { SOFTHSM_MODULE, createSoftHsmDir, initToken, type SoftHsmDir } from "./token-setup.js";
import type { KeyAlgorithm } from "./types.js";
import { keyStoreCrypto, keyStoreCryptoKey, keyStoreKeyPair } from "./webcrypto.js";

/** The WebCrypto shim over a real PKCS#11 token (SoftHSM2): keys that cannot leave the token sign X.509 objects. */
let hsm: SoftHsmDir;
let store: Pkcs11KeyStore;
const shim = keyStoreCrypto();

beforeAll(async () => {
  hsm = createSoftHsmDir();
  initToken({ module: SOFTHSM_MODULE, label: "shim-test", soPin: "so-1111", userPin: "user-2222" });
  store = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: "shim-test", pin: "user-2222" });
});
afterAll(async () => {
  await store.close();
  hsm.cleanup();
});

describe("WebCrypto shim over a PKCS#11 token", () => {
  it.each<KeyAlgorithm>(["EC-P256", "EC-P384", "RSA-3072"])("%s: a certificate signed by an HSM key verified by openssl verify", async (alg) => {
    const label = `root-${alg}`;
    const info = await store.generateKey(label, alg);
    expect(info.extractable).toBe(false);
    const signingKey = await keyStoreCryptoKey(store, { label });
    const root = await issueCertificate({
      profile: "root-ca", subject: { commonName: `HSM root ${alg}` }, publicKey: (await store.getPublicKey({ label })).spki,
      issuer: { signingKey, crypto: shim },
    });
    const device = await issueCertificate({
      profile: "device-identity", subject: { commonName: "dev1" }, identity: { trustDomain: "example.com", deviceId: "dev1" },
      publicKey: (await store.getPublicKey({ label })).spki, issuer: { certificate: root, signingKey, crypto: shim },
    });
    const rootFile = join(hsm.dir, `${label}.pem`);
    const devFile = join(hsm.dir, `${label}-dev.pem`);
    writeFileSync(rootFile, root.toString("pem"));
    writeFileSync(devFile, device.toString("pem"));
    const v = openssl(["verify", "-x509_strict", "-CAfile", rootFile, "-purpose", "sslclient", devFile]);
    expect(v.out).toContain("OK");
    expect(v.status).toBe(0);
  });

  it("a CSR signed by an HSM key verifies with openssl req -verify and verifyCsr", async () => {
    await store.generateKey("csr", "EC-P256");
    const keys = await keyStoreKeyPair(store, { label: "csr" });
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: "CN=dev1", keys, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } }, shim);
    const f = join(hsm.dir, "dev1.csr");
    writeFileSync(f, csr.toString("pem"));
    expect(openssl(["req", "-verify", "-noout", "-in", f]).status).toBe(0);
    await expect(verifyCsr(csr.toString("pem"))).resolves.toMatchObject({ keyAlgorithm: "EC-P256" });
  });
});
