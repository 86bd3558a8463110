import { describe, expect, it } from "vitest";
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import * as x509 from "@peculiar/x509";
import { verifyCsr } from "./index.js";
import { verifyAsnSignature } from "./csr.js";
import { signedBytes } from "./csr.js";

/**
 * Issue 3: Wycheproof ECDSA P-256/SHA-256 DER vectors through the exact signature check verifyCsr uses
 * (`verifyAsnSignature`: @peculiar/x509's PublicKey.export + its ECDSA DER→P1363 formatter + WebCrypto verify, with
 * our canonical-DER check in front). Every `invalid` vector must be rejected, every `valid` one accepted.
 */
const VECTORS = fileURLToPath(new URL("../test/vectors/wycheproof/ecdsa_secp256r1_sha256_test.json", import.meta.url));

interface WycheproofTest { tcId: number; comment: string; flags: string[]; msg: string; sig: string; result: "valid" | "invalid" | "acceptable" }
interface WycheproofGroup { publicKeyDer: string; sha: string; tests: WycheproofTest[] }
interface WycheproofFile { algorithm: string; numberOfTests: number; testGroups: WycheproofGroup[] }

const hex = (h: string): ArrayBuffer => new Uint8Array(Buffer.from(h, "hex")).buffer;

/** Accepted = verifies; rejected = false or an exception (verifyCsr turns both into PKI_INVALID_CSR). */
async function accepts(key: x509.PublicKey, t: WycheproofTest): Promise<boolean> {
  try {
    return await verifyAsnSignature(key, { name: "ECDSA", hash: "SHA-256" } as EcdsaParams, hex(t.sig), hex(t.msg));
  } catch {
    return false;
  }
}

describe("Wycheproof ecdsa_secp256r1_sha256_test.json (DER signatures) through verifyCsr's signature check", () => {
  it("the vector file is present", () => {
    expect(existsSync(VECTORS), `${VECTORS} is missing`).toBe(true);
  });

  it("rejects every invalid vector and accepts every valid one", async () => {
    const file = JSON.parse(readFileSync(VECTORS, "utf8")) as WycheproofFile;
    expect(file.algorithm).toBe("ECDSA");
    const wrong: string[] = [];
    const seen = { valid: 0, invalid: 0, acceptable: 0 };
    const acceptable: string[] = [];
    for (const g of file.testGroups) {
      expect(g.sha).toBe("SHA-256");
      const key = new x509.PublicKey(hex(g.publicKeyDer));
      for (const t of g.tests) {
        seen[t.result]++;
        const ok = await accepts(key, t);
        if (t.result === "acceptable") acceptable.push(`tc${t.tcId} ${t.comment} [${t.flags.join(",")}]: ${ok ? "accepted" : "rejected"}`);
        else if (ok !== (t.result === "valid")) wrong.push(`tc${t.tcId} ${t.result} ${t.comment} [${t.flags.join(",")}]: ${ok ? "accepted" : "rejected"}`);
      }
    }
    // This release of the file has no `acceptable` cases; if a newer one adds some, they are listed (either outcome
    // is allowed by Wycheproof), see pki/README.md.
    if (acceptable.length > 0) process.stderr.write(`wycheproof acceptable cases:\n  ${acceptable.join("\n  ")}\n`);
    expect(wrong).toEqual([]);
    expect(seen.valid + seen.invalid + seen.acceptable).toBe(file.numberOfTests);
    expect(seen.invalid).toBeGreaterThan(0);
  });

  it("verifyCsr itself refuses a CSR whose signature is re-encoded non-canonically (BER long-form length)", async () => {
    const keys = (await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"])) as CryptoKeyPair;
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: "CN=ber", keys, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } });
    await expect(verifyCsr(csr.rawData)).resolves.toMatchObject({ subject: "CN=ber" });
    // SEQUENCE { INTEGER r, INTEGER s } with its length in long form (0x81 len) is valid BER, invalid DER.
    const sig = new Uint8Array(csr.signature);
    const ber = new Uint8Array([0x30, 0x81, ...sig.subarray(1)]);
    expect(await verifyAsnSignature(csr.publicKey, csr.signatureAlgorithm, ber.buffer, signedBytes(csr))).toBe(false);
    expect(await verifyAsnSignature(csr.publicKey, csr.signatureAlgorithm, csr.signature, signedBytes(csr))).toBe(true);
  });
});
