import { spawnSync } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { afterAll, describe, expect, it } from "vitest";
import { readCsr, readCsrDer, singlePemDer, verifyCsr } from "./csr.js";
import { importSpki, importSpkiForVerify } from "./keys.js";

/**
 * The CSR check's fast paths return what the general decoders return, or step aside: the DER element reader
 * (`readCsrDer`) gives the same parts as asn1js (`readCsr`) for every DER request and undefined for anything else; the
 * single-block PEM decoder gives PemConverter's bytes or undefined; the raw EC import gives the DER decoder's key and
 * refuses what it refuses.
 */

const dir = mkdtempSync(join(tmpdir(), "edgetrust-csr-fast-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

type Alg = { name: string; namedCurve?: string; hash: string; modulusLength?: number; publicExponent?: Uint8Array };
const EC256: Alg = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
const EC384: Alg = { name: "ECDSA", namedCurve: "P-384", hash: "SHA-384" };
const RSA: Alg = { name: "RSASSA-PKCS1-v1_5", modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" };

async function csr(alg: Alg, extensions: x509.Extension[] = [], attributes: x509.Attribute[] = []): Promise<Uint8Array> {
  const keys = (await crypto.subtle.generateKey(alg as EcKeyGenParams, true, ["sign", "verify"])) as CryptoKeyPair;
  const req = await x509.Pkcs10CertificateRequestGenerator.create({ name: "CN=dev-1, O=edgetrust", keys, signingAlgorithm: alg, extensions, attributes });
  return new Uint8Array(req.rawData);
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");
const partsHex = (p: NonNullable<ReturnType<typeof readCsr>>) => ({
  info: hex(p.info), subject: hex(p.subject), spki: hex(p.spki), keyId: hex(p.keyId), signatureAlgorithm: p.signatureAlgorithm,
  signature: hex(p.signature), extensions: p.extensions.map(hex),
});

describe("readCsrDer: the DER element reader of a CSR", () => {
  it("reads every part exactly as asn1js does: EC P-256/P-384 and RSA, with and without extension requests and other attributes", async () => {
    const san = new x509.SubjectAlternativeNameExtension([{ type: "url", value: "edgetrust://example.com/devices/d" }, { type: "dns", value: "a.example" }]);
    const samples = [
      await csr(EC256),
      await csr(EC384),
      await csr(RSA),
      await csr(EC256, [san, new x509.BasicConstraintsExtension(false, undefined, true), new x509.Extension("1.2.3.4.5", false, new Uint8Array([5, 0]))]),
      await csr(EC256, [san], [new x509.ChallengePasswordAttribute("secret")]),
    ];
    for (const der of samples) {
      const fast = readCsrDer(der);
      const slow = readCsr(der);
      expect(fast, "the reader must take a plain DER CSR").toBeDefined();
      expect(slow).toBeDefined();
      expect(partsHex(fast as NonNullable<typeof fast>)).toEqual(partsHex(slow as NonNullable<typeof slow>));
    }
  });

  it("steps aside for BER, trailing data, an unknown signature algorithm and a truncated request (asn1js decides as before)", async () => {
    const der = await csr(EC256);
    // The outer SEQUENCE's length in a longer form than needed: valid BER, not DER.
    const longForm = der[1] === 0x81
      ? Uint8Array.of(0x30, 0x82, 0x00, ...der.subarray(2))
      : Uint8Array.of(0x30, 0x83, 0x00, ...der.subarray(2));
    expect(readCsrDer(longForm)).toBeUndefined();
    expect(readCsrDer(Uint8Array.of(...der, 0x00))).toBeUndefined();
    expect(readCsrDer(der.subarray(0, der.length - 1))).toBeUndefined();
    const unknownAlg = (await (async () => {
      const keys = (await crypto.subtle.generateKey({ name: "RSA-PSS", modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" }, true, ["sign", "verify"])) as CryptoKeyPair;
      return new Uint8Array((await x509.Pkcs10CertificateRequestGenerator.create({ name: "CN=pss", keys, signingAlgorithm: { name: "RSA-PSS", saltLength: 32 } as Algorithm })).rawData);
    })());
    expect(readCsrDer(unknownAlg)).toBeUndefined();
    expect(readCsr(unknownAlg)).toBeUndefined();
    // An indefinite length (0x80) anywhere: not DER.
    expect(readCsrDer(Uint8Array.of(0x30, 0x80, ...der.subarray(2), 0x00, 0x00))).toBeUndefined();
  });

  it("a CSR openssl made (its own DER) takes the reader and verifies", async () => {
    const key = join(dir, "k.pem");
    const out = join(dir, "r.der");
    const r = spawnSync("openssl", ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-subj", "/CN=ossl", "-addext", "subjectAltName=DNS:x.example", "-outform", "DER", "-out", out]);
    expect(r.status, r.stderr.toString()).toBe(0);
    const der = new Uint8Array(readFileSync(out));
    expect(partsHex(readCsrDer(der) as NonNullable<ReturnType<typeof readCsrDer>>)).toEqual(partsHex(readCsr(der) as NonNullable<ReturnType<typeof readCsr>>));
    await expect(verifyCsr(der)).resolves.toMatchObject({ keyAlgorithm: "EC-P256", sans: { dns: ["x.example"] } });
  });
});

describe("singlePemDer: one canonical PEM block", () => {
  it("returns PemConverter's bytes for a single block (LF or CRLF), undefined for headers, two blocks or non-canonical base64", async () => {
    const der = await csr(EC256);
    const pem = x509.PemConverter.encode(der.slice().buffer, "CERTIFICATE REQUEST");
    for (const p of [pem, pem.replace(/\n/g, "\r\n"), `\n${pem}\n\n`, pem.replace(/CERTIFICATE REQUEST/g, "NEW CERTIFICATE REQUEST")]) {
      const fast = singlePemDer(p);
      expect(fast).toBeDefined();
      expect(hex(new Uint8Array(fast as ArrayBuffer))).toBe(hex(new Uint8Array(x509.PemConverter.decodeFirst(p))));
    }
    expect(singlePemDer(`${pem}\n${pem}`)).toBeUndefined();
    expect(singlePemDer(pem.replace("-----\n", "-----\nProc-Type: 4,ENCRYPTED\n\n"))).toBeUndefined();
    expect(singlePemDer(pem.replace(/[A-Za-z0-9+/]{4}\n/, (m) => `${m.slice(0, 2)}=${m.slice(3)}`))).toBeUndefined();
    expect(singlePemDer(pem.replace("-----END CERTIFICATE REQUEST", "-----END NEW CERTIFICATE REQUEST"))).toBeUndefined();
  });
});

describe("importSpkiForVerify: the raw point import of uncompressed P-256/P-384 keys", () => {
  it("imports the same key as the DER decoder, and refuses a point off the curve and a coordinate above the field prime", async () => {
    for (const namedCurve of ["P-256", "P-384"]) {
      const der = generateKeyPairSync("ec", { namedCurve }).publicKey.export({ format: "der", type: "spki" });
      expect((await importSpkiForVerify(der)).export({ format: "der", type: "spki" }).equals(der)).toBe(true);
      const offCurve = Buffer.from(der);
      offCurve[offCurve.length - 1] = (offCurve[offCurve.length - 1] ?? 0) ^ 1;
      const coordinate = namedCurve === "P-256" ? 32 : 48;
      const overPrime = Buffer.from(der);
      overPrime.fill(0xff, der.length - 2 * coordinate, der.length - coordinate);
      for (const bad of [offCurve, overPrime]) {
        await expect(importSpkiForVerify(bad)).rejects.toMatchObject({ code: "PKI_PROFILE_VIOLATION" });
        expect(() => importSpki(bad)).toThrow(expect.objectContaining({ code: "PKI_PROFILE_VIOLATION" }));
      }
    }
    const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 }).publicKey.export({ format: "der", type: "spki" });
    expect((await importSpkiForVerify(rsa)).asymmetricKeyDetails?.modulusLength).toBe(2048);
  });
});
