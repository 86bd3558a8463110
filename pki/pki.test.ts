import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SoftwareKeyStore, keyStoreCrypto, keyStoreCryptoKey } from "../hsm/index.js";
import { isEdgeTrustError } from "../common/index.js";
import { openssl, opensslVerify } from "../test/helpers/openssl.js";
import { OID_MODULE_ATTESTATION, moduleAttestationExtension } from "./attestation.js";
import { checkModuleDevice } from "./issue.js";
import {
  certificateIdentity, issueCertificate,
  parseModuleAttestation, refuseExtraSans, verifyCsr, type Issuer,
} from "./index.js";

const TD = "example.com";
const DIGEST = "sha256:" + "ab".repeat(32);
let dir: string;
let store: SoftwareKeyStore;
const shim = keyStoreCrypto();
const certs: Record<string, x509.X509Certificate> = {};
const issuers: Record<string, Issuer> = {};

function spki(kind: "ec256" | "ec384" | "rsa2048" | "rsa1024" = "ec256"): Buffer {
  const kp = kind === "ec256" ? generateKeyPairSync("ec", { namedCurve: "P-256" })
    : kind === "ec384" ? generateKeyPairSync("ec", { namedCurve: "P-384" })
      : generateKeyPairSync("rsa", { modulusLength: kind === "rsa2048" ? 2048 : 1024 });
  return kp.publicKey.export({ type: "spki", format: "der" });
}

function file(name: string, cert: x509.X509Certificate): string {
  const p = join(dir, name);
  writeFileSync(p, cert.toString("pem") + "\n");
  return p;
}

async function storeKey(label: string, alg: "EC-P256" | "EC-P384" | "RSA-3072"): Promise<{ key: CryptoKey; spki: Buffer }> {
  await store.generateKey(label, alg);
  return { key: await keyStoreCryptoKey(store, { label }), spki: (await store.getPublicKey({ label })).spki };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "edgetrust-pki-"));
  store = await SoftwareKeyStore.open({ dir: join(dir, "keys"), passphrase: "test-pass" });
  const root = await storeKey("root", "EC-P384");
  certs.root = await issueCertificate({
    profile: "root-ca", subject: { commonName: "edgetrust test root", organization: "edgetrust" },
    publicKey: root.spki, issuer: { signingKey: root.key, crypto: shim },
  });
  issuers.root = { certificate: certs.root, signingKey: root.key, crypto: shim };
  const issuing = await storeKey("issuing", "EC-P256");
  certs.issuing = await issueCertificate({
    profile: "issuing-ca", subject: { commonName: "edgetrust test issuing CA" }, publicKey: issuing.spki, issuer: issuers.root,
    crlUrl: "http://127.0.0.1:8443/crl/root.crl",
  });
  issuers.issuing = { certificate: certs.issuing, signingKey: issuing.key, crypto: shim };
  certs.device = await issueCertificate({
    profile: "device-identity", subject: { commonName: "dev1" }, identity: { trustDomain: TD, deviceId: "dev1" },
    publicKey: spki(), issuer: issuers.issuing, crlUrl: "http://127.0.0.1:8443/crl/issuing.crl", ocspUrl: "http://127.0.0.1:8443/ocsp",
  });
  const edge = await storeKey("edge", "EC-P256");
  certs.edgeCa = await issueCertificate({
    profile: "edge-ca", subject: { commonName: "dev1 Edge CA" }, identity: { trustDomain: TD, deviceId: "dev1", dnsNames: ["edgehub", "localhost", "dev1.local"] },
    publicKey: edge.spki, issuer: issuers.issuing,
  });
  issuers.edge = { certificate: certs.edgeCa, signingKey: edge.key, crypto: shim };
  certs.module = await issueCertificate({
    profile: "module", subject: { commonName: "tempSensor" }, identity: { trustDomain: TD, deviceId: "dev1", moduleId: "tempSensor" },
    attestation: { imageDigest: DIGEST, manifestVersion: 7, deploymentId: "dep-1" }, publicKey: spki(), issuer: issuers.edge,
  });
  certs.hub = await issueCertificate({
    profile: "edge-hub-server", subject: { commonName: "edgehub" }, identity: { hostName: "dev1.local" }, publicKey: spki("rsa2048"), issuer: issuers.edge,
  });
  certs.leaf = await issueCertificate({
    profile: "leaf-device", subject: { commonName: "leaf1" }, identity: { trustDomain: TD, deviceId: "leaf1" }, publicKey: spki("ec384"), issuer: issuers.issuing,
  });
  for (const [k, c] of Object.entries(certs)) file(`${k}.pem`, c);
});

afterAll(async () => {
  await store.close();
  rmSync(dir, { recursive: true, force: true });
});

describe("profiles verified by openssl", () => {
  it("root→issuing→device verifies -x509_strict as an SSL client", () => {
    const r = opensslVerify({ root: join(dir, "root.pem"), untrusted: [join(dir, "issuing.pem")], leaf: join(dir, "device.pem"), purpose: "sslclient" });
    expect(r.out).toContain("OK");
    expect(r.status).toBe(0);
    // not a server cert
    expect(opensslVerify({ root: join(dir, "root.pem"), untrusted: [join(dir, "issuing.pem")], leaf: join(dir, "device.pem"), purpose: "sslserver" }).status).not.toBe(0);
  });

  it("root→issuing→edge-ca→module and →edge hub server verify", () => {
    const untrusted = [join(dir, "issuing.pem"), join(dir, "edgeCa.pem")];
    expect(opensslVerify({ root: join(dir, "root.pem"), untrusted, leaf: join(dir, "module.pem"), purpose: "sslclient" }).status).toBe(0);
    const hub = opensslVerify({ root: join(dir, "root.pem"), untrusted, leaf: join(dir, "hub.pem"), purpose: "sslserver", extra: ["-verify_hostname", "edgehub"] });
    expect(hub.out).toContain("OK");
    expect(hub.status).toBe(0);
    expect(opensslVerify({ root: join(dir, "root.pem"), untrusted, leaf: join(dir, "hub.pem"), extra: ["-verify_hostname", "other.example"] }).status).not.toBe(0);
  });

  it("leaf device verifies under the issuing CA", () => {
    expect(opensslVerify({ root: join(dir, "root.pem"), untrusted: [join(dir, "issuing.pem")], leaf: join(dir, "leaf.pem"), purpose: "sslclient" }).status).toBe(0);
  });

  it("openssl -text shows the profile contents", () => {
    const text = (n: string): string => openssl(["x509", "-noout", "-text", "-in", join(dir, `${n}.pem`)]).out;
    const root = text("root");
    expect(root).toMatch(/Basic Constraints: critical\s+CA:TRUE\n/);
    expect(root).toMatch(/Key Usage: critical\s+Certificate Sign, CRL Sign/);
    expect(root).toContain("ecdsa-with-SHA384");
    expect(text("issuing")).toMatch(/CA:TRUE, pathlen:1/);
    expect(text("issuing")).toContain("URI:http://127.0.0.1:8443/crl/root.crl");
    const dev = text("device");
    expect(dev).toMatch(/CA:FALSE/);
    expect(dev).toContain("TLS Web Client Authentication");
    expect(dev).toContain("URI:edgetrust://example.com/devices/dev1");
    expect(dev).toContain("OCSP - URI:http://127.0.0.1:8443/ocsp");
    expect(dev).toContain("Subject Key Identifier");
    expect(dev).toContain("Authority Key Identifier");
    const edge = text("edgeCa");
    expect(edge).toMatch(/CA:TRUE, pathlen:0/);
    expect(edge).toMatch(/Name Constraints: critical\s+Permitted:\s+URI:example.com\s+DNS:edgehub\s+DNS:localhost\s+DNS:dev1.local/);
    const mod = text("module");
    expect(mod).toContain("URI:edgetrust://example.com/devices/dev1/modules/tempSensor");
    expect(mod).toContain(OID_MODULE_ATTESTATION + ":");
    expect(mod).not.toMatch(new RegExp(OID_MODULE_ATTESTATION.replace(/\./g, "\\.") + ": critical"));
    const hub = text("hub");
    expect(hub).toContain("TLS Web Server Authentication");
    expect(hub).toContain("DNS:edgehub, DNS:localhost, DNS:dev1.local");
  });

  it("serials are positive, 16 bytes, distinct", () => {
    const serials = Object.values(certs).map((c) => c.serialNumber);
    expect(new Set(serials).size).toBe(serials.length);
    for (const s of serials) {
      expect(s).toMatch(/^[0-9a-f]{32}$/);
      expect(parseInt(s.slice(0, 2), 16)).toBeGreaterThan(0);
      expect(parseInt(s.slice(0, 2), 16)).toBeLessThan(0x80);
    }
  });

  it("a certificate is usable for its whole lifetime from issuance: the clock-skew backdate of notBefore is not taken from it", async () => {
    // The shortest module lifetime the daemon allows (300 s) equals the 5-minute backdate: counted from notBefore, the
    // certificate was expired when issued and the hub refused the module (found by the renewal soak).
    const before = Date.now();
    const m = await issueCertificate({
      profile: "module", subject: { commonName: "shortLived" }, identity: { trustDomain: TD, deviceId: "dev1", moduleId: "shortLived" },
      attestation: { imageDigest: DIGEST, manifestVersion: 7, deploymentId: "dep-1" }, publicKey: spki(), issuer: issuers.edge!, lifetimeSeconds: 300,
    });
    expect(m.notBefore.getTime()).toBeLessThan(before - 60_000);
    expect(m.notAfter.getTime()).toBeGreaterThanOrEqual(before - 1000 + 300_000);
  });

  it("module lifetime is hours and never beyond the issuer", () => {
    const m = certs.module!;
    const hours = (m.notAfter.getTime() - m.notBefore.getTime()) / 3_600_000;
    expect(hours).toBeLessThanOrEqual(24);
    expect(m.notAfter.getTime()).toBeLessThanOrEqual(certs.edgeCa!.notAfter.getTime());
  });
});

describe("edge CA name constraints", () => {
  it("openssl rejects a module certificate whose URI host is another trust domain", async () => {
    // A misbehaving Edge CA signs a module for another trust domain (built with x509 directly: issueCertificate refuses).
    const kp = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const pub = new x509.PublicKey(kp.publicKey.export({ type: "spki", format: "der" }));
    const bad = await x509.X509CertificateGenerator.create({
      subject: "CN=evil", issuer: certs.edgeCa!.subjectName, notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 3_600_000),
      publicKey: pub, signingKey: issuers.edge!.signingKey, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension(["1.3.6.1.5.5.7.3.2"]),
        await x509.SubjectKeyIdentifierExtension.create(pub),
        new x509.AuthorityKeyIdentifierExtension(certs.edgeCa!.getExtension(x509.SubjectKeyIdentifierExtension)!.keyId),
        new x509.SubjectAlternativeNameExtension([{ type: "url", value: "edgetrust://other.example/devices/dev1/modules/m" }]),
        moduleAttestationExtension({ imageDigest: DIGEST, manifestVersion: 1 }),
      ],
    }, shim);
    const p = file("evil.pem", bad);
    const r = opensslVerify({ root: join(dir, "root.pem"), untrusted: [join(dir, "issuing.pem"), join(dir, "edgeCa.pem")], leaf: p });
    expect(r.status).not.toBe(0);
    expect(r.out).toMatch(/permitted subtree violation/);
  });

  it("openssl rejects any IP address SAN under an Edge CA (excluded 0.0.0.0/0 and ::/0)", async () => {
    const text = openssl(["x509", "-noout", "-text", "-in", join(dir, "edgeCa.pem")]).out;
    expect(text).toMatch(/Excluded:\s+IP:0.0.0.0\/0.0.0.0\s+IP:0:0:0:0:0:0:0:0\/0:0:0:0:0:0:0:0/);
    for (const ip of ["127.0.0.1", "::1"]) {
      const kp = generateKeyPairSync("ec", { namedCurve: "P-256" });
      const pub = new x509.PublicKey(kp.publicKey.export({ type: "spki", format: "der" }));
      const bad = await x509.X509CertificateGenerator.create({
        subject: "CN=edgehub", issuer: certs.edgeCa!.subjectName, notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 3_600_000),
        publicKey: pub, signingKey: issuers.edge!.signingKey, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
        extensions: [
          new x509.BasicConstraintsExtension(false, undefined, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
          await x509.SubjectKeyIdentifierExtension.create(pub),
          new x509.AuthorityKeyIdentifierExtension(certs.edgeCa!.getExtension(x509.SubjectKeyIdentifierExtension)!.keyId),
          new x509.SubjectAlternativeNameExtension([{ type: "dns", value: "edgehub" }, { type: "ip", value: ip }]),
        ],
      }, shim);
      const r = opensslVerify({ root: join(dir, "root.pem"), untrusted: [join(dir, "issuing.pem"), join(dir, "edgeCa.pem")], leaf: file(`ip-${ip}.pem`, bad) });
      expect(r.status).not.toBe(0);
      expect(r.out).toMatch(/excluded subtree violation/);
    }
  });

  it("issueCertificate refuses a module of another device under an Edge CA, and checkModuleDevice catches it", async () => {
    await expect(issueCertificate({
      profile: "module", subject: { commonName: "m" }, identity: { trustDomain: TD, deviceId: "dev2", moduleId: "m" },
      attestation: { imageDigest: DIGEST, manifestVersion: 1 }, publicKey: spki(), issuer: issuers.edge!,
    })).rejects.toMatchObject({ code: "PKI_PROFILE_VIOLATION" });
    expect(() => checkModuleDevice(certs.module!, certs.edgeCa!)).not.toThrow();
    expect(() => checkModuleDevice(certs.module!, certs.device!)).not.toThrow(); // same device URI
    expect(() => checkModuleDevice(certs.module!, certs.leaf!)).toThrow(/device leaf1/);
  });
});

describe("helpers", () => {
  it("parse the attestation extension and identities", () => {
    expect(parseModuleAttestation(certs.module!)).toEqual({ imageDigest: DIGEST, manifestVersion: 7, deploymentId: "dep-1" });
    expect(parseModuleAttestation(certs.device!)).toBeUndefined();
    expect(certificateIdentity(certs.module!)).toEqual({ trustDomain: TD, deviceId: "dev1", moduleId: "tempSensor" });
    expect(certificateIdentity(certs.device!)).toEqual({ trustDomain: TD, deviceId: "dev1" });
    expect(() => certificateIdentity(certs.root!)).toThrow();
  });

  it("profile inputs are enforced", async () => {
    await expect(issueCertificate({ profile: "module", subject: { commonName: "m" }, identity: { trustDomain: TD, deviceId: "dev1", moduleId: "m" }, publicKey: spki(), issuer: issuers.edge! }))
      .rejects.toMatchObject({ code: "PKI_PROFILE_VIOLATION" });
    await expect(issueCertificate({ profile: "device-identity", subject: { commonName: "d" }, identity: { trustDomain: TD, deviceId: "d" }, publicKey: spki("rsa1024"), issuer: issuers.issuing! }))
      .rejects.toMatchObject({ code: "PKI_PROFILE_VIOLATION" });
    await expect(issueCertificate({ profile: "device-identity", subject: { commonName: "d" }, identity: { trustDomain: "Bad_Domain", deviceId: "d" }, publicKey: spki(), issuer: issuers.issuing! }))
      .rejects.toMatchObject({ code: "INVALID_INPUT" });
    await expect(issueCertificate({ profile: "device-identity", subject: { commonName: "d" }, identity: { trustDomain: TD, deviceId: "d" }, publicKey: spki(), issuer: { signingKey: issuers.root!.signingKey, crypto: shim } }))
      .rejects.toMatchObject({ code: "PKI_PROFILE_VIOLATION" });
  });
});

describe("verifyCsr", () => {
  async function makeCsr(opts: { kind?: "ec256" | "rsa1024"; extensions?: x509.Extension[]; tamper?: boolean } = {}): Promise<string> {
    const alg = opts.kind === "rsa1024"
      ? { name: "RSASSA-PKCS1-v1_5", modulusLength: 1024, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" }
      : { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
    const keys = await globalThis.crypto.subtle.generateKey(alg, true, ["sign", "verify"]) as CryptoKeyPair;
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: "CN=m", keys, signingAlgorithm: alg, extensions: opts.extensions ?? [] });
    if (!opts.tamper) return csr.toString("pem");
    const der = new Uint8Array(csr.rawData);
    const i = Buffer.from(der).indexOf(Buffer.from("m"), 10); // flip a byte inside the signed CN
    der[i] = "n".charCodeAt(0);
    return x509.PemConverter.encode(der.buffer, "CERTIFICATE REQUEST");
  }

  it("accepts a good CSR and returns the SANs it asks for", async () => {
    const pem = await makeCsr({ extensions: [new x509.SubjectAlternativeNameExtension([{ type: "url", value: "edgetrust://example.com/devices/dev1/modules/m" }, { type: "dns", value: "extra.example" }])] });
    const v = await verifyCsr(pem, { profile: "module" });
    expect(v.keyAlgorithm).toBe("EC-P256");
    expect(v.sans.uri).toEqual(["edgetrust://example.com/devices/dev1/modules/m"]);
    expect(() => refuseExtraSans(v.sans, { uri: ["edgetrust://example.com/devices/dev1/modules/m"] })).toThrow(/dns:extra.example/);
    // and openssl agrees the signature is fine
    writeFileSync(join(dir, "good.csr"), pem);
    expect(openssl(["req", "-verify", "-noout", "-in", join(dir, "good.csr")]).status).toBe(0);
  });

  it("rejects a CSR asking for CA:TRUE", async () => {
    const pem = await makeCsr({ extensions: [new x509.BasicConstraintsExtension(true, 0, true)] });
    await expect(verifyCsr(pem)).rejects.toMatchObject({ code: "PKI_PROFILE_VIOLATION" });
  });

  it("rejects a bad signature", async () => {
    const pem = await makeCsr({ tamper: true });
    const err = await verifyCsr(pem).catch((e: unknown) => e);
    expect(isEdgeTrustError(err, "PKI_INVALID_CSR")).toBe(true);
  });

  it("rejects an unknown critical extension but tolerates an unknown non-critical one", async () => {
    const crit = await makeCsr({ extensions: [new x509.Extension("1.2.3.4.5", true, new Uint8Array([5, 0]))] });
    await expect(verifyCsr(crit)).rejects.toMatchObject({ code: "PKI_INVALID_CSR" });
    const nonCrit = await makeCsr({ extensions: [new x509.Extension("1.2.3.4.5", false, new Uint8Array([5, 0]))] });
    await expect(verifyCsr(nonCrit)).resolves.toMatchObject({ keyAlgorithm: "EC-P256" });
  });

  it("rejects a too-small RSA key and garbage", async () => {
    await expect(verifyCsr(await makeCsr({ kind: "rsa1024" }))).rejects.toMatchObject({ code: "PKI_PROFILE_VIOLATION" });
    await expect(verifyCsr("not a csr")).rejects.toMatchObject({ code: "PKI_INVALID_CSR" });
    await expect(verifyCsr(new Uint8Array([0x30, 0x03, 0x02, 0x01, 0x01]))).rejects.toMatchObject({ code: "PKI_INVALID_CSR" });
  });
});

describe("importSpki: the coordinate fast path for uncompressed P-256/P-384 keys", () => {
  it("imports the same key as the DER decoder, and refuses what the DER decoder refuses", async () => {
    const { importSpki } = await import("./keys.js");
    for (const namedCurve of ["P-256", "P-384"]) {
      const der = generateKeyPairSync("ec", { namedCurve }).publicKey.export({ format: "der", type: "spki" });
      expect(importSpki(der).export({ format: "der", type: "spki" }).equals(der)).toBe(true);
      // A point off the curve (last byte of y flipped) and a coordinate at or above the field prime (all 0xff).
      const offCurve = Buffer.from(der);
      offCurve[offCurve.length - 1] = (offCurve[offCurve.length - 1] ?? 0) ^ 1;
      const coordinate = namedCurve === "P-256" ? 32 : 48;
      const overPrime = Buffer.from(der);
      overPrime.fill(0xff, der.length - 2 * coordinate, der.length - coordinate);
      for (const bad of [offCurve, overPrime]) {
        expect(() => importSpki(bad)).toThrow(expect.objectContaining({ code: "PKI_PROFILE_VIOLATION" }));
      }
    }
    // A compressed point and RSA still go through the DER decoder.
    const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 }).publicKey.export({ format: "der", type: "spki" });
    expect(importSpki(rsa).asymmetricKeyDetails?.modulusLength).toBe(2048);
  });
});
