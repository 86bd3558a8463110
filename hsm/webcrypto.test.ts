import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openssl } from "../test/helpers/openssl.js";
import { SoftwareKeyStore } from "./software.js";
import type { KeyAlgorithm } from "./types.js";
import { isKeyStoreCryptoKey, keyStoreCrypto, keyStoreCryptoKey, keyStoreKeyPair, keyStorePublicCryptoKey } from "./webcrypto.js";

let dir: string;
let store: SoftwareKeyStore;
const shim = keyStoreCrypto();

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "edgetrust-shim-"));
  store = await SoftwareKeyStore.open({ dir: join(dir, "keys"), passphrase: "shim" });
});
afterAll(async () => {
  await store.close();
  rmSync(dir, { recursive: true, force: true });
});

describe("WebCrypto shim over a KeyStore", () => {
  it("gives a CryptoKey-shaped, non-extractable private key and a real public CryptoKey", async () => {
    await store.generateKey("shape", "EC-P256");
    const priv = await keyStoreCryptoKey(store, { label: "shape" });
    expect(priv).toMatchObject({ type: "private", extractable: false, usages: ["sign"], algorithm: { name: "ECDSA", namedCurve: "P-256" } });
    expect(x509.CryptoProvider.isCryptoKey(priv)).toBeTruthy();
    expect(isKeyStoreCryptoKey(priv)).toBe(true);
    expect(isKeyStoreCryptoKey({ ...priv })).toBe(false); // a look-alike is not ours
    await expect(shim.subtle.exportKey("pkcs8", priv)).rejects.toThrow(/not extractable/);
    const pub = await keyStorePublicCryptoKey(store, { label: "shape" });
    expect(pub.type).toBe("public");
    expect(pub instanceof globalThis.CryptoKey).toBe(true);
    // a WebCrypto signature made through the shim verifies with Node's WebCrypto (P1363 both sides)
    const data = new TextEncoder().encode("data");
    const sig = await shim.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, priv, data);
    expect(sig.byteLength).toBe(64);
    expect(await crypto.subtle.verify({ name: "ECDSA", hash: "SHA-256" }, pub, sig, data)).toBe(true);
    // everything else is Node's
    expect((await shim.subtle.digest("SHA-256", data)).byteLength).toBe(32);
    expect(shim.getRandomValues(new Uint8Array(8))).toHaveLength(8);
  });

  it.each<[KeyAlgorithm, string]>([["EC-P256", "ecdsa-with-SHA256"], ["EC-P384", "ecdsa-with-SHA384"], ["RSA-2048", "sha256WithRSAEncryption"]])(
    "%s: a certificate and a CSR signed through the shim verify with openssl", async (alg, sigAlg) => {
      const label = `ca-${alg}`;
      await store.generateKey(label, alg);
      const keys = await keyStoreKeyPair(store, { label });
      const hash = alg === "EC-P384" ? "SHA-384" : "SHA-256";
      const cert = await x509.X509CertificateGenerator.createSelfSigned({
        name: `CN=shim ${alg}`, keys, signingAlgorithm: { name: keys.privateKey.algorithm.name, hash },
        notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 86_400_000),
        extensions: [new x509.BasicConstraintsExtension(true, undefined, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true)],
      }, shim);
      const certFile = join(dir, `${label}.pem`);
      writeFileSync(certFile, cert.toString("pem"));
      const v = openssl(["verify", "-x509_strict", "-CAfile", certFile, certFile]);
      expect(v.out).toContain("OK");
      expect(v.status).toBe(0);
      expect(openssl(["x509", "-noout", "-text", "-in", certFile]).out).toContain(sigAlg);
      // ECDSA signatures must be DER ECDSA-Sig-Value in the certificate (openssl verify above proves it; check the shape too)
      if (alg.startsWith("EC-")) expect(new Uint8Array(cert.signature)[0]).toBe(0x30);
      expect(await cert.verify({ signatureOnly: true }, crypto)).toBe(true);

      const csr = await x509.Pkcs10CertificateRequestGenerator.create({
        name: `CN=csr ${alg}`, keys, signingAlgorithm: { name: keys.privateKey.algorithm.name, hash },
      }, shim);
      const csrFile = join(dir, `${label}.csr`);
      writeFileSync(csrFile, csr.toString("pem"));
      const r = openssl(["req", "-verify", "-noout", "-in", csrFile]);
      expect(r.out).toMatch(/verify OK|Certificate request self-signature verify OK/);
      expect(r.status).toBe(0);
    });

  // Note: @peculiar/x509's crl.toString("pem") labels it "BEGIN CRL", which openssl does not read: use "X509 CRL".
  it("signs a CRL through the shim", async () => {
    await store.generateKey("crl", "EC-P256");
    const keys = await keyStoreKeyPair(store, { label: "crl" });
    const ca = await x509.X509CertificateGenerator.createSelfSigned({
      name: "CN=crl ca", keys, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
      extensions: [new x509.BasicConstraintsExtension(true, undefined, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true)],
    }, shim);
    const crl = await x509.X509CrlGenerator.create({
      issuer: ca.subject, thisUpdate: new Date(), nextUpdate: new Date(Date.now() + 3_600_000),
      entries: [{ serialNumber: "0102", revocationDate: new Date(), reason: x509.X509CrlReason.keyCompromise }, { serialNumber: "0103", revocationDate: new Date() }], signingKey: keys.privateKey, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
    }, shim);
    writeFileSync(join(dir, "crlca.pem"), ca.toString("pem"));
    writeFileSync(join(dir, "ca.crl"), x509.PemConverter.encode(crl.rawData, "X509 CRL"));
    const r = openssl(["crl", "-noout", "-CAfile", join(dir, "crlca.pem"), "-in", join(dir, "ca.crl")]);
    expect(r.out).toContain("verify OK");
  });
});
