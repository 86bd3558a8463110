import "reflect-metadata";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type * as x509 from "@peculiar/x509";
import { EdgeTrustError, createLogger, writeFileAtomic, type Logger } from "../common/index.js";
import { SoftwareKeyStore, keyStoreCrypto, keyStoreCryptoKey, type KeyAlgorithm, type KeyStore } from "../hsm/index.js";
import { issueCertificate, type IdentityFields, type Issuer, type ModuleAttestation, type ProfileName, type SubjectFields } from "../pki/index.js";

export const DEV_HEADER = "# edgetrust DEVELOPMENT certificate — never use in production";

interface DevPkiOptions {
  out: string;
  trustDomain?: string;
  deviceId?: string;
  modules?: string[];
  /** The device's host name (edge hub SAN, Edge CA name constraints); default `<deviceId>.local`. */
  hostName?: string;
  leafDeviceId?: string;
  force?: boolean;
  /** When given, CA, device and hub keys are generated in (or reused from) this store and never written out. */
  keyStore?: KeyStore;
  /** Base URL for CRL/OCSP pointers in the certificates (default http://127.0.0.1:8443). */
  caUrl?: string;
  logger?: Logger;
}

export interface DevPkiFile {
  path: string;
  kind: "certificate" | "private-key" | "chain" | "trust-bundle";
  profile?: ProfileName;
  name: string;
  subject?: string;
  serial?: string;
  notAfter?: string;
  keyAlgorithm?: KeyAlgorithm;
  /** For keys kept in a key store: where (no PIN). */
  keyUri?: string;
  description: string;
}

export interface DevPkiManifest {
  warning: string;
  generatedAt: string;
  trustDomain: string;
  deviceId: string;
  hostName: string;
  modules: string[];
  leafDeviceId: string;
  keyBackend: "software" | "pkcs11";
  files: DevPkiFile[];
}

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** Placeholder attestation for development module certificates (no real image was attested). */
export const DEV_ATTESTATION: ModuleAttestation = { imageDigest: `sha256:${"0".repeat(64)}`, manifestVersion: 0, deploymentId: "certs-dev" };

function withHeader(pem: string): string {
  return `${DEV_HEADER}\n${pem.trimEnd()}\n`;
}

/**
 * Generate a complete development PKI into `out`: root → issuing CA → device identity, device Edge CA → edge hub
 * server + one certificate per module, and a leaf device; keys, chains, a trust bundle and manifest.json.
 */
export async function createDevPki(opts: DevPkiOptions): Promise<DevPkiManifest> {
  const out = resolve(opts.out);
  const trustDomain = opts.trustDomain ?? "example.com";
  const deviceId = opts.deviceId ?? "dev1";
  const modules = opts.modules ?? ["tempSensor"];
  const hostName = opts.hostName ?? `${deviceId.toLowerCase()}.local`;
  const leafDeviceId = opts.leafDeviceId ?? `${deviceId}-leaf1`;
  const caUrl = (opts.caUrl ?? "http://127.0.0.1:8443").replace(/\/$/, "");
  const log = opts.logger ?? createLogger("certs-dev");
  for (const m of modules) {
    if (!ID_RE.test(m)) throw new EdgeTrustError("INVALID_INPUT", `module name ${JSON.stringify(m)} is not allowed`, { hint: "letters, digits, . _ -" });
  }
  if (new Set(modules).size !== modules.length) throw new EdgeTrustError("INVALID_INPUT", "module names must be distinct");
  if (!ID_RE.test(deviceId) || !ID_RE.test(leafDeviceId)) throw new EdgeTrustError("INVALID_INPUT", "device ids may use letters, digits, . _ -");

  if (existsSync(out)) {
    if (!statSync(out).isDirectory()) throw new EdgeTrustError("CONFLICT", `${out} exists and is not a directory`);
    if (readdirSync(out).length > 0 && !opts.force) {
      throw new EdgeTrustError("CONFLICT", `${out} is not empty`, { hint: "choose an empty directory or pass --force to overwrite" });
    }
  }
  mkdirSync(out, { recursive: true, mode: 0o700 });
  log.warn({ out }, "certs-dev: generating a DEVELOPMENT PKI — never use these certificates in production");

  // Keys nobody keeps in an HSM (modules, leaf devices make their own) come from a throw-away software store.
  const tmp = mkdtempSync(join(tmpdir(), "edgetrust-certs-dev-"));
  const soft = await SoftwareKeyStore.open({ dir: tmp, passphrase: randomBytes(24).toString("base64url"), logger: log });
  const shim = keyStoreCrypto();
  const files: DevPkiFile[] = [];
  const now = new Date().toISOString();

  try {
    const hsm = opts.keyStore;
    const keyFor = async (name: string, alg: KeyAlgorithm, inHsm: boolean): Promise<{ store: KeyStore; label: string; uri: string }> => {
      const store = inHsm && hsm ? hsm : soft;
      const label = store === soft ? name : `certs-dev-${name}`;
      let info;
      try {
        info = await store.getKey({ label });
        if (info.algorithm !== alg) throw new EdgeTrustError("CONFLICT", `key ${label} exists in the key store as ${info.algorithm}, wanted ${alg}`);
      } catch (e) {
        if (!(e instanceof EdgeTrustError) || e.code !== "HSM_KEY_NOT_FOUND") throw e;
        info = await store.generateKey(label, alg);
      }
      return { store, label, uri: info.uri };
    };

    const issued = new Map<string, x509.X509Certificate>();
    const issuers = new Map<string, Issuer>();

    const make = async (p: {
      name: string; profile: ProfileName; subject: SubjectFields; identity?: IdentityFields; alg: KeyAlgorithm; inHsm: boolean;
      issuer?: string; chain: string[]; attestation?: ModuleAttestation; description: string;
    }): Promise<void> => {
      const k = await keyFor(p.name, p.alg, p.inHsm);
      const pub = await k.store.getPublicKey({ label: k.label });
      const issuer: Issuer = p.issuer
        ? (issuers.get(p.issuer) as Issuer)
        : { signingKey: await keyStoreCryptoKey(k.store, { label: k.label }), crypto: shim };
      const cert = await issueCertificate({
        profile: p.profile, subject: p.subject, identity: p.identity, publicKey: pub.spki, issuer, attestation: p.attestation,
        ...(p.profile === "root-ca" ? {} : { crlUrl: `${caUrl}/v1/crl/${p.issuer ?? "root"}.crl`, ocspUrl: `${caUrl}/ocsp` }),
      });
      issued.set(p.name, cert);
      if (p.profile === "root-ca" || p.profile === "issuing-ca" || p.profile === "edge-ca") {
        issuers.set(p.name, { certificate: cert, signingKey: await keyStoreCryptoKey(k.store, { label: k.label }), crypto: shim });
      }
      const certPath = `${p.name}.cert.pem`;
      writeFileAtomic(join(out, certPath), withHeader(cert.toString("pem")), 0o644);
      files.push({
        path: certPath, kind: "certificate", profile: p.profile, name: p.name, subject: cert.subject, serial: cert.serialNumber,
        notAfter: cert.notAfter.toISOString(), keyAlgorithm: pub.algorithm, description: p.description,
      });
      if (k.store === soft) {
        const keyPath = `${p.name}.key.pem`;
        writeFileAtomic(join(out, keyPath), withHeader(await soft.exportPrivateKeyPem({ label: k.label })), 0o600);
        files.push({ path: keyPath, kind: "private-key", name: p.name, keyAlgorithm: pub.algorithm, description: `private key of ${p.name} (unencrypted PKCS#8, development only)` });
      } else {
        files[files.length - 1]!.keyUri = k.uri;
      }
      if (p.chain.length > 0) {
        const chainPath = `${p.name}.chain.pem`;
        const pems = [cert, ...p.chain.map((c) => issued.get(c) as x509.X509Certificate)].map((c) => c.toString("pem"));
        writeFileAtomic(join(out, chainPath), withHeader(pems.join("\n")), 0o644);
        files.push({ path: chainPath, kind: "chain", profile: p.profile, name: p.name, description: `${p.name} followed by its intermediates (${p.chain.join(", ")}), without the root` });
      }
    };

    const org = "edgetrust development";
    await make({ name: "root-ca", profile: "root-ca", subject: { commonName: "edgetrust Dev Root CA", organization: org }, alg: "EC-P384", inHsm: true, chain: [], description: "root CA (trust anchor)" });
    await make({ name: "issuing-ca", profile: "issuing-ca", subject: { commonName: "edgetrust Dev Issuing CA", organization: org }, alg: "EC-P256", inHsm: true, issuer: "root-ca", chain: [], description: "issuing CA (ca-service)" });
    await make({
      name: "device-identity", profile: "device-identity", subject: { commonName: deviceId, organization: org }, identity: { trustDomain, deviceId },
      alg: "EC-P256", inHsm: true, issuer: "issuing-ca", chain: ["issuing-ca"], description: `identity of device ${deviceId}`,
    });
    await make({
      name: "edge-ca", profile: "edge-ca", subject: { commonName: `${deviceId} Edge CA`, organization: org },
      identity: { trustDomain, deviceId, dnsNames: [...new Set(["edgehub", "localhost", hostName])] },
      alg: "EC-P256", inHsm: true, issuer: "issuing-ca", chain: ["issuing-ca"], description: `Edge CA of device ${deviceId} (name-constrained)`,
    });
    await make({
      name: "edge-hub-server", profile: "edge-hub-server", subject: { commonName: "edgehub", organization: org }, identity: { hostName },
      alg: "EC-P256", inHsm: true, issuer: "edge-ca", chain: ["edge-ca", "issuing-ca"], description: "edge hub TLS server",
    });
    for (const m of modules) {
      await make({
        name: `module-${m}`, profile: "module", subject: { commonName: m, organization: org }, identity: { trustDomain, deviceId, moduleId: m },
        attestation: DEV_ATTESTATION, alg: "EC-P256", inHsm: false, issuer: "edge-ca", chain: ["edge-ca", "issuing-ca"],
        description: `module ${m} (placeholder attestation: all-zero digest, manifest version 0)`,
      });
    }
    await make({
      name: `leaf-${leafDeviceId}`, profile: "leaf-device", subject: { commonName: leafDeviceId, organization: org }, identity: { trustDomain, deviceId: leafDeviceId },
      alg: "EC-P256", inHsm: false, issuer: "issuing-ca", chain: ["issuing-ca"], description: `leaf device ${leafDeviceId}`,
    });

    const root = issued.get("root-ca") as x509.X509Certificate;
    writeFileAtomic(join(out, "trust-bundle.pem"), withHeader(root.toString("pem")), 0o644);
    files.push({ path: "trust-bundle.pem", kind: "trust-bundle", name: "trust-bundle", description: "trust anchors: the root CA" });
    const ca = ["issuing-ca", "edge-ca"].map((n) => (issued.get(n) as x509.X509Certificate).toString("pem"));
    writeFileAtomic(join(out, "ca-chain.pem"), withHeader([...ca, root.toString("pem")].join("\n")), 0o644);
    files.push({ path: "ca-chain.pem", kind: "chain", name: "ca-chain", description: "issuing CA, Edge CA and root (for tools that want every CA in one file)" });

    const manifest: DevPkiManifest = {
      warning: DEV_HEADER.replace(/^# /, ""),
      generatedAt: now,
      trustDomain, deviceId, hostName, modules, leafDeviceId,
      keyBackend: hsm ? hsm.kind : "software",
      files,
    };
    writeFileAtomic(join(out, "manifest.json"), JSON.stringify(manifest, null, 2) + "\n", 0o644);
    return manifest;
  } finally {
    await soft.close();
    rmSync(tmp, { recursive: true, force: true });
  }
}
