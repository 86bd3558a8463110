import type * as x509 from "@peculiar/x509";
import { SubjectAlternativeNameExtension } from "@peculiar/x509";
import { EdgeTrustError } from "../common/index.js";

/**
 * Workload identities are URIs: `edgetrust://<trust-domain>/devices/<deviceId>` for a device (and a leaf device),
 * `edgetrust://<trust-domain>/devices/<deviceId>/modules/<moduleId>` for a module.
 */
const URI_SCHEME = "edgetrust";

const TRUST_DOMAIN_RE = /^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/;
/** Device and module ids: what Azure IoT allows minus characters that need escaping in a URI path. */
const ID_RE = /^[A-Za-z0-9][A-Za-z0-9._:@$=+-]{0,127}$/;
const DNS_RE = /^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/;

export interface WorkloadIdentity {
  trustDomain: string;
  deviceId: string;
  /** Present for a module identity. */
  moduleId?: string;
}

export function checkTrustDomain(td: string): void {
  if (!TRUST_DOMAIN_RE.test(td)) {
    throw new EdgeTrustError("INVALID_INPUT", `trust domain ${JSON.stringify(td)} must be a lowercase DNS name`);
  }
}

function checkId(kind: "device" | "module", id: string): void {
  if (!ID_RE.test(id)) {
    throw new EdgeTrustError("INVALID_INPUT", `${kind} id ${JSON.stringify(id)} is not allowed`, {
      hint: "letters, digits and . _ : @ $ = + - (up to 128), starting with a letter or digit",
    });
  }
}

export function checkDnsName(name: string): void {
  if (!DNS_RE.test(name)) throw new EdgeTrustError("INVALID_INPUT", `DNS name ${JSON.stringify(name)} must be a lowercase host name`);
}

export function deviceUri(trustDomain: string, deviceId: string): string {
  checkTrustDomain(trustDomain);
  checkId("device", deviceId);
  return `${URI_SCHEME}://${trustDomain}/devices/${deviceId}`;
}

export function moduleUri(trustDomain: string, deviceId: string, moduleId: string): string {
  checkId("module", moduleId);
  return `${deviceUri(trustDomain, deviceId)}/modules/${moduleId}`;
}

/** Parse an `edgetrust://` URI; undefined when it is not one of ours or is malformed. */
function parseWorkloadUri(uri: string): WorkloadIdentity | undefined {
  const m = /^edgetrust:\/\/([^/]+)\/devices\/([^/]+)(?:\/modules\/([^/]+))?$/.exec(uri);
  if (!m) return undefined;
  const [, td, d, mod] = m;
  if (td === undefined || d === undefined || !TRUST_DOMAIN_RE.test(td) || !ID_RE.test(d)) return undefined;
  if (mod !== undefined && !ID_RE.test(mod)) return undefined;
  return mod === undefined ? { trustDomain: td, deviceId: d } : { trustDomain: td, deviceId: d, moduleId: mod };
}

/**
 * The one workload identity a certificate names in its URI SANs. Throws when it has none, or several `edgetrust:`
 * URIs (a verifier must never have to choose).
 */
export function certificateIdentity(cert: x509.X509Certificate): WorkloadIdentity {
  const san = cert.getExtension(SubjectAlternativeNameExtension);
  const uris = (san?.names.items ?? []).filter((n) => n.type === "url").map((n) => n.value);
  const ours = uris.filter((u) => u.toLowerCase().startsWith(`${URI_SCHEME}:`));
  if (ours.length !== 1) {
    throw new EdgeTrustError("PKI_PROFILE_VIOLATION", `certificate must carry exactly one ${URI_SCHEME}: URI SAN, found ${ours.length}`);
  }
  const id = parseWorkloadUri(ours[0] ?? "");
  if (!id) throw new EdgeTrustError("PKI_PROFILE_VIOLATION", `certificate URI SAN ${JSON.stringify(ours[0])} is not a valid edgetrust identity`);
  return id;
}
