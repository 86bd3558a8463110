import { spawnSync } from "node:child_process";
import { createPublicKey, generateKeyPairSync, verify as nodeVerify } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AsnConvert } from "@peculiar/asn1-schema";
import { Certificate as AsnCertificate } from "@peculiar/asn1-x509";
import * as x509 from "@peculiar/x509";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SoftwareKeyStore, keyStoreCrypto, keyStoreCryptoKey } from "../hsm/index.js";
import { opensslVerify } from "../test/helpers/openssl.js";
import { issueCertificateReference } from "./issue-reference.js";
import { certificatePem } from "./issue.js";
import { issueCertificateDer, parseModuleAttestation, randomSerial, type Issuer } from "./index.js";
import type { IssueParams } from "./issue.js";

/**
 * Byte-level proof of the certificate factory: for every profile, a certificate made from the template
 * (`issueCertificateDer`) and the same certificate made the slow way (`issueCertificateReference`: @peculiar/x509's
 * generator, field by field) are decoded and every field compared, and the TBSCertificate bytes are equal. Each
 * profile's certificate then passes `openssl verify -x509_strict` and GnuTLS `certtool --verify-chain`.
 */

const TD = "example.com";
const DIGEST = "sha256:" + "cd".repeat(32);
let dir: string;
let store: SoftwareKeyStore;
const shim = keyStoreCrypto();
const made: Record<string, { fast: Uint8Array; slow: Uint8Array; issuerSpki: Buffer }> = {};
const chains: Record<string, string[]> = {};
let edgeIssuerForModules: Issuer | undefined;

function spki(kind: "ec256" | "ec384" | "rsa2048"): Buffer {
  const kp = kind === "rsa2048" ? generateKeyPairSync("rsa", { modulusLength: 2048 }) : generateKeyPairSync("ec", { namedCurve: kind === "ec256" ? "P-256" : "P-384" });
  return kp.publicKey.export({ type: "spki", format: "der" });
}

/** Both ways with the same serial, time and key; returns the factory's certificate. */
async function both(name: string, params: IssueParams, issuerSpki: Buffer): Promise<x509.X509Certificate> {
  const fixed = { ...params, serial: randomSerial(), notBefore: new Date(Math.floor(Date.now() / 1000) * 1000 - 300e3) };
  const fast = (await issueCertificateDer(fixed)).der;
  const slow = new Uint8Array((await issueCertificateReference(fixed)).rawData);
  made[name] = { fast, slow, issuerSpki };
  return new x509.X509Certificate(new Uint8Array(fast));
}

function write(name: string, certs: x509.X509Certificate[]): string[] {
  return certs.map((c, i) => {
    const p = join(dir, `${name}-${i}.pem`);
    writeFileSync(p, c.toString("pem") + "\n");
    return p;
  });
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "edgetrust-factory-"));
  store = await SoftwareKeyStore.open({ dir: join(dir, "keys"), passphrase: "test-pass" });
  const key = async (label: string, alg: "EC-P256" | "EC-P384" | "RSA-3072") => {
    await store.generateKey(label, alg);
    return { key: await keyStoreCryptoKey(store, { label }), spki: (await store.getPublicKey({ label })).spki };
  };
  const rootK = await key("root", "EC-P384");
  const root = await both("root-ca", { profile: "root-ca", subject: { commonName: "factory root", organization: "edgetrust" }, publicKey: rootK.spki, issuer: { signingKey: rootK.key, crypto: shim } }, rootK.spki);
  const rootIssuer: Issuer = { certificate: root, signingKey: rootK.key, crypto: shim };
  const issuingK = await key("issuing", "EC-P256");
  const issuing = await both("issuing-ca", {
    profile: "issuing-ca", subject: { commonName: "factory issuing", organization: "edgetrust" }, publicKey: issuingK.spki, issuer: rootIssuer,
    crlUrl: "http://127.0.0.1:8080/v1/crl/root.crl",
  }, rootK.spki);
  const issuingIssuer: Issuer = { certificate: issuing, signingKey: issuingK.key, crypto: shim };
  const urls = { crlUrl: "http://127.0.0.1:8080/v1/crl/issuing.crl", ocspUrl: "http://127.0.0.1:8080/v1/ocsp" };
  const device = await both("device-identity", { profile: "device-identity", subject: { commonName: "dev-1" }, identity: { trustDomain: TD, deviceId: "dev-1" }, publicKey: spki("ec256"), issuer: issuingIssuer, ...urls }, issuingK.spki);
  const leaf = await both("leaf-device", { profile: "leaf-device", subject: { commonName: "leaf-1" }, identity: { trustDomain: TD, deviceId: "leaf-1" }, publicKey: spki("ec384"), issuer: issuingIssuer, ...urls }, issuingK.spki);
  const edgeK = await key("edge", "EC-P256");
  const edgeCa = await both("edge-ca", {
    profile: "edge-ca", subject: { commonName: "dev-1 Edge CA" }, identity: { trustDomain: TD, deviceId: "dev-1", dnsNames: ["edgehub", "localhost", "dev-1.local"] },
    publicKey: edgeK.spki, issuer: issuingIssuer, ...urls,
  }, issuingK.spki);
  // The Edge CA signs with a Node software key here (the fast synchronous signer); the CAs above sign through the shim.
  const edgeNode = await globalThis.crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"]) as CryptoKeyPair;
  const edgeNodeSpki = Buffer.from(await globalThis.crypto.subtle.exportKey("spki", edgeNode.publicKey));
  const edgeCa2 = await both("edge-ca (Node key)", {
    profile: "edge-ca", subject: { commonName: "dev-1 Edge CA 2" }, identity: { trustDomain: TD, deviceId: "dev-1", dnsNames: ["edgehub", "localhost", "dev-1.local"] },
    publicKey: edgeNodeSpki, issuer: issuingIssuer,
  }, issuingK.spki);
  const edgeIssuer: Issuer = { certificate: edgeCa2, signingKey: edgeNode.privateKey };
  edgeIssuerForModules = edgeIssuer;
  const module = await both("module", {
    profile: "module", subject: { commonName: "tempSensor" }, identity: { trustDomain: TD, deviceId: "dev-1", moduleId: "tempSensor" },
    attestation: { imageDigest: DIGEST, manifestVersion: 7, deploymentId: "dep-1" }, publicKey: spki("ec256"), issuer: edgeIssuer,
  }, edgeNodeSpki);
  const hub = await both("edge-hub-server", {
    profile: "edge-hub-server", subject: { commonName: "edgehub" }, identity: { hostName: "dev-1.local" }, publicKey: spki("rsa2048"), issuer: edgeIssuer,
  }, edgeNodeSpki);
  chains["root-ca"] = write("root-ca", [root]);
  chains["issuing-ca"] = write("issuing-ca", [issuing, root]);
  chains["device-identity"] = write("device-identity", [device, issuing, root]);
  chains["leaf-device"] = write("leaf-device", [leaf, issuing, root]);
  chains["edge-ca"] = write("edge-ca", [edgeCa, issuing, root]);
  chains.module = write("module", [module, edgeCa2, issuing, root]);
  chains["edge-hub-server"] = write("edge-hub-server", [hub, edgeCa2, issuing, root]);
});

afterAll(async () => {
  await store?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const PROFILES = ["root-ca", "issuing-ca", "device-identity", "leaf-device", "edge-ca", "edge-ca (Node key)", "module", "edge-hub-server"];

describe("module certificates: the attestation extension (remembered per attestation) follows each module's own", () => {
  it("interleaved attestations differing in one field each: every certificate carries its own, byte for byte the slow way's", async () => {
    const issuer = edgeIssuerForModules as Issuer;
    const other = "sha256:" + "ef".repeat(32);
    const cases = [
      { imageDigest: DIGEST, manifestVersion: 7, deploymentId: "dep-1" },
      { imageDigest: DIGEST, manifestVersion: 8, deploymentId: "dep-1" },
      { imageDigest: DIGEST, manifestVersion: 7, deploymentId: "dep-2" },
      { imageDigest: DIGEST, manifestVersion: 7 },
      { imageDigest: other, manifestVersion: 7, deploymentId: "dep-1" },
      { imageDigest: DIGEST, manifestVersion: 7, deploymentId: "dep-1" },
    ];
    for (const attestation of cases) {
      const params: IssueParams = {
        profile: "module", subject: { commonName: "m" }, identity: { trustDomain: TD, deviceId: "dev-1", moduleId: "m" },
        attestation, publicKey: spki("ec256"), issuer, serial: randomSerial(), notBefore: new Date(Math.floor(Date.now() / 1000) * 1000 - 300e3),
      };
      const fast = (await issueCertificateDer(params)).der;
      expect(parseModuleAttestation(new x509.X509Certificate(new Uint8Array(fast)))).toEqual(attestation);
      const slow = new Uint8Array((await issueCertificateReference(params)).rawData);
      const tbs = (der: Uint8Array): string => Buffer.from(AsnConvert.serialize(AsnConvert.parse(der, AsnCertificate).tbsCertificate)).toString("hex");
      expect(tbs(fast)).toBe(tbs(slow));
    }
  });
});

describe("template-made certificates equal the slow way, field by field", () => {
  it.each(PROFILES)("%s", (name) => {
    const m = made[name];
    if (!m) throw new Error(`no certificate for ${name}`);
    const fast = AsnConvert.parse(m.fast, AsnCertificate);
    const slow = AsnConvert.parse(m.slow, AsnCertificate);
    const ser = (v: unknown): string => Buffer.from(AsnConvert.serialize(v)).toString("hex");
    const f = fast.tbsCertificate;
    const s = slow.tbsCertificate;
    expect(f.version).toBe(s.version);
    expect(Buffer.from(f.serialNumber).toString("hex")).toBe(Buffer.from(s.serialNumber).toString("hex"));
    expect(ser(f.signature)).toBe(ser(s.signature));
    expect(ser(f.issuer)).toBe(ser(s.issuer));
    expect(ser(f.validity)).toBe(ser(s.validity));
    expect(ser(f.subject)).toBe(ser(s.subject));
    expect(ser(f.subjectPublicKeyInfo)).toBe(ser(s.subjectPublicKeyInfo));
    expect(f.extensions?.map((e) => e.extnID)).toEqual(s.extensions?.map((e) => e.extnID));
    for (const [i, e] of (s.extensions ?? []).entries()) expect(ser(f.extensions?.[i]), e.extnID).toBe(ser(e));
    expect(ser(fast.signatureAlgorithm)).toBe(ser(slow.signatureAlgorithm));
    // The TBSCertificate bytes exactly as signed (ECDSA signatures are randomised, so the outer bytes differ there only).
    expect(Buffer.from(fast.tbsCertificateRaw ?? new ArrayBuffer(0)).toString("hex")).toBe(Buffer.from(slow.tbsCertificateRaw ?? new ArrayBuffer(1)).toString("hex"));
    expect(Buffer.from(AsnConvert.serialize(fast)).equals(Buffer.from(m.fast)), "the whole certificate is DER").toBe(true);
    const key = createPublicKey({ key: m.issuerSpki, format: "der", type: "spki" });
    const hash = key.asymmetricKeyDetails?.namedCurve === "secp384r1" ? "sha384" : "sha256";
    expect(nodeVerify(hash, new Uint8Array(fast.tbsCertificateRaw ?? new ArrayBuffer(0)), { key, dsaEncoding: "der" }, new Uint8Array(fast.signatureValue))).toBe(true);
    // The PEM the CA records and answers with: PemConverter's text, character for character.
    expect(certificatePem(m.fast)).toBe(x509.PemConverter.encode(new Uint8Array(m.fast).buffer, "CERTIFICATE"));
  });
});

describe("every profile passes two independent validators", () => {
  const profiles = ["root-ca", "issuing-ca", "device-identity", "leaf-device", "edge-ca", "module", "edge-hub-server"];
  it.each(profiles)("%s: openssl verify -x509_strict and GnuTLS certtool --verify-chain", (name) => {
    const chain = chains[name] ?? [];
    const [leaf, ...rest] = chain;
    const root = chain.at(-1) ?? "";
    const purpose = name === "edge-hub-server" ? "sslserver" : ["device-identity", "leaf-device", "module"].includes(name) ? "sslclient" : undefined;
    const o = opensslVerify({ root, untrusted: rest.slice(0, -1), leaf: leaf ?? "", ...(purpose ? { purpose } : {}) });
    expect(o.out).toMatch(/: OK/);
    expect(o.status).toBe(0);
    const bundle = join(dir, `${name}-bundle.pem`);
    writeFileSync(bundle, chain.map((p) => readFileSync(p, "utf8")).join(""));
    const g = spawnSync("certtool", ["--verify-chain", "--infile", bundle], { encoding: "utf8" });
    const out = `${g.stdout}${g.stderr}`;
    expect(out).toMatch(/Chain verification output: Verified/);
    expect(out).not.toMatch(/Not verified/);
    expect(g.status, out).toBe(0);
  });
});
