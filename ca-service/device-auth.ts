import type { FastifyRequest } from "fastify";
import { EdgeTrustError } from "../common/index.js";
import { peerCertificate } from "./http.js";
import { authHook, type AuthHook } from "./route-auth.js";
import { normalizeSerial, sha256Hex, type CaStore, type CertificateRecord } from "./store.js";

/** mTLS routes take only the TLS client certificate; an Authorization header there would be ignored, so it is refused. */
function deviceCertificateOnly(req: FastifyRequest): NonNullable<ReturnType<typeof peerCertificate>> {
  if (req.headers.authorization !== undefined) {
    throw new EdgeTrustError("UNAUTHENTICATED", "this route authenticates with the TLS client certificate only; an Authorization header cannot be verified here", { hint: "send the request without an Authorization header" });
  }
  const peer = peerCertificate(req);
  if (!peer) throw new EdgeTrustError("UNAUTHENTICATED", "this route needs the current certificate as the TLS client certificate");
  return peer;
}

/** The record of a presented certificate: it must be byte-identical to one this CA issued. */
async function issuedRecord(store: CaStore, req: FastifyRequest): Promise<CertificateRecord> {
  const peer = deviceCertificateOnly(req);
  const rec = await store.getCertificate(normalizeSerial(peer.serialNumber));
  if (!rec || rec.fingerprintSha256 !== sha256Hex(new Uint8Array(peer.raw))) throw new EdgeTrustError("UNAUTHENTICATED", "the client certificate was not issued by this CA");
  return rec;
}

declare module "fastify" {
  interface FastifyRequest {
    /** Set by `requireDevice`: the device whose identity certificate authenticated the request. */
    deviceId?: string;
  }
}

/**
 * Renewal (`/v1/renew`, EST simplereenroll): the TLS client certificate must be one this CA issued. Revocation, expiry
 * (renewal is allowed a while after it) and the CSR are checked by `CertificateAuthority.renew`.
 */
export function requireIssuedCertificate(store: CaStore): AuthHook {
  return authHook(async (req) => {
    await issuedRecord(store, req);
  }, "client certificate issued by this CA");
}

/** Device routes: a device-identity certificate this CA issued, unrevoked, inside its validity period. */
export function requireDevice(store: CaStore): AuthHook {
  return authHook(async (req) => {
    const rec = await issuedRecord(store, req);
    if (rec.status === "revoked") throw new EdgeTrustError("FORBIDDEN", `device certificate ${rec.serial} is revoked`);
    const now = Date.now();
    if (Date.parse(rec.notBefore) > now || Date.parse(rec.notAfter) < now) throw new EdgeTrustError("FORBIDDEN", "the device certificate is outside its validity period");
    if (rec.profile !== "device-identity" || !rec.deviceId) throw new EdgeTrustError("FORBIDDEN", `a ${rec.profile} certificate is not a device identity`);
    req.deviceId = rec.deviceId;
  }, "device identity certificate");
}
