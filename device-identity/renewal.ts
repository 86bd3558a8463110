import { backoffDelay } from "../common/index.js";
import type * as x509 from "@peculiar/x509";

/** Certificates are backdated by the CA (clock skew); a device clock this far behind notBefore is still believed. */
const CLOCK_SKEW_MS = 5 * 60 * 1000;

export type Assessment =
  | { status: "valid"; renewAt: Date; notAfter: Date }
  | { status: "due"; renewAt: Date; notAfter: Date }
  /** Past notAfter: renew (the CA accepts a renewal for a while after expiry), and say so loudly. */
  | { status: "expired"; renewAt: Date; notAfter: Date }
  /** The device clock reads earlier than a certificate the CA issued: the clock is wrong, not the certificate. */
  | { status: "clock-behind"; renewAt: Date; notAfter: Date; detail: string };

/**
 * Where a certificate stands at `now`: renewal is due once `renewAtPercent` of its lifetime (notBefore → notAfter)
 * has passed. A clock behind notBefore cannot be right (the CA issued the certificate at notBefore + skew at the
 * latest), so it is reported rather than acted on: nothing is renewed or discarded on the word of a broken clock.
 */
export function assessCertificate(cert: Pick<x509.X509Certificate, "notBefore" | "notAfter">, now: Date, renewAtPercent: number): Assessment {
  const nb = cert.notBefore.getTime();
  const na = cert.notAfter.getTime();
  const renewAt = new Date(nb + ((na - nb) * renewAtPercent) / 100);
  const notAfter = cert.notAfter;
  const t = now.getTime();
  if (t < nb - CLOCK_SKEW_MS) {
    return {
      status: "clock-behind", renewAt, notAfter,
      detail: `the device clock reads ${now.toISOString()}, before ${cert.notBefore.toISOString()} when the CA issued this certificate: the clock is wrong (no RTC battery, no NTP yet?)`,
    };
  }
  if (t >= na) return { status: "expired", renewAt, notAfter };
  if (t >= renewAt.getTime()) return { status: "due", renewAt, notAfter };
  return { status: "valid", renewAt, notAfter };
}

/** Retry delay after `failures` consecutive failures: initial·2^(n-1), capped, with ±20% jitter so fleets spread out. */
export function backoffMs(failures: number, initialMs: number, maxMs: number, random: () => number = Math.random): number {
  return backoffDelay(failures - 1, { initialMs, maxMs, jitter: 0.2, random });
}

/**
 * The local clock against the CA's (HTTP Date). Returns a message when they disagree by more than the skew: a
 * certificate that looks expired (or not yet valid) by a wrong clock is not the certificate's fault.
 */
export function clockDisagreement(now: Date, caDate: Date | undefined): string | undefined {
  if (!caDate || Number.isNaN(caDate.getTime())) return undefined;
  const d = now.getTime() - caDate.getTime();
  if (Math.abs(d) <= CLOCK_SKEW_MS) return undefined;
  return `the device clock (${now.toISOString()}) is ${Math.round(Math.abs(d) / 60000)} minutes ${d > 0 ? "ahead of" : "behind"} the CA's (${caDate.toISOString()}): fix the clock (NTP)`;
}
