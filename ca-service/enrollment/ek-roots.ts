import { readFileSync } from "node:fs";
import * as x509 from "@peculiar/x509";
import { EdgeTrustError } from "../../common/index.js";

/**
 * TPM EK certificates checked against the configured TPM manufacturer roots (`ca.tpm`): the credential-activation
 * proof shows the device holds the enrolled EK, this shows that EK was made by a TPM vendor we trust (and not by
 * software posing as a TPM). See ca-service/README.md "Enrollment → TPM → EK certificate".
 */

interface EkTrustConfig {
  /** PEM files, each one or more TPM manufacturer root certificates. */
  manufacturerRoots: string[];
  /** Development only: accept an EK with no certificate, or with no roots configured. */
  allowUnverifiedEk: boolean;
}

function unauth(message: string, hint?: string): EdgeTrustError {
  return new EdgeTrustError("UNAUTHENTICATED", message, hint ? { hint } : {});
}

const ROOTS_HINT = "configure ca.tpm.manufacturerRoots (PEM files of the TPM vendors' EK root CAs); ca.tpm.allowUnverifiedEk: true only for development";

/** Parse the certificates of a PEM bundle or one base64 DER certificate; throws INVALID_INPUT. */
function parseCerts(text: string, what: string): x509.X509Certificate[] {
  try {
    if (text.includes("-----BEGIN")) {
      const ders = x509.PemConverter.decode(text);
      if (ders.length === 0) throw new Error("no PEM block");
      return ders.map((d) => new x509.X509Certificate(d));
    }
    const t = text.replace(/\s+/g, "");
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(t)) throw new Error("not base64");
    return [new x509.X509Certificate(Buffer.from(t, "base64"))];
  } catch {
    throw new EdgeTrustError("INVALID_INPUT", `${what} is not a PEM or base64 DER X.509 certificate`);
  }
}

function isCa(c: x509.X509Certificate): boolean {
  return c.getExtension(x509.BasicConstraintsExtension)?.ca === true;
}

export class EkTrust {
  private constructor(readonly roots: x509.X509Certificate[], readonly allowUnverified: boolean) {}

  /** Read the root files (at start: a missing or broken file is a configuration error naming the file). */
  static load(cfg: EkTrustConfig): EkTrust {
    const roots: x509.X509Certificate[] = [];
    for (const file of cfg.manufacturerRoots) {
      let text: string;
      try {
        text = readFileSync(file, "utf8");
      } catch (e) {
        throw new EdgeTrustError("INVALID_CONFIG", `ca.tpm.manufacturerRoots: cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
      }
      let certs: x509.X509Certificate[];
      try {
        certs = parseCerts(text, file);
      } catch {
        throw new EdgeTrustError("INVALID_CONFIG", `ca.tpm.manufacturerRoots: ${file} holds no PEM certificate`);
      }
      for (const c of certs) {
        if (!isCa(c)) throw new EdgeTrustError("INVALID_CONFIG", `ca.tpm.manufacturerRoots: ${file}: ${c.subject} is not a CA certificate (basicConstraints cA)`);
      }
      roots.push(...certs);
    }
    return new EkTrust(roots, cfg.allowUnverifiedEk);
  }

  /** No roots, unverified EKs refused: every TPM attestation is refused (the secure default). */
  static none(): EkTrust {
    return new EkTrust([], false);
  }

  /**
   * Check the EK certificate a device presents (PEM: the EK certificate first, then any intermediates; or base64 DER)
   * for the enrolled EK: same public key, and a chain of valid signatures, validity periods and CA intermediates up
   * to a configured root. Throws 401 naming the EK certificate's issuer.
   */
  async check(ekCert: string | undefined, enrolledEkSpki: Buffer, now = new Date()): Promise<void> {
    if (this.roots.length === 0 && !this.allowUnverified) {
      throw unauth("TPM attestation is refused: no TPM manufacturer roots are configured to check EK certificates against", ROOTS_HINT);
    }
    if (ekCert === undefined) {
      if (this.allowUnverified) return;
      throw unauth("no EK certificate presented: this CA accepts only TPMs whose EK certificate chains to a configured manufacturer root", "send ekCert (tpm2_getekcertificate, or tpm2_nvread 0x1c00002 for RSA / 0x1c0000a for ECC)");
    }
    const [leaf, ...intermediates] = parseCerts(ekCert, "ekCert");
    if (!leaf) throw new EdgeTrustError("INVALID_INPUT", "ekCert holds no certificate");
    if (!Buffer.from(leaf.publicKey.rawData).equals(enrolledEkSpki)) {
      throw unauth(`the EK certificate (issuer ${leaf.issuer}) is for another key than the enrolled endorsement key`);
    }
    if (this.roots.length === 0) return; // allowUnverifiedEk with no roots: nothing to chain to (development)
    const chain = [...await new x509.X509ChainBuilder({ certificates: [...intermediates, ...this.roots] }).build(leaf)];
    const top = chain[chain.length - 1];
    const root = this.roots.find((r) => top && Buffer.from(r.rawData).equals(Buffer.from(top.rawData)));
    if (!root || !top) {
      throw unauth(`the EK certificate does not chain to a configured TPM manufacturer root (EK certificate issuer: ${leaf.issuer}; chain ends at ${top?.subject ?? leaf.issuer})`, ROOTS_HINT);
    }
    // The builder only matched names and signatures; validity at `now` and CA bits are checked here for every link.
    for (let i = 0; i < chain.length; i++) {
      const c = chain[i] as x509.X509Certificate;
      if (now < c.notBefore || now > c.notAfter) {
        throw unauth(`the EK certificate chain has a certificate outside its validity period: ${c.subject} (valid ${c.notBefore.toISOString()} to ${c.notAfter.toISOString()}; EK certificate issuer: ${leaf.issuer})`);
      }
      if (i > 0 && !isCa(c)) throw unauth(`the EK certificate chain has an issuer that is not a CA: ${c.subject} (EK certificate issuer: ${leaf.issuer})`);
      // The configured root is a trust anchor (RFC 5280 §6.1): trusted by configuration, its own signature not needed.
      const issuer = chain[i + 1];
      if (!issuer) continue;
      if (!await c.verify({ publicKey: issuer.publicKey, signatureOnly: true })) {
        throw unauth(`the EK certificate chain has a signature that does not verify: ${c.subject} (EK certificate issuer: ${leaf.issuer})`);
      }
    }
  }
}
