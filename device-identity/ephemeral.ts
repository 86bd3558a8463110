import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type * as x509 from "@peculiar/x509";
import { createLogger } from "../common/index.js";
import { issueCertificate } from "../pki/index.js";
import type { DockerClient } from "../engine/index.js";
import { AttestedModules } from "./attested-modules.js";
import { WorkloadSockets } from "./workload-api.js";
import { startManagementApi } from "./management-api.js";
import { checkAttestedContainer } from "./container-check.js";
import { checkCaller } from "./peer.js";
import { issueModuleCertificate, type EdgeCa } from "./module-issuer.js";

/**
 * An ephemeral device identity, in-process: a throwaway root and Edge CA with in-memory keys, the real management
 * socket and per-module workload sockets, checking containers against the real engine. For tests, benchmarks and
 * experiments only — a real device runs `edgetrust device run`, whose keys live in the HSM.
 */
export interface EphemeralCa {
  certificate: x509.X509Certificate;
  signingKey: CryptoKey;
  publicKey: CryptoKey;
}

export interface EphemeralIdentity {
  dir: string;
  deviceId: string;
  trustDomain: string;
  mgmtSocket: string;
  socketsDir: string;
  rootPem: string;
  modules: AttestedModules;
  sockets: WorkloadSockets;
  /** The in-memory root and Edge CA (e.g. to issue the edge hub's server certificate under the same Edge CA). */
  pki: { root: EphemeralCa; edgeCa: EphemeralCa };
  close(): Promise<void>;
}

export interface EphemeralIdentityOptions {
  /** Module certificate lifetime (default 3600 s); certificates start 5 minutes back (clock skew). */
  moduleLifetimeSeconds?: number;
  /** Edge CA DNS name constraints (default: the device id; add `edgehub`, `localhost` to issue the hub's cert). */
  edgeCaDnsNames?: string[];
}

const EC = { name: "ECDSA", namedCurve: "P-256" } as const;

async function keyPair(): Promise<CryptoKeyPair> {
  return (await crypto.subtle.generateKey(EC, true, ["sign", "verify"])) as CryptoKeyPair;
}

/** A root and a device Edge CA made with in-memory WebCrypto keys. */
export async function makeEphemeralEdgeCa(trustDomain: string, deviceId: string, dnsNames: string[] = [deviceId]): Promise<{ root: EphemeralCa; edgeCa: EphemeralCa }> {
  const rootKeys = await keyPair();
  const rootCert = await issueCertificate({ profile: "root-ca", subject: { commonName: "edgetrust ephemeral root" }, publicKey: rootKeys.publicKey, issuer: { signingKey: rootKeys.privateKey } });
  const edgeKeys = await keyPair();
  const edgeCert = await issueCertificate({
    profile: "edge-ca",
    subject: { commonName: `${deviceId} edge CA` },
    identity: { trustDomain, deviceId, dnsNames },
    publicKey: edgeKeys.publicKey,
    issuer: { certificate: rootCert, signingKey: rootKeys.privateKey },
  });
  return {
    root: { certificate: rootCert, signingKey: rootKeys.privateKey, publicKey: rootKeys.publicKey },
    edgeCa: { certificate: edgeCert, signingKey: edgeKeys.privateKey, publicKey: edgeKeys.publicKey },
  };
}

export async function startEphemeralIdentity(docker: DockerClient, deviceId: string, trustDomain = "edgetrust.test", opts: EphemeralIdentityOptions = {}): Promise<EphemeralIdentity> {
  const dir = mkdtempSync(join(tmpdir(), "et-dev-"));
  const log = createLogger("device-identity", { level: "silent" });
  const pki = await makeEphemeralEdgeCa(trustDomain, deviceId, opts.edgeCaDnsNames);
  const lifetimeSeconds = opts.moduleLifetimeSeconds ?? 3600;
  const edgeCa: EdgeCa = { certificate: pki.edgeCa.certificate, signingKey: pki.edgeCa.signingKey, chain: [pki.edgeCa.certificate] };
  const rootPem = join(dir, "root.pem");
  writeFileSync(rootPem, pki.root.certificate.toString("pem"));
  const modules = new AttestedModules(join(dir, "attested.json"));
  const socketsDir = join(dir, "modules");
  const checkContainer = (m: Parameters<typeof checkAttestedContainer>[1]) => checkAttestedContainer(docker, m);
  const sockets = new WorkloadSockets(socketsDir, modules, {
    issueModuleCertificate: (m, csr) => issueModuleCertificate({ trustDomain, deviceId, lifetimeSeconds, edgeCa: () => edgeCa, checkContainer }, m, csr),
    trustBundle: () => [readFileSync(rootPem, "utf8")],
    checkCaller: (m, socket) => checkCaller(docker, m, socket),
  }, log);
  const mgmtSocket = join(dir, "mgmt.sock");
  const mgmt = await startManagementApi({
    path: mgmtSocket,
    modules,
    sockets,
    backend: { checkContainer: (m) => checkAttestedContainer(docker, m, { allowCreated: true }), status: () => ({ deviceId, ephemeral: true }) },
    log,
  });
  return {
    dir, deviceId, trustDomain, mgmtSocket, socketsDir, rootPem, modules, sockets, pki,
    close: async () => {
      await sockets.closeAll();
      await mgmt.close();
    },
  };
}
