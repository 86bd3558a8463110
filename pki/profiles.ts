import { KeyUsageFlags } from "@peculiar/x509";
import type { KeyAlgorithm } from "../hsm/index.js";

/** The certificate kinds of the trust chain (DESIGN.md §2). */
export type ProfileName = "root-ca" | "issuing-ca" | "device-identity" | "edge-ca" | "edge-hub-server" | "module" | "leaf-device";

export const EKU_SERVER_AUTH = "1.3.6.1.5.5.7.3.1";
export const EKU_CLIENT_AUTH = "1.3.6.1.5.5.7.3.2";

/** What an issued certificate must name, besides its subject CN. */
export interface ProfileRequirements {
  /** URI SAN `edgetrust://<td>/devices/<deviceId>` (device-identity, leaf-device). */
  deviceUri: boolean;
  /** URI SAN `edgetrust://<td>/devices/<d>/modules/<m>` + attestation extension (module). */
  moduleUri: boolean;
  /** Critical name constraints: URI host = trust domain, DNS = the device's names (edge-ca). */
  nameConstraints: boolean;
  /** DNS SANs `edgehub`, `localhost` and the device's host name (edge-hub-server). */
  hubDnsNames: boolean;
}

export interface Profile {
  name: ProfileName;
  description: string;
  /** Validity; a certificate never outlives its issuer (notAfter is clamped to the issuer's). */
  lifetimeSeconds: number;
  ca: boolean;
  /** basicConstraints pathLenConstraint for CAs; undefined = unlimited. */
  pathLength?: number;
  /** x509 KeyUsageFlags bit set; the extension is critical. */
  keyUsage: number;
  /** EKU OIDs; empty = no EKU extension (CAs). */
  extendedKeyUsage: string[];
  /** Key algorithms a subject key may use. */
  allowedKeyAlgorithms: KeyAlgorithm[];
  requires: ProfileRequirements;
}

const HOUR = 3600;
const DAY = 24 * HOUR;
const YEAR = 365 * DAY;

const ALL_KEYS: KeyAlgorithm[] = ["EC-P256", "EC-P384", "RSA-2048", "RSA-3072"];
const CA_KEYS: KeyAlgorithm[] = ["EC-P256", "EC-P384", "RSA-3072"];
const NONE: ProfileRequirements = { deviceUri: false, moduleUri: false, nameConstraints: false, hubDnsNames: false };

/** Built-in profiles; policy/ may override lifetimes (`withLifetime`) and key algorithms. */
const PROFILES: Readonly<Record<ProfileName, Readonly<Profile>>> = {
  "root-ca": {
    name: "root-ca",
    description: "Offline root CA (self-signed)",
    lifetimeSeconds: 20 * YEAR,
    ca: true,
    keyUsage: KeyUsageFlags.keyCertSign | KeyUsageFlags.cRLSign,
    extendedKeyUsage: [],
    allowedKeyAlgorithms: CA_KEYS,
    requires: NONE,
  },
  "issuing-ca": {
    name: "issuing-ca",
    description: "Issuing CA of ca-service (signs devices, Edge CAs, leaf devices)",
    lifetimeSeconds: 5 * YEAR,
    ca: true,
    pathLength: 1,
    keyUsage: KeyUsageFlags.keyCertSign | KeyUsageFlags.cRLSign,
    extendedKeyUsage: [],
    allowedKeyAlgorithms: CA_KEYS,
    requires: NONE,
  },
  "device-identity": {
    name: "device-identity",
    description: "Device identity (TLS client to the cloud, evidence signing)",
    lifetimeSeconds: 365 * DAY,
    ca: false,
    keyUsage: KeyUsageFlags.digitalSignature,
    extendedKeyUsage: [EKU_CLIENT_AUTH],
    allowedKeyAlgorithms: ALL_KEYS,
    requires: { ...NONE, deviceUri: true },
  },
  "edge-ca": {
    name: "edge-ca",
    description: "Device Edge CA (issues module and edge hub certificates for one device only)",
    lifetimeSeconds: 90 * DAY,
    ca: true,
    pathLength: 0,
    keyUsage: KeyUsageFlags.keyCertSign | KeyUsageFlags.cRLSign,
    extendedKeyUsage: [],
    allowedKeyAlgorithms: CA_KEYS,
    requires: { ...NONE, nameConstraints: true },
  },
  "edge-hub-server": {
    name: "edge-hub-server",
    description: "Edge hub TLS server",
    lifetimeSeconds: 30 * DAY,
    ca: false,
    keyUsage: KeyUsageFlags.digitalSignature,
    extendedKeyUsage: [EKU_SERVER_AUTH],
    allowedKeyAlgorithms: ALL_KEYS,
    requires: { ...NONE, hubDnsNames: true },
  },
  module: {
    name: "module",
    description: "Attested module (TLS client to the edge hub); short-lived",
    lifetimeSeconds: 12 * HOUR,
    ca: false,
    keyUsage: KeyUsageFlags.digitalSignature,
    extendedKeyUsage: [EKU_CLIENT_AUTH],
    allowedKeyAlgorithms: ["EC-P256", "EC-P384", "RSA-2048", "RSA-3072"],
    requires: { ...NONE, moduleUri: true },
  },
  "leaf-device": {
    name: "leaf-device",
    description: "Leaf device connecting through the gateway's edge hub",
    lifetimeSeconds: 365 * DAY,
    ca: false,
    keyUsage: KeyUsageFlags.digitalSignature,
    extendedKeyUsage: [EKU_CLIENT_AUTH],
    allowedKeyAlgorithms: ALL_KEYS,
    requires: { ...NONE, deviceUri: true },
  },
};

export function getProfile(p: Profile | ProfileName): Profile {
  return typeof p === "string" ? { ...PROFILES[p] } : p;
}
