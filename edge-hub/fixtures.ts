/**
 * Test fixtures for the hub (used by the tests and the benchmark, not by the hub): a development PKI from certs-dev,
 * plus the certificates the attack tests need (another device's Edge CA, modules with chosen image digests, a revoked
 * leaf, odd SANs) issued with pki/ from the certs-dev CA keys, a CRL, a policy and a ready-to-start hub.
 */
import "reflect-metadata";
import { webcrypto } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { createLogger } from "../common/index.js";
import { createDevPki } from "../certs-dev/generate.js";
import { issueCertificate, type Issuer } from "../pki/index.js";
import { parsePolicy, type Policy } from "../policy/index.js";
import { MemoryAttestationSource } from "./attestation.js";
import { CrlCache } from "./crl.js";
import { EdgeHub, type HubOptions } from "./hub.js";
import { HubStore } from "./store.js";
import { ClientVerifier } from "./verify.js";

const subtle = webcrypto.subtle as SubtleCrypto;
const crypto = webcrypto as unknown as Crypto;

export const TRUST_DOMAIN = "example.com";
export const DEVICE = "d1";
export const digest = (c: string): string => `sha256:${c.repeat(64).slice(0, 64)}`;

export interface Credential {
  cert: x509.X509Certificate;
  /** Certificate followed by its intermediates (what a client presents). */
  chainPem: string;
  keyPem: string;
}

function pemBody(pem: string): Uint8Array<ArrayBuffer> {
  const b64 = pem.replace(/^#.*$/gm, "").replace(/-----[^-]+-----/g, "").replace(/\s+/g, "");
  return new Uint8Array(Buffer.from(b64, "base64")) as Uint8Array<ArrayBuffer>;
}

async function importKey(file: string, curve: "P-256" | "P-384"): Promise<CryptoKey> {
  return subtle.importKey("pkcs8", pemBody(readFileSync(file, "utf8")), { name: "ECDSA", namedCurve: curve }, false, ["sign"]);
}

async function newKey(): Promise<{ pair: CryptoKeyPair; pem: string }> {
  const pair = (await subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"])) as CryptoKeyPair;
  const der = Buffer.from(await subtle.exportKey("pkcs8", pair.privateKey));
  const pem = `-----BEGIN PRIVATE KEY-----\n${der.toString("base64").replace(/(.{64})/g, "$1\n").trimEnd()}\n-----END PRIVATE KEY-----\n`;
  return { pair, pem };
}

export class TestPki {
  private constructor(
    readonly dir: string,
    readonly root: x509.X509Certificate,
    readonly issuing: Issuer & { certificate: x509.X509Certificate },
    readonly edgeCa: Issuer & { certificate: x509.X509Certificate },
  ) {}

  static async create(): Promise<TestPki> {
    const dir = mkdtempSync(join(tmpdir(), "edgehub-pki-"));
    const out = join(dir, "pki");
    await createDevPki({ out, trustDomain: TRUST_DOMAIN, deviceId: DEVICE, modules: ["sensor"], leafDeviceId: "leaf1", logger: createLogger("certs-dev", { level: "error" }) });
    const cert = (n: string) => new x509.X509Certificate(readFileSync(join(out, `${n}.cert.pem`), "utf8").replace(/^#.*\n/gm, ""));
    const root = cert("root-ca");
    const issuing = { certificate: cert("issuing-ca"), signingKey: await importKey(join(out, "issuing-ca.key.pem"), "P-256"), crypto };
    const edgeCa = { certificate: cert("edge-ca"), signingKey: await importKey(join(out, "edge-ca.key.pem"), "P-256"), crypto };
    return new TestPki(dir, root, issuing, edgeCa);
  }

  get out(): string {
    return join(this.dir, "pki");
  }

  /** The hub's server chain + key from certs-dev. */
  hubServer(): { cert: string; key: string } {
    return { cert: readFileSync(join(this.out, "edge-hub-server.chain.pem"), "utf8"), key: readFileSync(join(this.out, "edge-hub-server.key.pem"), "utf8") };
  }

  /** Root, issuing CA and Edge CA: what the hub's TLS handshake accepts a client chain to end in. */
  clientCa(): string[] {
    return [this.root, this.issuing.certificate, this.edgeCa.certificate].map((c) => c.toString("pem"));
  }

  rootPem(): string {
    return this.root.toString("pem");
  }

  private cred(cert: x509.X509Certificate, chain: x509.X509Certificate[], keyPem: string): Credential {
    return { cert, chainPem: [cert, ...chain].map((c) => c.toString("pem")).join("\n"), keyPem };
  }

  /** A module certificate; `validity` makes one outside its validity period (e.g. expired an hour ago). */
  async module(name: string, att: { imageDigest: string; manifestVersion: number }, edgeCa: Issuer & { certificate: x509.X509Certificate } = this.edgeCa, deviceId = DEVICE, validity?: { notBefore: Date; lifetimeSeconds: number }): Promise<Credential> {
    const k = await newKey();
    const cert = await issueCertificate({
      profile: "module", subject: { commonName: name }, identity: { trustDomain: TRUST_DOMAIN, deviceId, moduleId: name },
      attestation: att, publicKey: k.pair.publicKey, issuer: edgeCa, ...(validity ?? {}),
    });
    return this.cred(cert, [edgeCa.certificate, this.issuing.certificate], k.pem);
  }

  async leaf(deviceId: string, validity?: { notBefore: Date; lifetimeSeconds: number }): Promise<Credential> {
    const k = await newKey();
    const cert = await issueCertificate({
      profile: "leaf-device", subject: { commonName: deviceId }, identity: { trustDomain: TRUST_DOMAIN, deviceId }, publicKey: k.pair.publicKey, issuer: this.issuing,
      ...(validity ?? {}),
    });
    return this.cred(cert, [this.issuing.certificate], k.pem);
  }

  /** Another device's Edge CA (same issuing CA, so the TLS handshake itself accepts its modules). */
  async otherEdgeCa(deviceId: string): Promise<Issuer & { certificate: x509.X509Certificate }> {
    const k = await newKey();
    const cert = await issueCertificate({
      profile: "edge-ca", subject: { commonName: `${deviceId} Edge CA` }, identity: { trustDomain: TRUST_DOMAIN, deviceId, dnsNames: ["edgehub", "localhost"] },
      publicKey: k.pair.publicKey, issuer: this.issuing,
    });
    return { certificate: cert, signingKey: k.pair.privateKey, crypto };
  }

  /** A client certificate from the issuing CA with arbitrary SANs (pki/ refuses to make these; an attacker's CA bug might). */
  async oddLeaf(sans: x509.JsonGeneralName[], issuer: Issuer & { certificate: x509.X509Certificate } = this.issuing): Promise<Credential> {
    const k = await newKey();
    const exts: x509.Extension[] = [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension(["1.3.6.1.5.5.7.3.2"]),
      await x509.SubjectKeyIdentifierExtension.create(k.pair.publicKey, false, crypto),
      new x509.AuthorityKeyIdentifierExtension(issuer.certificate.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId ?? "", false),
    ];
    if (sans.length > 0) exts.push(new x509.SubjectAlternativeNameExtension(sans, false));
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: "7f" + Buffer.from(webcrypto.getRandomValues(new Uint8Array(15))).toString("hex"),
      subject: "CN=odd", issuer: issuer.certificate.subject, notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 3_600_000),
      publicKey: k.pair.publicKey, signingKey: issuer.signingKey, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" }, extensions: exts,
    }, crypto);
    return this.cred(cert, issuer === this.issuing ? [this.issuing.certificate] : [issuer.certificate, this.issuing.certificate], k.pem);
  }

  /** A CRL of the issuing CA listing `revoked`. */
  async crl(revoked: x509.X509Certificate[], thisUpdate = new Date()): Promise<Buffer> {
    const crl = await x509.X509CrlGenerator.create({
      issuer: this.issuing.certificate.subject, thisUpdate, nextUpdate: new Date(thisUpdate.getTime() + 86_400_000),
      entries: revoked.map((c) => ({ serialNumber: c.serialNumber, revocationDate: new Date() })),
      signingKey: this.issuing.signingKey, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
    }, crypto);
    return Buffer.from(crl.rawData);
  }

  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export const TEST_POLICY_YAML = `
version: 1
mode: enforce
trust:
  keys:
    - { kid: k1, alg: ES256, kty: EC, crv: P-256, x: "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", y: "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0" }
  threshold: 1
images:
  registries: ["127.0.0.1:5000"]
modules:
  allow: ["*"]
hub:
  publish:
    - id: module-telemetry
      principals: [module]
      topics: ["devices/{device}/modules/{module}/messages/events/#"]
    - id: device-telemetry
      principals: [device, leaf]
      topics: ["devices/{device}/messages/events/#"]
    - id: twin-and-methods
      principals: [device, module, leaf]
      topics: ["$iothub/twin/#", "$iothub/methods/res/#"]
    - id: status
      principals: [module, leaf]
      topics: ["status/{device}/#"]
  subscribe:
    - id: module-inputs
      principals: [module]
      topics: ["devices/{device}/modules/{module}/inputs/#"]
    - id: twin-and-methods
      principals: [device, module, leaf]
      topics: ["$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#", "$iothub/methods/POST/#"]
    - id: status-watch
      principals: [module]
      modules: ["monitor"]
      topics: ["status/#"]
privacy:
  redact:
    - path: location
      action: remove
    - path: operator.name
      action: hash
`;

export function testPolicy(): Policy {
  return parsePolicy(TEST_POLICY_YAML, "test-policy.yaml");
}

export interface TestHub {
  hub: EdgeHub;
  attestation: MemoryAttestationSource;
  crl: CrlCache;
  store: HubStore;
  dir: string;
}

/** A hub on 127.0.0.1 (port 0 = any) with the test PKI and policy; override any option. */
export async function startTestHub(pki: TestPki, o: Partial<HubOptions> & { port?: number; crlSource?: string; crlCacheDir?: string; crlRequired?: boolean; storeFile?: string; maxMessages?: number; attestation?: MemoryAttestationSource } = {}): Promise<TestHub> {
  const dir = mkdtempSync(join(tmpdir(), "edgehub-"));
  mkdirSync(join(dir, "crl"), { recursive: true });
  const attestation = o.attestation ?? new MemoryAttestationSource();
  const log = createLogger("edge-hub", { level: process.env.EDGETRUST_LOG_LEVEL ?? "silent" });
  const crl = new CrlCache({ source: o.crlSource ?? "", cacheDir: o.crlCacheDir ?? join(dir, "crl"), issuers: [pki.issuing.certificate], require: o.crlRequired ?? false, log, fetchTimeoutMs: 5000 });
  await crl.start();
  const store = o.store ?? new HubStore(o.storeFile ?? join(dir, "hub.db"), { maxMessages: o.maxMessages ?? 10_000, maxBytes: 64 * 1024 * 1024 });
  const verifier = new ClientVerifier({ trustDomain: TRUST_DOMAIN, edgeCas: [pki.edgeCa.certificate], issuingCas: [pki.issuing.certificate], crl, attestation });
  const server = pki.hubServer();
  const hub = new EdgeHub({
    host: "127.0.0.1",
    port: o.port ?? 0,
    serverTls: () => server,
    clientCa: pki.clientCa(),
    verifier,
    attestation,
    policy: testPolicy(),
    limits: { maxPayloadBytes: 64 * 1024, maxTopicLevels: 12, allowRootWildcard: false },
    store,
    routes: [],
    defaultRoute: { priority: 0, ttlSeconds: 3600 },
    crl,
    log,
    ...o,
  });
  await hub.start();
  return { hub, attestation, crl, store, dir };
}

export async function stopTestHub(t: TestHub): Promise<void> {
  await t.hub.stop();
  rmSync(t.dir, { recursive: true, force: true });
}

export function writeTemp(dir: string, name: string, data: string | Buffer): string {
  const p = join(dir, name);
  writeFileSync(p, data);
  return p;
}
