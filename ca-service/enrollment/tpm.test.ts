import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execFileSync } from "node:child_process";
import { createHash, X509Certificate as NodeX509 } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { AsnConvert } from "@peculiar/asn1-schema";
import { ECDSASigValue } from "@peculiar/asn1-ecc";
import { startSwtpm, type Swtpm } from "../../hsm/index.js";
import { isEdgeTrustError } from "../../common/index.js";
import { EkTrust } from "./ek-roots.js";
import { RegistrationService } from "./registration.js";
import { EnrollmentStore } from "./store.js";
import { TpmChallenges, tpmRegistrationProof, type TpmChallenge } from "./tpm.js";
import { csrPem, ecKeys, run, startEnrollmentCa, type EnrollmentCa, type Res } from "./test-fixtures.js";

/**
 * TPM endorsement-key enrollment end to end on real parts: each device is its own swtpm on loopback, driven with
 * tpm2-tools (the device side lives here: TpmDevice); the CA runs tpm2_makecredential --tcti none and tpm2_print.
 */
function toolsMissing(): string | undefined {
  for (const [cmd, pkg] of [["swtpm", "swtpm swtpm-tools"], ["tpm2_makecredential", "tpm2-tools"]] as const) {
    try {
      execFileSync(cmd, ["--version"], { stdio: "ignore" });
    } catch {
      return `${cmd} is not installed (Debian: ${pkg})`;
    }
  }
  return undefined;
}
const skipReason = toolsMissing();
if (skipReason) console.warn(`skipping TPM enrollment tests: ${skipReason}`);

const IDENTITY_ATTRS = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign";
/** TCG EK Credential Profile: the NV index of the RSA 2048 EK certificate. */
const EK_CERT_NV = "0x1c00002";
const EC_ALG = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;

/** A stand-in TPM manufacturer: a root CA (self-signed) and an intermediate that signs EK certificates, as vendors do. */
class TestCa {
  private constructor(readonly root: x509.X509Certificate, private readonly issuerCert: x509.X509Certificate, private readonly issuerKey: CryptoKey) {}

  static async create(name: string): Promise<TestCa> {
    const rootKeys = await crypto.subtle.generateKey(EC_ALG, false, ["sign", "verify"]) as CryptoKeyPair;
    const root = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: "01", name: `CN=${name} EK Root CA,O=${name}`, keys: rootKeys, signingAlgorithm: EC_ALG,
      notBefore: new Date(Date.now() - 86_400_000), notAfter: new Date(Date.now() + 365 * 86_400_000),
      extensions: [new x509.BasicConstraintsExtension(true, undefined, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true), await x509.SubjectKeyIdentifierExtension.create(rootKeys.publicKey)],
    });
    const keys = await crypto.subtle.generateKey(EC_ALG, false, ["sign", "verify"]) as CryptoKeyPair;
    const issuer = await x509.X509CertificateGenerator.create({
      serialNumber: "02", subject: `CN=${name} EK Issuing CA,O=${name}`, issuer: root.subject, publicKey: keys.publicKey, signingKey: rootKeys.privateKey, signingAlgorithm: EC_ALG,
      notBefore: new Date(Date.now() - 86_400_000), notAfter: new Date(Date.now() + 365 * 86_400_000),
      extensions: [new x509.BasicConstraintsExtension(true, 0, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true), await x509.SubjectKeyIdentifierExtension.create(keys.publicKey), await x509.AuthorityKeyIdentifierExtension.create(rootKeys.publicKey)],
    });
    return new TestCa(root, issuer, keys.privateKey);
  }

  /** The issuing CA then the root: what a device sends after its EK certificate when the vendor has an intermediate. */
  get intermediatePem(): string {
    return this.issuerCert.toString("pem");
  }

  get issuerName(): string {
    return this.issuerCert.subject;
  }

  async issueEkCert(ekSpki: ArrayBuffer): Promise<x509.X509Certificate> {
    return x509.X509CertificateGenerator.create({
      serialNumber: createHash("sha256").update(Buffer.from(ekSpki)).digest("hex").slice(0, 16), subject: "", issuer: this.issuerCert.subject,
      publicKey: ekSpki, signingKey: this.issuerKey, signingAlgorithm: EC_ALG,
      notBefore: new Date(Date.now() - 86_400_000), notAfter: new Date(Date.now() + 10 * 365 * 86_400_000),
      extensions: [new x509.BasicConstraintsExtension(false, undefined, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyEncipherment, true), await x509.AuthorityKeyIdentifierExtension.create(this.issuerCert.publicKey)],
    });
  }
}

/** A device: one swtpm, its EK, an AK, and a TPM identity key certified by the AK — all through tpm2-tools. */
class TpmDevice {
  private constructor(readonly dir: string, readonly tpm: Swtpm) {}

  static async start(): Promise<TpmDevice> {
    const dir = mkdtempSync(join(tmpdir(), "et-tpmdev-"));
    const d = new TpmDevice(dir, await startSwtpm(dir));
    await d.t("tpm2_createek", ["-c", "ek.ctx", "-G", "rsa", "-u", "ek.pem", "-f", "pem"]);
    await d.t("tpm2_createak", ["-C", "ek.ctx", "-c", "ak.ctx", "-G", "ecc", "-g", "sha256", "-s", "ecdsa", "-u", "ak.pub", "-n", "ak.name", "-r", "ak.priv"]);
    await d.t("tpm2_createprimary", ["-C", "o", "-g", "sha256", "-G", "ecc", "-c", "srk.ctx"]);
    return d;
  }

  /** Run a tpm2-tools command against this swtpm, then flush transient objects (swtpm has 3 slots and no resource manager). */
  async t(cmd: string, args: string[], ok = true): Promise<{ code: number; stderr: string }> {
    const env = { ...process.env, TPM2TOOLS_TCTI: `swtpm:host=127.0.0.1,port=${this.tpm.port}` };
    const r = await run(cmd, args, { cwd: this.dir, env });
    await run("tpm2_flushcontext", ["-t"], { cwd: this.dir, env });
    await run("tpm2_flushcontext", ["-s"], { cwd: this.dir, env });
    if (ok && r.code !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${r.stderr}`);
    return r;
  }

  file(name: string): Buffer {
    return readFileSync(join(this.dir, name));
  }

  get ekPem(): string {
    return this.file("ek.pem").toString("utf8");
  }

  /** What a TPM vendor does at manufacture: an EK certificate by `ca` for this EK, stored in the TPM's RSA EK certificate NV index. */
  async provisionEkCert(ca: TestCa): Promise<void> {
    const der = Buffer.from((await ca.issueEkCert(x509.PemConverter.decodeFirst(this.ekPem))).rawData);
    writeFileSync(join(this.dir, "ekcert.der"), der);
    await this.t("tpm2_nvundefine", [EK_CERT_NV, "-C", "o"], false);
    await this.t("tpm2_nvdefine", [EK_CERT_NV, "-C", "o", "-s", String(der.length), "-a", "ownerread|ownerwrite|authread|no_da"]);
    await this.t("tpm2_nvwrite", [EK_CERT_NV, "-C", "o", "-i", "ekcert.der"]);
  }

  /**
   * The device side: the EK certificate read from the TPM's NV (tpm2_nvread), then the vendor's intermediate (which a
   * device gets from the certificate's AIA or ships with), as one PEM bundle. Read once: kept in `ekCertPem`.
   */
  async readEkCert(intermediatePem: string): Promise<string> {
    await this.t("tpm2_nvread", [EK_CERT_NV, "-C", "o", "-o", "ekcert.read"]);
    this.ekCertPem = x509.PemConverter.encode(new Uint8Array(this.file("ekcert.read")), "CERTIFICATE") + "\n" + intermediatePem;
    return this.ekCertPem;
  }

  ekCertPem: string | undefined;

  challengeRequest(): { ekPub: string; akPub: string; akName: string; ekCert?: string } {
    return { ekPub: this.ekPem, akPub: this.file("ak.pub").toString("base64"), akName: this.file("ak.name").toString("hex"), ...(this.ekCertPem ? { ekCert: this.ekCertPem } : {}) };
  }

  /** tpm2_activatecredential with the EK (policy session: PolicySecret(endorsement)); undefined when the TPM refuses. */
  async activate(c: TpmChallenge): Promise<Buffer | undefined> {
    writeFileSync(join(this.dir, "cred.bin"), Buffer.from(c.credential, "base64"));
    rmSync(join(this.dir, "secret.bin"), { force: true });
    const env = { ...process.env, TPM2TOOLS_TCTI: `swtpm:host=127.0.0.1,port=${this.tpm.port}` };
    const steps: [string, string[]][] = [
      ["tpm2_startauthsession", ["--policy-session", "-S", "session.ctx"]],
      ["tpm2_policysecret", ["-S", "session.ctx", "-c", "e"]],
      ["tpm2_activatecredential", ["-c", "ak.ctx", "-C", "ek.ctx", "-i", "cred.bin", "-o", "secret.bin", "-P", "session:session.ctx"]],
    ];
    let failed = false;
    for (const [cmd, args] of steps) {
      if ((await run(cmd, args, { cwd: this.dir, env })).code !== 0) { failed = true; break; }
    }
    await run("tpm2_flushcontext", ["session.ctx"], { cwd: this.dir, env });
    await run("tpm2_flushcontext", ["-t"], { cwd: this.dir, env });
    return failed ? undefined : this.file("secret.bin");
  }

  /** A new identity key in the TPM (under the SRK), certified by the AK: TPM2B_PUBLIC, TPMS_ATTEST, signature. */
  async identityKey(name: string, attrs = IDENTITY_ATTRS): Promise<{ keyPub: string; certifyInfo: string; certifySignature: string; pem: string }> {
    await this.t("tpm2_create", ["-C", "srk.ctx", "-G", "ecc256:ecdsa-sha256", "-a", attrs, "-u", `${name}.pub`, "-r", `${name}.priv`]);
    await this.t("tpm2_load", ["-C", "srk.ctx", "-u", `${name}.pub`, "-r", `${name}.priv`, "-c", `${name}.ctx`]);
    await this.t("tpm2_certify", ["-c", `${name}.ctx`, "-C", "ak.ctx", "-g", "sha256", "-o", `${name}.attest`, "-s", `${name}.sig`, "-f", "plain"]);
    const pem = execFileSync("tpm2_print", ["-t", "TPM2B_PUBLIC", "-f", "pem", join(this.dir, `${name}.pub`)], { encoding: "utf8" });
    return { keyPub: this.file(`${name}.pub`).toString("base64"), certifyInfo: this.file(`${name}.attest`).toString("base64"), certifySignature: this.file(`${name}.sig`).toString("base64"), pem };
  }

  /** A CSR signed inside the TPM by key `name` (tpm2_sign; its DER ECDSA signature converted to WebCrypto's r||s). */
  async csr(name: string, pem: string, cn: string): Promise<string> {
    const publicKey = await crypto.subtle.importKey("spki", x509.PemConverter.decodeFirst(pem), { name: "ECDSA", namedCurve: "P-256" }, true, ["verify"]);
    const s = crypto.subtle;
    const sign = async (_alg: AlgorithmIdentifier | EcdsaParams, key: CryptoKey, data: BufferSource): Promise<ArrayBuffer> => {
      if (key !== publicKey) throw new Error("not the TPM key");
      writeFileSync(join(this.dir, "tbs.bin"), Buffer.from(data instanceof ArrayBuffer ? data : data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength)));
      await this.t("tpm2_sign", ["-c", `${name}.ctx`, "-g", "sha256", "-f", "plain", "-o", "tbs.sig", "tbs.bin"]);
      const v = AsnConvert.parse(this.file("tbs.sig"), ECDSASigValue);
      const fix = (b: ArrayBuffer): Buffer => { const x = Buffer.from(b); const y = x[0] === 0 ? x.subarray(1) : x; return Buffer.concat([Buffer.alloc(32 - y.length), y]); };
      const raw = Buffer.concat([fix(v.r), fix(v.s)]);
      return raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength);
    };
    const tpmCrypto: Crypto = {
      subtle: {
        decrypt: s.decrypt.bind(s), deriveBits: s.deriveBits.bind(s), deriveKey: s.deriveKey.bind(s), digest: s.digest.bind(s), encrypt: s.encrypt.bind(s),
        exportKey: s.exportKey.bind(s), generateKey: s.generateKey.bind(s), importKey: s.importKey.bind(s), unwrapKey: s.unwrapKey.bind(s), verify: s.verify.bind(s),
        wrapKey: s.wrapKey.bind(s), sign,
      } as SubtleCrypto,
      getRandomValues: crypto.getRandomValues.bind(crypto),
      randomUUID: crypto.randomUUID.bind(crypto),
    };
    const req = await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=${cn}`, keys: { publicKey, privateKey: publicKey }, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } }, tpmCrypto);
    return req.toString("pem");
  }

  async close(): Promise<void> {
    await this.tpm.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

let e: EnrollmentCa;
let lineToken: string;
let vendor: TestCa;
let otherVendor: TestCa;
let rootsDir: string;
let a: TpmDevice;
let b: TpmDevice;

function expectProblem(r: Res, status: number, code: string, detail?: RegExp): void {
  expect(r.type).toContain("application/problem+json");
  const p = r.json();
  expect({ status: r.status, code: p.code }).toEqual({ status, code });
  if (detail) expect(String(p.detail)).toMatch(detail);
}

async function enrollEk(id: string, dev: TpmDevice): Promise<void> {
  const r = await e.call("PUT", `/v1/enrollments/${id}`, { token: lineToken, body: { attestation: "tpm", credential: dev.ekPem, labels: { tpm: "swtpm" } } });
  expect(r.status, r.body.toString()).toBe(201);
}

async function challenge(id: string, body: Record<string, unknown>): Promise<Res> {
  return e.call("POST", `/v1/registrations/${id}/tpm-challenge`, { body });
}

interface Answer { body: Record<string, unknown>; challengeId: string }

/** The whole device side: challenge, activate, identity key + certify, CSRs (identity in the TPM, Edge CA in software), proof. */
async function answer(id: string, dev: TpmDevice, keyName: string, opts: { csrOverride?: string } = {}): Promise<Answer> {
  const c = await challenge(id, dev.challengeRequest());
  expect(c.status, c.body.toString()).toBe(201);
  const ch = c.json() as unknown as TpmChallenge;
  const secret = await dev.activate(ch);
  expect(secret).toBeDefined();
  const k = await dev.identityKey(keyName);
  const csr = opts.csrOverride ?? await dev.csr(keyName, k.pem, id);
  const edgeCaCsr = await csrPem(await ecKeys(), `${id} edge ca`);
  const proof = tpmRegistrationProof(secret ?? Buffer.alloc(0), ch.challengeId, csr, edgeCaCsr);
  return { challengeId: ch.challengeId, body: { csr, edgeCaCsr, tpm: { challengeId: ch.challengeId, proof, keyPub: k.keyPub, certifyInfo: k.certifyInfo, certifySignature: k.certifySignature } } };
}

describe.skipIf(skipReason !== undefined)("TPM endorsement-key enrollment (swtpm + tpm2-tools)", () => {
  beforeAll(async () => {
    [vendor, otherVendor] = await Promise.all([TestCa.create("Test TPM Vendor"), TestCa.create("Other TPM Vendor")]);
    rootsDir = mkdtempSync(join(tmpdir(), "et-ekroots-"));
    writeFileSync(join(rootsDir, "vendor-root.pem"), vendor.root.toString("pem"));
    writeFileSync(join(rootsDir, "other-root.pem"), otherVendor.root.toString("pem"));
    e = await startEnrollmentCa({ tpm: { manufacturerRoots: [join(rootsDir, "vendor-root.pem")], allowUnverifiedEk: false } });
    const l = await e.call("POST", "/v1/lines", { token: e.t.init.adminToken, body: { name: "tpm line", maxEnrollments: 100, ratePerMinute: 1000 } });
    lineToken = (l.json() as { token: string }).token;
    [a, b] = await Promise.all([TpmDevice.start(), TpmDevice.start()]);
    for (const d of [a, b]) {
      await d.provisionEkCert(vendor);
      await d.readEkCert(vendor.intermediatePem);
    }
  });

  afterAll(async () => {
    await a?.close();
    await b?.close();
    await e?.close();
    if (rootsDir) rmSync(rootsDir, { recursive: true, force: true });
  });

  it("a device whose EK is enrolled registers end to end: identity (key in its TPM) and Edge CA certificates; a replayed challenge is refused", async () => {
    await enrollEk("tpm-dev-1", a);
    const ans = await answer("tpm-dev-1", a, "id1");
    const r = await e.call("PUT", "/v1/registrations/tpm-dev-1", { body: ans.body, headers: { "idempotency-key": "tpm-dev-1-attempt-1" } });
    expect(r.status, r.body.toString()).toBe(201);
    const res = r.json() as { enrollment: { attestation: string }; identity: { certificatePem: string }; edgeCa: { certificatePem: string } | null; trustBundlePem: string };
    expect(res.enrollment.attestation).toBe("tpm");
    const cert = new NodeX509(res.identity.certificatePem);
    expect(cert.subject).toContain("CN=tpm-dev-1");
    const tpmKey = (ans.body.tpm as { keyPub: string }).keyPub;
    writeFileSync(join(a.dir, "registered.pub"), Buffer.from(tpmKey, "base64"));
    const pem = execFileSync("tpm2_print", ["-t", "TPM2B_PUBLIC", "-f", "pem", join(a.dir, "registered.pub")], { encoding: "utf8" });
    expect(cert.publicKey.export({ format: "pem", type: "spki" })).toBe(pem);
    expect(res.edgeCa).not.toBeNull();
    expect(res.trustBundlePem).toContain("BEGIN CERTIFICATE");

    // The same answer again (another idempotency key, or even the same): the challenge was used.
    const again = await e.call("PUT", "/v1/registrations/tpm-dev-1", { body: ans.body, headers: { "idempotency-key": "tpm-dev-1-attempt-2" } });
    expectProblem(again, 401, "UNAUTHENTICATED", /already used/);
    const audit = (await e.call("GET", "/v1/audit?limit=1000", { token: e.t.init.adminToken })).json().entries as { actor: string; action: string }[];
    expect(audit.some((x) => x.actor === "device:tpm-dev-1 via api" && x.action === "cert.issue.registration")).toBe(true);
  });

  it("an EK that is not enrolled gets no challenge; a tpm enrollment without a TPM proof does not register", async () => {
    await enrollEk("tpm-dev-2", a);
    expectProblem(await challenge("tpm-dev-2", b.challengeRequest()), 401, "UNAUTHENTICATED", /not the enrolled endorsement key/);
    expectProblem(await challenge("tpm-nobody", a.challengeRequest()), 401, "UNAUTHENTICATED", /no TPM enrollment/);
    const noProof = await e.call("PUT", "/v1/registrations/tpm-dev-2", { body: { csr: await csrPem(await ecKeys(), "tpm-dev-2") }, headers: { "idempotency-key": "tpm-dev-2-plain" } });
    expectProblem(noProof, 401, "UNAUTHENTICATED", /TPM proof/);
  });

  it("a challenge for A's EK cannot be answered by another TPM (B's activatecredential fails), and a guessed proof is refused", async () => {
    await enrollEk("tpm-dev-3", a);
    // B claims A's (public) EK with its own AK: the credential is sealed to A's EK, so only A's TPM could open it.
    const c = await challenge("tpm-dev-3", { ...b.challengeRequest(), ekPub: a.ekPem, ekCert: a.ekCertPem });
    expect(c.status, c.body.toString()).toBe(201);
    const ch = c.json() as unknown as TpmChallenge;
    expect(await b.activate(ch)).toBeUndefined();
    // A's TPM cannot open it either: the credential names B's AK, which is not loaded in A.
    expect(await a.activate(ch)).toBeUndefined();
    const k = await b.identityKey("idb");
    const csr = await b.csr("idb", k.pem, "tpm-dev-3");
    const edgeCaCsr = await csrPem(await ecKeys(), "edge");
    const guess = tpmRegistrationProof(Buffer.alloc(32), ch.challengeId, csr, edgeCaCsr);
    const r = await e.call("PUT", "/v1/registrations/tpm-dev-3", { body: { csr, edgeCaCsr, tpm: { challengeId: ch.challengeId, proof: guess, keyPub: k.keyPub, certifyInfo: k.certifyInfo, certifySignature: k.certifySignature } }, headers: { "idempotency-key": "tpm-dev-3-guess" } });
    expectProblem(r, 401, "UNAUTHENTICATED", /proof does not verify/);
  });

  it("an AK without restricted, or without fixedTPM/fixedParent, gets no challenge; a wrong akName neither", async () => {
    await enrollEk("tpm-dev-4", a);
    // An ordinary signing key (not restricted) posing as the AK.
    await a.t("tpm2_create", ["-C", "srk.ctx", "-G", "ecc256:ecdsa-sha256", "-a", IDENTITY_ATTRS, "-u", "plain.pub", "-r", "plain.priv"]);
    const plain = a.file("plain.pub");
    const name = (blob: Buffer): string => "000b" + createHash("sha256").update(blob.subarray(2)).digest("hex");
    expectProblem(await challenge("tpm-dev-4", { ekPub: a.ekPem, ekCert: a.ekCertPem, akPub: plain.toString("base64"), akName: name(plain) }), 401, "UNAUTHENTICATED", /lacks restricted/);
    // The real AK with fixedTPM (0x2) and fixedParent (0x10) cleared in its objectAttributes (TPM2B_PUBLIC: size,
    // type, nameAlg, then attributes at byte 6): what a key the TPM lets leave it would claim; name recomputed to match.
    const d = Buffer.from(a.file("ak.pub"));
    d.writeUInt32BE(d.readUInt32BE(6) & ~0x12, 6);
    expectProblem(await challenge("tpm-dev-4", { ekPub: a.ekPem, ekCert: a.ekCertPem, akPub: d.toString("base64"), akName: name(d) }), 401, "UNAUTHENTICATED", /lacks fixedtpm, fixedparent/);
    expectProblem(await challenge("tpm-dev-4", { ...a.challengeRequest(), akName: name(plain) }), 401, "UNAUTHENTICATED", /akName is not the name of akPub/);
    expectProblem(await challenge("tpm-dev-4", { ...a.challengeRequest(), akPub: "AAAA" }), 400, "INVALID_INPUT");
  });

  it("a CSR whose key the TPM did not certify is refused, even with a correct activation proof", async () => {
    await enrollEk("tpm-dev-5", a);
    const softCsr = await csrPem(await ecKeys(), "tpm-dev-5");
    const ans = await answer("tpm-dev-5", a, "id5", { csrOverride: softCsr });
    const r = await e.call("PUT", "/v1/registrations/tpm-dev-5", { body: ans.body, headers: { "idempotency-key": "tpm-dev-5-soft" } });
    expectProblem(r, 401, "UNAUTHENTICATED", /not the TPM identity key/);
    // A proof made for other CSRs than the ones sent does not verify either.
    const ans2 = await answer("tpm-dev-5", a, "id5b");
    const other = { ...ans2.body, edgeCaCsr: await csrPem(await ecKeys(), "swapped") };
    expectProblem(await e.call("PUT", "/v1/registrations/tpm-dev-5", { body: other, headers: { "idempotency-key": "tpm-dev-5-swap" } }), 401, "UNAUTHENTICATED", /proof does not verify/);
    // A key another TPM holds, certified by that TPM's AK, with A's activated secret: the certify is not by A's AK.
    const c3 = await challenge("tpm-dev-5", a.challengeRequest());
    const ch3 = c3.json() as unknown as TpmChallenge;
    const secret3 = await a.activate(ch3);
    const kb = await b.identityKey("idb5");
    const csrB = await b.csr("idb5", kb.pem, "tpm-dev-5");
    const edge3 = await csrPem(await ecKeys(), "edge");
    const foreign = { csr: csrB, edgeCaCsr: edge3, tpm: { challengeId: ch3.challengeId, proof: tpmRegistrationProof(secret3 ?? Buffer.alloc(0), ch3.challengeId, csrB, edge3), keyPub: kb.keyPub, certifyInfo: kb.certifyInfo, certifySignature: kb.certifySignature } };
    expectProblem(await e.call("PUT", "/v1/registrations/tpm-dev-5", { body: foreign, headers: { "idempotency-key": "tpm-dev-5-foreign" } }), 401, "UNAUTHENTICATED", /certify signature does not verify/);
    // Nothing was registered by the failed attempts: a correct answer still registers.
    const ok = await answer("tpm-dev-5", a, "id5c");
    expect((await e.call("PUT", "/v1/registrations/tpm-dev-5", { body: ok.body, headers: { "idempotency-key": "tpm-dev-5-good" } })).status).toBe(201);
  });

  it("an expired challenge is refused (challenge clock advanced past its lifetime)", async () => {
    await enrollEk("tpm-dev-6", a);
    let clock = Date.now();
    const trust = EkTrust.load({ manufacturerRoots: [join(rootsDir, "vendor-root.pem")], allowUnverifiedEk: false });
    const svc = new RegistrationService(e.t.ca, new EnrollmentStore(e.ts.store), new TpmChallenges(e.ts.store.db, { ttlMs: 60_000, now: () => clock }), trust);
    const ch = await svc.tpmChallenge("tpm-dev-6", a.challengeRequest());
    const secret = await a.activate(ch);
    expect(secret).toBeDefined();
    const k = await a.identityKey("id6");
    const csr = await a.csr("id6", k.pem, "tpm-dev-6");
    const edgeCaCsr = await csrPem(await ecKeys(), "edge");
    clock += 61_000;
    const err = await svc.register({
      registrationId: "tpm-dev-6", csr, edgeCaCsr, idempotencyKey: "tpm-dev-6-late", channel: "api",
      credential: { kind: "tpm", proof: { challengeId: ch.challengeId, proof: tpmRegistrationProof(secret ?? Buffer.alloc(0), ch.challengeId, csr, edgeCaCsr), ...{ keyPub: k.keyPub, certifyInfo: k.certifyInfo, certifySignature: k.certifySignature } } },
    }).then(() => undefined, (x: unknown) => x);
    expect(isEdgeTrustError(err, "UNAUTHENTICATED") && /expired/.test(err.message)).toBe(true);
  });

  it("a challenge made by one CA process is answered on another (it lives in the store, not in the process); a replay on the first is refused", async () => {
    await enrollEk("tpm-dev-fleet", a);
    const trust = EkTrust.load({ manufacturerRoots: [join(rootsDir, "vendor-root.pem")], allowUnverifiedEk: false });
    // Two registration services with challenge stores of their own over one database: two `ca serve` behind a balancer.
    const processA = new RegistrationService(e.t.ca, new EnrollmentStore(e.ts.store), new TpmChallenges(e.ts.store.db), trust);
    const processB = new RegistrationService(e.t.ca, new EnrollmentStore(e.ts.store), new TpmChallenges(e.ts.store.db), trust);
    const ch = await processA.tpmChallenge("tpm-dev-fleet", a.challengeRequest());
    const secret = await a.activate(ch);
    expect(secret).toBeDefined();
    const k = await a.identityKey("idfleet");
    const csr = await a.csr("idfleet", k.pem, "tpm-dev-fleet");
    const edgeCaCsr = await csrPem(await ecKeys(), "edge");
    const input = (key: string) => ({
      registrationId: "tpm-dev-fleet", csr, edgeCaCsr, idempotencyKey: key, channel: "api" as const,
      credential: { kind: "tpm" as const, proof: { challengeId: ch.challengeId, proof: tpmRegistrationProof(secret ?? Buffer.alloc(0), ch.challengeId, csr, edgeCaCsr), keyPub: k.keyPub, certifyInfo: k.certifyInfo, certifySignature: k.certifySignature } },
    });
    const done = await processB.register(input("tpm-dev-fleet-on-b"));
    expect(done.result.enrollment.attestation).toBe("tpm");
    expect(new NodeX509(done.result.identity.certificatePem).subject).toContain("CN=tpm-dev-fleet");
    const replay = await processA.register(input("tpm-dev-fleet-replay-on-a")).then(() => undefined, (x: unknown) => x);
    expect(isEdgeTrustError(replay, "UNAUTHENTICATED") && /already used/.test(replay.message)).toBe(true);
  });

  it("EK certificates: one chaining to the configured manufacturer root is accepted; another vendor's, a missing one, another EK's, an expired chain are refused naming the issuer", async () => {
    await enrollEk("tpm-dev-7", a);
    // Accepted: the certificate read from a's NV chains (intermediate, root) to the configured vendor root.
    const ok = await challenge("tpm-dev-7", a.challengeRequest());
    expect(ok.status, ok.body.toString()).toBe(201);
    // An EK certificate for the same EK signed by a vendor that is not configured.
    const foreign = (await otherVendor.issueEkCert(x509.PemConverter.decodeFirst(a.ekPem))).toString("pem") + "\n" + otherVendor.intermediatePem;
    const issuerRe = new RegExp(`EK certificate issuer: ${otherVendor.issuerName}.*does not chain|does not chain.*EK certificate issuer: ${otherVendor.issuerName}`);
    expectProblem(await challenge("tpm-dev-7", { ...a.challengeRequest(), ekCert: foreign }), 401, "UNAUTHENTICATED", issuerRe);
    // The right vendor's certificate without its intermediate does not reach the root either.
    expectProblem(await challenge("tpm-dev-7", { ...a.challengeRequest(), ekCert: x509.PemConverter.encode(new Uint8Array(a.file("ekcert.read")), "CERTIFICATE") }), 401, "UNAUTHENTICATED", new RegExp(`does not chain.*${vendor.issuerName}`));
    // No EK certificate at all, B's (valid) certificate for A's EK, and garbage.
    expectProblem(await challenge("tpm-dev-7", { ...a.challengeRequest(), ekCert: undefined }), 401, "UNAUTHENTICATED", /no EK certificate presented/);
    expectProblem(await challenge("tpm-dev-7", { ...a.challengeRequest(), ekCert: b.ekCertPem }), 401, "UNAUTHENTICATED", /another key than the enrolled endorsement key/);
    expectProblem(await challenge("tpm-dev-7", { ...a.challengeRequest(), ekCert: "-----BEGIN CERTIFICATE-----\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n-----END CERTIFICATE-----\n" }), 400, "INVALID_INPUT", /ekCert is not/);

    const ekSpki = Buffer.from(x509.PemConverter.decodeFirst(a.ekPem));
    const refusal = (p: Promise<void>): Promise<string> => p.then(() => "accepted", (x: unknown) => (isEdgeTrustError(x) ? `${x.code}: ${x.message}` : String(x)));
    // A CA that trusts only the other vendor refuses a's genuine certificate, naming its issuer.
    const onlyOther = EkTrust.load({ manufacturerRoots: [join(rootsDir, "other-root.pem")], allowUnverifiedEk: false });
    expect(await refusal(onlyOther.check(a.ekCertPem, ekSpki))).toMatch(new RegExp(`UNAUTHENTICATED: .*does not chain.*EK certificate issuer: ${vendor.issuerName}`));
    // The configured root accepts it now, and refuses it when the chain is out of its validity (20 years on).
    const trust = EkTrust.load({ manufacturerRoots: [join(rootsDir, "vendor-root.pem")], allowUnverifiedEk: false });
    expect(await refusal(trust.check(a.ekCertPem, ekSpki))).toBe("accepted");
    expect(await refusal(trust.check(a.ekCertPem, ekSpki, new Date(Date.now() + 20 * 365 * 86_400_000)))).toMatch(/outside its validity period/);
    // No roots configured: refused with the hint, unless explicitly allowed for development.
    expect(await refusal(EkTrust.none().check(a.ekCertPem, ekSpki))).toMatch(/no TPM manufacturer roots are configured/);
    expect(await refusal(EkTrust.load({ manufacturerRoots: [], allowUnverifiedEk: true }).check(undefined, ekSpki))).toBe("accepted");
    // allow-any still refuses a presented certificate that a configured root does not reach.
    expect(await refusal(EkTrust.load({ manufacturerRoots: [join(rootsDir, "vendor-root.pem")], allowUnverifiedEk: true }).check(foreign, ekSpki))).toMatch(/does not chain/);
    // A root file that is missing, or holds an end-entity certificate, is a configuration error naming the file.
    expect(() => EkTrust.load({ manufacturerRoots: [join(rootsDir, "nope.pem")], allowUnverifiedEk: false })).toThrow(/nope\.pem/);
    writeFileSync(join(rootsDir, "leaf.pem"), a.ekCertPem ?? "");
    expect(() => EkTrust.load({ manufacturerRoots: [join(rootsDir, "leaf.pem")], allowUnverifiedEk: false })).toThrow(/leaf\.pem.*not a CA certificate/);
  });
});
