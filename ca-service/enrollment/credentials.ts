import { X509Certificate as NodeX509, createHmac, timingSafeEqual } from "node:crypto";
import { EdgeTrustError } from "../../common/index.js";

/**
 * Bootstrap credentials a device presents at registration: Azure-style SAS tokens over a key derived from a group
 * key, HTTP Basic with that derived key (EST), and X.509 bootstrap certificates (individual or chained to a group CA).
 */

/** Azure DPS group-key derivation: base64(HMAC-SHA256(base64decode(groupKey), registrationId)). */
export function deriveDeviceKey(groupKeyB64: string, registrationId: string): string {
  return createHmac("sha256", Buffer.from(groupKeyB64, "base64")).update(registrationId, "utf8").digest("base64");
}

interface ParsedSas {
  /** `sr` exactly as received (still URL-encoded): the signature is verified over this text. */
  srRaw: string;
  /** `sr` decoded: must name `<idScope>/registrations/<registrationId>`. */
  resource: string;
  sig: string;
  se: number;
  skn: string | undefined;
}

function unauth(message: string, hint?: string): EdgeTrustError {
  return new EdgeTrustError("UNAUTHENTICATED", message, hint ? { hint } : {});
}

/** Parse `SharedAccessSignature sr=...&sig=...&se=...&skn=...` (fields in any order, each at most once). */
export function parseSas(header: string): ParsedSas {
  const m = /^SharedAccessSignature (.{1,2048})$/.exec(header);
  if (!m?.[1]) throw unauth("Authorization is not a SharedAccessSignature");
  const fields = new Map<string, string>();
  for (const part of m[1].split("&")) {
    const i = part.indexOf("=");
    if (i <= 0) throw unauth("malformed SharedAccessSignature");
    const k = part.slice(0, i);
    if (fields.has(k)) throw unauth(`SharedAccessSignature repeats ${k}`);
    fields.set(k, part.slice(i + 1));
  }
  const sr = fields.get("sr");
  const sig = fields.get("sig");
  const se = fields.get("se");
  if (!sr || !sig || !se || !/^[0-9]{1,12}$/.test(se)) throw unauth("SharedAccessSignature needs sr, sig and a numeric se");
  let resource: string;
  let sigDecoded: string;
  try {
    resource = decodeURIComponent(sr);
    sigDecoded = decodeURIComponent(sig);
  } catch {
    throw unauth("SharedAccessSignature is not URL-encoded correctly");
  }
  const skn = fields.get("skn");
  return { srRaw: sr, resource, sig: sigDecoded, se: Number(se), skn: skn === undefined ? undefined : decodeURIComponent(skn) };
}

/**
 * Check a SAS for one registration: the resource must be exactly `<idScope>/registrations/<registrationId>`, it must
 * not be expired, and `sig` must be HMAC-SHA256(deviceKey, sr + "\n" + se) over `sr` as received.
 */
export function verifySas(sas: ParsedSas, opts: { idScope: string; registrationId: string; deviceKeyB64: string; now?: number }): void {
  const expected = `${opts.idScope}/registrations/${opts.registrationId}`;
  if (sas.resource !== expected) throw unauth(`SAS resource ${JSON.stringify(sas.resource.slice(0, 200))} does not name this registration`, `sr must be ${expected}`);
  if (sas.skn !== undefined && sas.skn !== "registration") throw unauth(`SAS key name must be "registration"`);
  const now = Math.floor((opts.now ?? Date.now()) / 1000);
  if (sas.se <= now) throw unauth("SAS token expired", "create a fresh token");
  if (sas.se > now + 366 * 86400) throw unauth("SAS token expiry is more than a year ahead");
  const mac = createHmac("sha256", Buffer.from(opts.deviceKeyB64, "base64")).update(`${sas.srRaw}\n${sas.se}`).digest();
  const given = Buffer.from(sas.sig, "base64");
  if (given.length !== mac.length || !timingSafeEqual(given, mac)) throw unauth("SAS signature does not verify");
}

/** Constant-time comparison of two base64 keys (HTTP Basic password vs the derived device key). */
export function sameKey(a: string, b: string): boolean {
  const x = Buffer.from(a, "utf8");
  const y = Buffer.from(b, "utf8");
  return x.length === y.length && timingSafeEqual(x, y);
}

/** Is `cert` inside its validity period at `now`? */
export function certValidAt(cert: NodeX509, now = Date.now()): boolean {
  return Date.parse(cert.validFrom) <= now && Date.parse(cert.validTo) >= now;
}

/**
 * Was `cert` signed by `caPem`, a CA valid at `now` (names match and the signature verifies)? The certificate's own
 * validity is not checked, so a caller can tell "expired" from "not ours".
 */
export function signedBy(cert: NodeX509, caPem: string, now = Date.now()): boolean {
  const ca = new NodeX509(caPem);
  if (!certValidAt(ca, now)) return false;
  if (!cert.checkIssued(ca)) return false;
  try {
    return cert.verify(ca.publicKey);
  } catch {
    return false;
  }
}

/** The CN of a certificate's subject (DPS convention: the registration id of an X.509-attested device). */
export function commonNameOf(cert: NodeX509): string | undefined {
  for (const line of cert.subject.split("\n")) if (line.startsWith("CN=")) return line.slice(3);
  return undefined;
}
