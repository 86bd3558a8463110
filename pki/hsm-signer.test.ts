import { randomBytes } from "node:crypto";
import * as x509 from "@peculiar/x509";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../common/index.js";
import { Pkcs11KeyStore, SOFTHSM_MODULE, createSoftHsmDir, initToken, keyStoreCrypto, keyStoreCryptoKey, keyStorePublicCryptoKey, type KeyAlgorithm, type KeyStore, type SoftHsmDir } from "../hsm/index.js";
import { ecdsaSigValue } from "./issue.js";
import { issueCertificateDer, issueCertificate } from "./index.js";

/** @peculiar's conversion, which the factory used through the WebCrypto shim before: the reference for the bytes. */
const formatter = new x509.AsnEcSignatureFormatter();
function reference(p1363: Uint8Array, namedCurve: "P-256" | "P-384"): Uint8Array {
  return new Uint8Array(formatter.toAsnSignature({ name: "ECDSA", namedCurve, hash: { name: "SHA-256" } } as EcdsaParams & EcKeyAlgorithm, new Uint8Array(p1363)) as ArrayBuffer);
}

describe("ECDSA-Sig-Value from a token's r || s", () => {
  it("equals @peculiar's encoding byte for byte: random values, leading zeros, top bit set, one-byte values", () => {
    for (const [curve, n] of [["P-256", 32], ["P-384", 48]] as const) {
      const cases: Uint8Array[] = Array.from({ length: 500 }, () => randomBytes(2 * n));
      const edge = (r: number[], s: number[]): Uint8Array => Buffer.concat([Buffer.from(r.concat(Array(n - r.length).fill(7))), Buffer.from(s.concat(Array(n - s.length).fill(9)))]);
      cases.push(edge([0x80], [0x7f]), edge([0, 0, 0x80], [0, 0xff]), edge([0, 0, 0, 1], [0x00, 0x00, 0x00, 0x00, 0x80]));
      cases.push(Buffer.concat([Buffer.alloc(n - 1), Buffer.of(1), Buffer.alloc(n - 1), Buffer.of(0x80)]));
      for (const c of cases) expect(Buffer.from(ecdsaSigValue(c)).toString("hex")).toBe(Buffer.from(reference(c, curve)).toString("hex"));
    }
  });

  it("refuses a value that cannot be r || s", () => {
    expect(() => ecdsaSigValue(new Uint8Array(63))).toThrow(/not r \|\| s/);
    expect(() => ecdsaSigValue(new Uint8Array(0))).toThrow(/not r \|\| s/);
  });
});

describe("the issuance core signs with an HSM key through its KeyStore (SoftHSM2), not through the WebCrypto shim", () => {
  let hsm: SoftHsmDir;
  let store: Pkcs11KeyStore;
  beforeAll(async () => {
    hsm = createSoftHsmDir();
    initToken({ module: SOFTHSM_MODULE, label: "signer", soPin: "so-signer-1234", userPin: "signer-1234" });
    store = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: "signer", pin: "signer-1234", logger: createLogger("hsm-signer-test", { level: "silent" }) });
  });
  afterAll(async () => {
    await store?.close();
    hsm?.cleanup();
  });

  for (const algorithm of ["EC-P256", "EC-P384", "RSA-2048"] as KeyAlgorithm[]) {
    it(`${algorithm}: one store signature per certificate, the shim's sign never called, the certificate verifies under the CA key`, async () => {
      const label = `ca-${algorithm}`;
      await store.generateKey(label, algorithm);
      let signs = 0;
      // The same store, counting its signatures.
      const counting = new Proxy(store, {
        get: (t, p) => (p === "sign" ? (...a: Parameters<KeyStore["sign"]>) => { signs++; return t.sign(...a); } : Reflect.get(t, p, t)),
      }) as KeyStore;
      const shim = keyStoreCrypto();
      const keys = { privateKey: await keyStoreCryptoKey(counting, { label }), publicKey: await keyStorePublicCryptoKey(counting, { label }) };
      const hash = algorithm === "EC-P384" ? "SHA-384" : "SHA-256";
      const signingAlgorithm = algorithm.startsWith("EC") ? { name: "ECDSA", hash } : { name: "RSASSA-PKCS1-v1_5" };
      const caCert = await x509.X509CertificateGenerator.createSelfSigned({ name: "CN=hsm signer test CA", keys, signingAlgorithm, extensions: [new x509.BasicConstraintsExtension(true, 0, true)] }, shim);
      // A shim whose sign throws: the factory must not need it.
      const noShim: Crypto = { ...shim, subtle: { ...shim.subtle, sign: () => Promise.reject(new Error("the WebCrypto shim was used")) } as SubtleCrypto };
      const leaf = await globalThis.crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"]);
      signs = 0;
      for (let i = 0; i < 3; i++) {
        const cert = await issueCertificateDer({
          profile: "module", subject: { commonName: "m" }, identity: { trustDomain: "t.test", deviceId: "d", moduleId: "m" },
          attestation: { imageDigest: "sha256:" + "a".repeat(64), manifestVersion: 1, deploymentId: "dep" },
          publicKey: leaf.publicKey, issuer: { certificate: caCert, signingKey: keys.privateKey, crypto: noShim }, lifetimeSeconds: 600,
        });
        const parsed = new x509.X509Certificate(new Uint8Array(cert.der));
        expect(await parsed.verify({ publicKey: caCert.publicKey, signatureOnly: true })).toBe(true);
      }
      expect(signs).toBe(3);
      // The public API (x509 object) takes the same path.
      const viaObject = await issueCertificate({
        profile: "module", subject: { commonName: "m" }, identity: { trustDomain: "t.test", deviceId: "d", moduleId: "m" },
        attestation: { imageDigest: "sha256:" + "b".repeat(64), manifestVersion: 2, deploymentId: "dep" }, publicKey: leaf.publicKey, issuer: { certificate: caCert, signingKey: keys.privateKey, crypto: noShim }, lifetimeSeconds: 600 });
      expect(await viaObject.verify({ publicKey: caCert.publicKey, signatureOnly: true })).toBe(true);
      expect(signs).toBe(4);
    });
  }
});
