import type * as x509 from "@peculiar/x509";
import { EdgeTrustError } from "../common/index.js";
import { issueCertificateDer, moduleUri, refuseExtraSans, verifyCsr, type Issuer } from "../pki/index.js";
import type { AttestedModule } from "./attested-modules.js";
import type { ContainerVerdict } from "./container-check.js";

/** The device's Edge CA as the daemon holds it: certificate, HSM-backed signing key, and the chain up to the root. */
export interface EdgeCa extends Issuer {
  certificate: x509.X509Certificate;
  /** Edge CA first, then its issuers (not the root). */
  chain: x509.X509Certificate[];
}

interface ModuleIssuerOptions {
  trustDomain: string;
  deviceId: string;
  /** Module certificate lifetime; hours, from policy `certificates.module.lifetime`. */
  lifetimeSeconds: number;
  edgeCa: () => EdgeCa;
  checkContainer: (m: AttestedModule) => Promise<ContainerVerdict>;
}

/** PEM of a DER certificate, byte for byte what @peculiar/x509's PemConverter writes (64-character lines, LF, no final LF). */
export function certificatePem(der: Uint8Array): string {
  const b64 = Buffer.from(der.buffer, der.byteOffset, der.byteLength).toString("base64");
  const lines: string[] = [];
  for (let i = 0; i < b64.length; i += 64) lines.push(b64.slice(i, i + 64));
  return `-----BEGIN CERTIFICATE-----\n${lines.join("\n")}\n-----END CERTIFICATE-----`;
}

/** The chain's PEMs per Edge CA (a new object at each Edge CA renewal): encoded once, not once per certificate. */
const chainPems = new WeakMap<EdgeCa, string[]>();

function chainPemOf(edgeCa: EdgeCa): string[] {
  let pems = chainPems.get(edgeCa);
  if (!pems) chainPems.set(edgeCa, (pems = edgeCa.chain.map((c) => certificatePem(new Uint8Array(c.rawData)))));
  return pems;
}

/**
 * Issue a module certificate: only for an attested module whose container still runs the attested digest, with the
 * module's own key (proved by the CSR signature), names decided here — the CSR may ask for its own URI or nothing.
 */
export async function issueModuleCertificate(opts: ModuleIssuerOptions, m: AttestedModule, csrPem: string): Promise<{ certificate: string; chain: string[]; notAfter: string }> {
  const verdict = await opts.checkContainer(m);
  if (!verdict.ok) throw new EdgeTrustError("FORBIDDEN", `no certificate for module ${m.name}: ${verdict.reason}`);
  const csr = await verifyCsr(csrPem, { profile: "module" });
  const uri = moduleUri(opts.trustDomain, opts.deviceId, m.name);
  refuseExtraSans(csr.sans, { uri: [uri] });
  const edgeCa = opts.edgeCa();
  const cert = await issueCertificateDer({
    profile: "module",
    subject: { commonName: m.name },
    identity: { trustDomain: opts.trustDomain, deviceId: opts.deviceId, moduleId: m.name },
    attestation: { imageDigest: m.imageDigest, manifestVersion: m.manifestVersion, deploymentId: m.deploymentId },
    publicKey: csr.spki,
    issuer: edgeCa,
    lifetimeSeconds: opts.lifetimeSeconds,
  });
  return {
    certificate: certificatePem(cert.der),
    chain: [...chainPemOf(edgeCa)],
    notAfter: cert.notAfter.toISOString(),
  };
}
