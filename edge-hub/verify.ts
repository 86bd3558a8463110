import { X509Certificate as NodeX509 } from "node:crypto";
import * as x509 from "@peculiar/x509";
import { EKU_CLIENT_AUTH, certificateIdentity, parseModuleAttestation, type WorkloadIdentity } from "../pki/index.js";
import { isEdgeTrustError } from "../common/index.js";
import type { AttestationSource } from "../identity-api/index.js";
import type { CrlCache } from "./crl.js";

/** Who is on the other end of a connection: only ever taken from the verified certificate, never from CONNECT. */
export interface ClientIdentity {
  principal: "module" | "device" | "leaf";
  deviceId: string;
  moduleId?: string;
  /** `d1` for a device/leaf, `d1/m1` for a module: the MQTT client id the hub assigns and the twin key. */
  key: string;
  uri: string;
  serial: string;
  notAfter: Date;
  /** Module certificates: what the certificate says was attested. */
  attestation?: { imageDigest: string; manifestVersion: number };
}

/** Stable reasons, used as the `reason` label of the rejection metric and in logs. */
export type RejectReason =
  | "no-certificate"
  | "certificate-expired"
  | "bad-uri-san"
  | "wrong-trust-domain"
  | "not-client-auth"
  | "untrusted-issuer"
  | "module-device-mismatch"
  | "revoked"
  | "crl-missing"
  | "no-attestation-extension"
  | "not-attested"
  | "attestation-mismatch";

type VerifyResult = { ok: true; identity: ClientIdentity } | { ok: false; reason: RejectReason; detail: string };

interface VerifierOptions {
  trustDomain: string;
  /** This device's Edge CA certificate(s) (more than one while it is being renewed). */
  edgeCas: x509.X509Certificate[];
  /** The cloud issuing CA(s): leaf devices (and the device itself) chain to these. */
  issuingCas: x509.X509Certificate[];
  crl: CrlCache;
  attestation: AttestationSource;
}

interface Ca {
  cert: x509.X509Certificate;
  node: NodeX509;
  identity?: WorkloadIdentity;
}

/**
 * The hub's own certificate checks, on top of the TLS handshake's chain verification (which trusts the whole bundle).
 * They pin each kind of client to the CA that may issue it: modules to this device's Edge CA, leaf devices to the
 * issuing CA. Order: certificate present → validity → URI SAN → trust domain → EKU → issuer → module URI device vs
 * Edge CA device → revocation → attestation.
 */
export class ClientVerifier {
  private edgeCas: Ca[] = [];
  private issuingCas: Ca[] = [];

  constructor(private readonly opts: VerifierOptions) {
    this.setCas(opts.edgeCas, opts.issuingCas);
  }

  /** Replace the CA sets (Edge CA renewal). */
  setCas(edgeCas: x509.X509Certificate[], issuingCas: x509.X509Certificate[]): void {
    const wrap = (c: x509.X509Certificate, needIdentity: boolean): Ca => {
      const ca: Ca = { cert: c, node: new NodeX509(Buffer.from(c.rawData)) };
      if (needIdentity) ca.identity = certificateIdentity(c);
      return ca;
    };
    this.edgeCas = edgeCas.map((c) => wrap(c, true));
    this.issuingCas = issuingCas.map((c) => wrap(c, false));
  }

  /** The device this hub serves (the Edge CA's device). */
  get deviceId(): string {
    const id = this.edgeCas[0]?.identity?.deviceId;
    if (!id) throw new Error("no Edge CA configured");
    return id;
  }

  verify(der: Buffer | undefined, now = new Date()): VerifyResult {
    if (!der || der.length === 0) return { ok: false, reason: "no-certificate", detail: "the client presented no certificate" };
    const cert = new x509.X509Certificate(new Uint8Array(der));
    const node = new NodeX509(der);
    if (cert.notBefore > now || cert.notAfter < now) {
      return { ok: false, reason: "certificate-expired", detail: `valid ${cert.notBefore.toISOString()}..${cert.notAfter.toISOString()}` };
    }
    let id: WorkloadIdentity;
    try {
      id = certificateIdentity(cert);
    } catch (e) {
      return { ok: false, reason: "bad-uri-san", detail: isEdgeTrustError(e) ? e.message : String(e) };
    }
    if (id.trustDomain !== this.opts.trustDomain) {
      return { ok: false, reason: "wrong-trust-domain", detail: `trust domain ${id.trustDomain}, expected ${this.opts.trustDomain}` };
    }
    const eku = cert.getExtension(x509.ExtendedKeyUsageExtension);
    if (eku && !eku.usages.map(String).includes(EKU_CLIENT_AUTH)) {
      return { ok: false, reason: "not-client-auth", detail: "certificate's extended key usage has no clientAuth" };
    }
    const uri = id.moduleId === undefined ? `edgetrust://${id.trustDomain}/devices/${id.deviceId}` : `edgetrust://${id.trustDomain}/devices/${id.deviceId}/modules/${id.moduleId}`;
    const base = { deviceId: id.deviceId, uri, serial: cert.serialNumber, notAfter: cert.notAfter };

    if (id.moduleId !== undefined) {
      const ca = this.edgeCas.find((c) => issuedBy(node, c.node));
      if (!ca) {
        return { ok: false, reason: "untrusted-issuer", detail: `module certificate not issued by this device's Edge CA (issuer ${cert.issuer})` };
      }
      // Name constraints confine the URI host only: the URI's device must be the Edge CA's device.
      if (ca.identity?.deviceId !== id.deviceId || ca.identity.trustDomain !== id.trustDomain) {
        return { ok: false, reason: "module-device-mismatch", detail: `module of device ${id.deviceId} issued by the Edge CA of ${ca.identity?.deviceId ?? "?"}` };
      }
      const edgeIssuer = this.issuingCas.find((i) => issuedBy(ca.node, i.node));
      if (edgeIssuer) {
        const rev = this.opts.crl.check(edgeIssuer.cert, ca.cert, now);
        if (!rev.ok) return { ok: false, reason: rev.reason, detail: `Edge CA: ${rev.detail}` };
      }
      let att;
      try {
        att = parseModuleAttestation(cert);
      } catch (e) {
        return { ok: false, reason: "no-attestation-extension", detail: isEdgeTrustError(e) ? e.message : String(e) };
      }
      if (!att) return { ok: false, reason: "no-attestation-extension", detail: "module certificate carries no attestation extension" };
      const current = this.opts.attestation.current(id.deviceId, id.moduleId);
      if (!current) return { ok: false, reason: "not-attested", detail: `module ${id.moduleId} is not registered as attested` };
      if (current.imageDigest !== att.imageDigest || current.manifestVersion !== att.manifestVersion) {
        return {
          ok: false,
          reason: "attestation-mismatch",
          detail: `certificate attests ${att.imageDigest} (manifest v${att.manifestVersion}), module now runs ${current.imageDigest} (v${current.manifestVersion})`,
        };
      }
      return {
        ok: true,
        identity: { ...base, principal: "module", moduleId: id.moduleId, key: `${id.deviceId}/${id.moduleId}`, attestation: { imageDigest: att.imageDigest, manifestVersion: att.manifestVersion } },
      };
    }

    const ca = this.issuingCas.find((c) => issuedBy(node, c.node));
    if (!ca) return { ok: false, reason: "untrusted-issuer", detail: `device certificate not issued by the cloud issuing CA (issuer ${cert.issuer})` };
    const rev = this.opts.crl.check(ca.cert, cert, now);
    if (!rev.ok) return { ok: false, reason: rev.reason, detail: rev.detail };
    const principal = id.deviceId === this.deviceId ? "device" : "leaf";
    return { ok: true, identity: { ...base, principal, key: id.deviceId } };
  }

  /** Is a verified module identity still attested as its certificate says? (Re-checked on attestation events.) */
  stillAttested(identity: ClientIdentity): boolean {
    if (identity.principal !== "module" || identity.moduleId === undefined || !identity.attestation) return true;
    const cur = this.opts.attestation.current(identity.deviceId, identity.moduleId);
    return cur !== undefined && cur.imageDigest === identity.attestation.imageDigest && cur.manifestVersion === identity.attestation.manifestVersion;
  }
}

function issuedBy(child: NodeX509, ca: NodeX509): boolean {
  return child.checkIssued(ca) && child.verify(ca.publicKey);
}
