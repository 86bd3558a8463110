import "reflect-metadata";
import { randomBytes } from "node:crypto";
import * as x509 from "@peculiar/x509";
import { EdgeTrustError, createLogger, type Logger } from "../common/index.js";
import { keyStoreCrypto, keyStoreCryptoKey, type KeyAlgorithm, type KeyStore } from "../hsm/index.js";
import { issueCertificate } from "../pki/index.js";
import { crlUrlOf, signRootCrl } from "./root-crl.js";
import type { CaRecord, CaStore } from "./store.js";
import { announce } from "./shared/events.js";

interface InitCaOptions {
  rootName?: string;
  issuingName?: string;
  algorithm?: KeyAlgorithm;
  rootLifetimeSeconds?: number;
  issuingLifetimeSeconds?: number;
  actor?: string;
  /** Name of the first admin token (its plaintext is returned once). */
  adminTokenName?: string;
  /** `ca.publicBaseUrl`: the issuing CA certificate names the root's CRL there (CRL distribution point). */
  publicBaseUrl?: string;
  /** Validity of the root CRL signed by this ceremony (default 365 days). */
  rootCrlValidityDays?: number;
  logger?: Logger;
}

export interface InitCaResult {
  root: CaRecord;
  issuing: CaRecord;
  adminToken: string;
  adminTokenId: string;
}

function warnIfSoftware(keys: KeyStore, log: Logger): void {
  if (keys.kind === "software") {
    log.warn("**************************************************************************************************");
    log.warn("CA KEYS ARE IN THE SOFTWARE KEY STORE — DEVELOPMENT ONLY. Anyone with the files and passphrase can");
    log.warn("issue certificates for your fleet. Use hsm.backend: pkcs11 (SoftHSM2 in dev, a real HSM in production).");
    log.warn("**************************************************************************************************");
  }
}

function caId(cert: x509.X509Certificate): string {
  const ski = cert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId;
  if (!ski) throw new EdgeTrustError("INTERNAL", "CA certificate has no subject key identifier");
  return ski.toLowerCase();
}

function toRecord(cert: x509.X509Certificate, kind: CaRecord["kind"], name: string, parentId: string | null, keyLabel: string, keyAlgorithm: KeyAlgorithm): Omit<CaRecord, "createdAt"> {
  return {
    id: caId(cert), kind, name, parentId, certPem: cert.toString("pem"), keyLabel, keyAlgorithm,
    notBefore: cert.notBefore.toISOString(), notAfter: cert.notAfter.toISOString(), status: "active",
  };
}

async function issuingCa(store: CaStore, keys: KeyStore, root: CaRecord, name: string, algorithm: KeyAlgorithm, lifetimeSeconds: number | undefined, actor: string, publicBaseUrl: string | undefined): Promise<CaRecord> {
  const crypto = keyStoreCrypto();
  const rootCert = new x509.X509Certificate(root.certPem);
  const rootKey = await keyStoreCryptoKey(keys, { label: root.keyLabel });
  const label = `edgetrust-ca-issuing-${randomBytes(6).toString("hex")}`;
  await keys.generateKey(label, algorithm);
  const pub = await keys.getPublicKey({ label });
  const cert = await issueCertificate({
    profile: "issuing-ca",
    subject: { commonName: name, organization: "edgetrust" },
    publicKey: pub.spki,
    issuer: { certificate: rootCert, signingKey: rootKey, crypto },
    ...(lifetimeSeconds ? { lifetimeSeconds } : {}),
    // The root's CRL, so a relying party can check the issuing CA too (-crl_check_all). No OCSP URL: the root key is
    // offline and cannot sign OCSP answers for it.
    ...(publicBaseUrl ? { crlUrl: crlUrlOf(publicBaseUrl, root.id) } : {}),
  });
  return store.addCa(toRecord(cert, "issuing", name, root.id, label, algorithm), actor);
}

/**
 * Create the hierarchy: an offline root (self-signed) and an online issuing CA, both keys generated inside the key
 * store (HSM), plus the first admin API token. Refuses when the store already has a CA.
 */
export async function initCa(store: CaStore, keys: KeyStore, opts: InitCaOptions = {}): Promise<InitCaResult> {
  const log = opts.logger ?? createLogger("ca-service");
  warnIfSoftware(keys, log);
  if ((await store.listCas()).length > 0) throw new EdgeTrustError("CONFLICT", "this CA store is already initialised", { hint: "use `edgetrust ca rollover` to add an issuing CA" });
  const actor = opts.actor ?? "cli:ca-init";
  const algorithm = opts.algorithm ?? "EC-P256";
  const crypto = keyStoreCrypto();
  const rootName = opts.rootName ?? "edgetrust Root CA";
  const rootLabel = `edgetrust-ca-root-${randomBytes(6).toString("hex")}`;
  await keys.generateKey(rootLabel, algorithm === "EC-P256" ? "EC-P384" : algorithm);
  const rootAlg = algorithm === "EC-P256" ? "EC-P384" : algorithm;
  const rootPub = await keys.getPublicKey({ label: rootLabel });
  const rootCert = await issueCertificate({
    profile: "root-ca",
    subject: { commonName: rootName, organization: "edgetrust" },
    publicKey: rootPub.spki,
    issuer: { signingKey: await keyStoreCryptoKey(keys, { label: rootLabel }), crypto },
    ...(opts.rootLifetimeSeconds ? { lifetimeSeconds: opts.rootLifetimeSeconds } : {}),
  });
  const root = await store.addCa(toRecord(rootCert, "root", rootName, null, rootLabel, rootAlg), actor);
  await signRootCrl(store, keys, root, opts.rootCrlValidityDays);
  const issuing = await issuingCa(store, keys, root, opts.issuingName ?? "edgetrust Issuing CA 1", algorithm, opts.issuingLifetimeSeconds, actor, opts.publicBaseUrl);
  const tok = await store.createToken(opts.adminTokenName ?? "initial-admin", "admin", actor);
  log.info({ root: root.id, issuing: issuing.id, keyStore: keys.kind }, "CA initialised");
  return { root, issuing, adminToken: tok.token, adminTokenId: tok.id };
}

interface RolloverOptions {
  name?: string;
  algorithm?: KeyAlgorithm;
  lifetimeSeconds?: number;
  /** Mark the previous issuing CAs retired (they keep serving CRL/OCSP and stay in the trust bundle). */
  retirePrevious?: boolean;
  /** `ca.publicBaseUrl` (the new issuing CA names the root's CRL there). */
  publicBaseUrl?: string;
  rootCrlValidityDays?: number;
  actor?: string;
  logger?: Logger;
}

/**
 * Issuing-CA rollover: a new intermediate under the same root, with validity overlapping the old one. Devices keep
 * trusting the root, so nothing is reprovisioned; the old CA keeps answering CRL/OCSP for what it issued.
 */
export async function rolloverIssuingCa(store: CaStore, keys: KeyStore, opts: RolloverOptions = {}): Promise<CaRecord> {
  const log = opts.logger ?? createLogger("ca-service");
  warnIfSoftware(keys, log);
  const roots = await store.listCas("root");
  const root = roots.at(-1);
  if (!root) throw new EdgeTrustError("NOT_FOUND", "no root CA in the store", { hint: "run `edgetrust ca init` first" });
  const prev = (await store.listCas("issuing")).filter((c) => c.status === "active");
  const actor = opts.actor ?? "cli:ca-rollover";
  const n = (await store.listCas("issuing")).length + 1;
  const rec = await issuingCa(store, keys, root, opts.name ?? `edgetrust Issuing CA ${n}`, opts.algorithm ?? (prev.at(-1)?.keyAlgorithm as KeyAlgorithm | undefined) ?? "EC-P256", opts.lifetimeSeconds, actor, opts.publicBaseUrl);
  // The root key is in use for this ceremony: re-sign the root CRL (fresh nextUpdate).
  await signRootCrl(store, keys, root, opts.rootCrlValidityDays);
  if (opts.retirePrevious) for (const p of prev) await store.setCaStatus(p.id, "retired", actor);
  // Every running `ca serve` on this store reloads its issuing CAs now (PostgreSQL NOTIFY; SQLite: its poll).
  await announce(store.db, { kind: "cas" });
  return rec;
}
