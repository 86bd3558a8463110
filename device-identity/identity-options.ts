import type { Logger } from "../common/index.js";
import type { KeyAlgorithm, KeyStore, TlsKeyOptions } from "../hsm/index.js";
import type { CaClient } from "./ca-client.js";
import type { Assessment } from "./renewal.js";

export type CertKind = "device" | "edge-ca" | "hub";
export const CERT_KINDS: readonly CertKind[] = ["device", "edge-ca", "hub"];

export interface IdentityOptions {
  deviceId: string;
  trustDomain: string;
  hostName?: string;
  stateDir: string;
  keys: KeyStore;
  keyAlgorithm: KeyAlgorithm;
  hubKeyLabel: string;
  /** Node TLS key options for an HSM key (the TLS key source: OpenSSL engine for PKCS#11). */
  tlsKey: (label: string) => Promise<TlsKeyOptions>;
  caUrl: string;
  /** PEM the CA's HTTPS certificate chains to before the device has a trust bundle. */
  caTrust: string[];
  renewAtPercent: { device: number; edgeCa: number; hub: number };
  hubLifetimeSeconds: number;
  rotateKeys: boolean;
  retryInitialMs: number;
  retryMaxMs: number;
  /** Why the HSM cannot be used right now (hsm-guard.ts), if so: due renewals wait (with backoff) instead of trying. */
  hsmProblem?: () => string | undefined;
  /** Fresh attestation result to send with a renewal (when the CA requires one). */
  attestationForRenewal?: (ca: CaClient) => Promise<string>;
  log: Logger;
  /** The clock; injectable because a wrong clock is a fault tests must produce on demand. */
  now?: () => Date;
}

export interface KindStatus {
  kind: CertKind;
  serial: string;
  notBefore: string;
  notAfter: string;
  renewAt: string;
  status: Assessment["status"];
  keyLabel: string;
  failures: number;
  nextRetryAt?: string;
  lastError?: string;
}
