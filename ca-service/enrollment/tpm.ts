import { createHash, createHmac, createPublicKey, randomBytes, randomUUID, timingSafeEqual, verify as verifySignature } from "node:crypto";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EdgeTrustError } from "../../common/index.js";
import { sha256Hex } from "../store.js";
import type { Db } from "../db.js";
import { SingleUseTokens } from "../shared/single-use.js";
import { derOf } from "./model.js";

/**
 * TPM endorsement-key enrollment: the credential-activation proof (TPM 2.0 Part 1 §24, as DPS TPM attestation and
 * Keylime use it) on real tpm2-tools. The CA never talks to a TPM: `tpm2_makecredential --tcti none` seals a random
 * secret to the enrolled EK for the device's AK name, `tpm2_print` decodes the TPM structures the device sends.
 * See ca-service/README.md "Enrollment → TPM".
 */

const B64_RE = /^[A-Za-z0-9+/]*={0,2}$/;
/** The label mixed into the registration proof (HMAC key = the activated secret). */
const TPM_PROOF_LABEL = "edgetrust-tpm-registration-v1";
const TPM_GENERATED_VALUE = 0xff544347;
const TPM_ST_ATTEST_CERTIFY = 0x8017;

/** What the device sends to ask for a challenge. */
export interface TpmChallengeRequest {
  /** The EK public key, PEM SubjectPublicKeyInfo (`tpm2_createek -f pem`) or base64 DER. */
  ekPub: string;
  /** The attestation key, TPM2B_PUBLIC (`tpm2_createak -u`), base64. */
  akPub: string;
  /** The AK's name (`tpm2_createak -n`), hex or base64: must be the name of `akPub`. */
  akName: string;
  /** The EK certificate (from the TPM's NV, `tpm2_getekcertificate`), PEM (then any intermediates) or base64 DER. */
  ekCert?: string;
}

export interface TpmChallenge {
  challengeId: string;
  /** `tpm2_makecredential` output (TPM2B_ID_OBJECT credential blob + TPM2B_ENCRYPTED_SECRET), base64: the `-i` file of `tpm2_activatecredential`. */
  credential: string;
  expiresAt: string;
}

/** The TPM part of a registration request. */
export interface TpmProof {
  challengeId: string;
  /** base64 HMAC-SHA256(activated secret, TPM_PROOF_LABEL "\n" challengeId "\n" sha256hex(csr) "\n" sha256hex(edgeCaCsr or "")). */
  proof: string;
  /** The device identity key, TPM2B_PUBLIC base64 (`tpm2_create -u`): its SPKI must be the CSR's key. */
  keyPub: string;
  /** `tpm2_certify -o` of the identity key by the AK (TPMS_ATTEST), base64. */
  certifyInfo: string;
  /** `tpm2_certify -s … -f plain` (DER ECDSA or PKCS#1 v1.5), base64. */
  certifySignature: string;
}

/** A decoded TPM2B_PUBLIC (through `tpm2_print`). */
interface TpmPublic {
  /** The object name: nameAlg (2 bytes) || H_nameAlg(TPMT_PUBLIC), hex. */
  name: string;
  type: "rsa" | "ecc";
  attributes: Set<string>;
  scheme: string;
  schemeHash: string;
  pem: string;
  spkiDer: Buffer;
}

function bad(message: string): EdgeTrustError {
  return new EdgeTrustError("INVALID_INPUT", message);
}

function unauth(message: string, hint?: string): EdgeTrustError {
  return new EdgeTrustError("UNAUTHENTICATED", message, hint ? { hint } : {});
}

function b64(text: string, what: string, max = 8192): Buffer {
  const t = text.replace(/\s+/g, "");
  if (t.length === 0 || t.length > max || !B64_RE.test(t) || t.length % 4 !== 0) throw bad(`${what} is not base64`);
  return Buffer.from(t, "base64");
}

function tool(cmd: string, args: string[], input?: Buffer): Promise<{ stdout: Buffer; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { encoding: "buffer", timeout: 15_000, maxBuffer: 1024 * 1024, env: { PATH: process.env.PATH ?? "/usr/bin:/bin" } }, (err, stdout, stderr) => {
      if (err) {
        const missing = (err as NodeJS.ErrnoException).code === "ENOENT";
        reject(missing
          ? new EdgeTrustError("UNAVAILABLE", `${cmd} is not installed`, { hint: "install tpm2-tools (Debian: tpm2-tools)" })
          : Object.assign(new Error(`${cmd} failed: ${stderr.toString("utf8").trim().split("\n").slice(-2).join(" ")}`), { stderr: stderr.toString("utf8") }));
        return;
      }
      resolve({ stdout, stderr: stderr.toString("utf8") });
    });
    if (input) child.stdin?.end(input);
  });
}

async function withTmp<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "et-tpm-"));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The value of `key: value` or of `key:\n  value: …` in tpm2_print's YAML. */
function yamlValue(text: string, key: string): string | undefined {
  const lines = text.split("\n");
  const i = lines.findIndex((l) => l.startsWith(`${key}:`));
  if (i < 0) return undefined;
  const inline = lines[i]?.slice(key.length + 1).trim();
  if (inline) return inline;
  const next = lines[i + 1]?.trim() ?? "";
  return next.startsWith("value:") ? next.slice(6).trim() : undefined;
}

/** Decode a TPM2B_PUBLIC with `tpm2_print` (attributes, scheme, PEM), and compute its name. */
async function parseTpmPublic(blob: Buffer, what: string): Promise<TpmPublic> {
  if (blob.length < 4 || blob.readUInt16BE(0) !== blob.length - 2) throw bad(`${what} is not a TPM2B_PUBLIC`);
  return withTmp(async (dir) => {
    const f = join(dir, "pub.bin");
    await writeFile(f, blob, { mode: 0o600 });
    let yaml: string;
    let pem: string;
    try {
      yaml = (await tool("tpm2_print", ["-t", "TPM2B_PUBLIC", f])).stdout.toString("utf8");
      pem = (await tool("tpm2_print", ["-t", "TPM2B_PUBLIC", "-f", "pem", f])).stdout.toString("utf8");
    } catch (e) {
      if (e instanceof EdgeTrustError) throw e;
      throw bad(`${what} is not a TPM2B_PUBLIC tpm2_print can decode`);
    }
    const nameAlg = yamlValue(yaml, "name-alg");
    const type = yamlValue(yaml, "type");
    if (nameAlg !== "sha256") throw bad(`${what}: name algorithm ${nameAlg ?? "?"} is not supported (sha256)`);
    if (type !== "rsa" && type !== "ecc") throw bad(`${what}: key type ${type ?? "?"} is not supported (rsa, ecc)`);
    const name = "000b" + createHash("sha256").update(blob.subarray(2)).digest("hex");
    const spkiDer = derOf(pem, ["PUBLIC KEY"]);
    return {
      name, type, pem, spkiDer,
      attributes: new Set((yamlValue(yaml, "attributes") ?? "").split("|").filter(Boolean)),
      scheme: yamlValue(yaml, "scheme") ?? "", schemeHash: yamlValue(yaml, "scheme-halg") ?? "",
    };
  });
}

/** An AK fit for credential activation and certify: restricted signing key that never leaves its TPM. */
function checkAkAttributes(ak: TpmPublic): void {
  const need = ["fixedtpm", "fixedparent", "sensitivedataorigin", "restricted", "sign"];
  const missing = need.filter((a) => !ak.attributes.has(a));
  if (missing.length > 0) throw unauth(`the attestation key lacks ${missing.join(", ")}`, "create it with tpm2_createak");
  if (ak.attributes.has("decrypt")) throw unauth("the attestation key must not be a decryption key");
  if (!((ak.type === "ecc" && ak.scheme === "ecdsa") || (ak.type === "rsa" && ak.scheme === "rsassa")) || ak.schemeHash !== "sha256") {
    throw unauth(`the attestation key's scheme ${ak.scheme}/${ak.schemeHash} is not supported (ecdsa or rsassa with sha256)`);
  }
}

/** A device identity key generated inside the TPM, not exportable, that can sign a CSR. */
function checkIdentityKeyAttributes(k: TpmPublic): void {
  const need = ["fixedtpm", "fixedparent", "sensitivedataorigin", "sign"];
  const missing = need.filter((a) => !k.attributes.has(a));
  if (missing.length > 0) throw unauth(`the identity key lacks ${missing.join(", ")}: it must be generated in the TPM and never leave it`);
  if (k.attributes.has("restricted")) throw unauth("the identity key must be an unrestricted signing key (it signs the CSR)");
}

/** `tpm2_makecredential --tcti none`: seal `secret` to the EK for the object named `name`. */
async function makeCredential(ekSpkiDer: Buffer, name: string, secret: Buffer): Promise<Buffer> {
  const kind = createPublicKey({ key: ekSpkiDer, format: "der", type: "spki" }).asymmetricKeyType;
  if (kind !== "rsa" && kind !== "ec") throw bad(`EK key type ${String(kind)} is not supported`);
  return withTmp(async (dir) => {
    const ek = join(dir, "ek.pem");
    const s = join(dir, "secret.bin");
    const out = join(dir, "cred.bin");
    await writeFile(ek, createPublicKey({ key: ekSpkiDer, format: "der", type: "spki" }).export({ format: "pem", type: "spki" }), { mode: 0o600 });
    await writeFile(s, secret, { mode: 0o600 });
    await tool("tpm2_makecredential", ["--tcti", "none", "-u", ek, "-G", kind === "rsa" ? "rsa" : "ecc", "-s", s, "-n", name, "-o", out]);
    return readFile(out);
  });
}

/**
 * The certified name in a TPMS_ATTEST of type TPM_ST_ATTEST_CERTIFY (TPM 2.0 Part 2 §10.12.8). tpm2-tools 5.4's
 * `tpm2_print` stops at the attested union for certify, so the length-prefixed fields are walked here (read only).
 */
function certifiedName(attest: Buffer): string {
  let off = 0;
  const need = (n: number): void => {
    if (off + n > attest.length) throw unauth("the certify information is truncated");
  };
  const u16 = (): number => { need(2); const v = attest.readUInt16BE(off); off += 2; return v; };
  const sized = (): Buffer => { const n = u16(); need(n); const v = attest.subarray(off, off + n); off += n; return v; };
  need(4);
  if (attest.readUInt32BE(0) !== TPM_GENERATED_VALUE) throw unauth("the certify information was not generated by a TPM (magic)");
  off = 4;
  if (u16() !== TPM_ST_ATTEST_CERTIFY) throw unauth("the attestation is not a TPM2_Certify result");
  sized(); // qualifiedSigner
  sized(); // extraData
  need(17 + 8); off += 17 + 8; // clockInfo, firmwareVersion
  const name = sized();
  sized(); // qualifiedName
  if (off !== attest.length) throw unauth("the certify information has trailing bytes");
  return name.toString("hex");
}

function proofMac(secret: Buffer, challengeId: string, csr: string, edgeCaCsr: string | undefined): Buffer {
  return createHmac("sha256", secret).update(`${TPM_PROOF_LABEL}\n${challengeId}\n${sha256Hex(csr.trim())}\n${sha256Hex((edgeCaCsr ?? "").trim())}`).digest();
}

/** What a device computes after `tpm2_activatecredential` (exported for the device side and tests). */
export function tpmRegistrationProof(secret: Buffer, challengeId: string, csr: string, edgeCaCsr?: string): string {
  return proofMac(secret, challengeId, csr, edgeCaCsr).toString("base64");
}

/** The EK a device names must be byte for byte the enrolled one (checked before anything else about it). */
export function checkSentEk(ekPub: string, enrolledEkSpki: Buffer): void {
  let sentEk: Buffer;
  try {
    sentEk = derOf(ekPub, ["PUBLIC KEY"]);
  } catch {
    throw bad("ekPub is neither a PEM PUBLIC KEY nor base64 DER");
  }
  if (!sentEk.equals(enrolledEkSpki)) throw unauth("this EK is not the enrolled endorsement key");
}

/** What a challenge remembers until it is answered (stored as JSON: the secret only lives as long as the challenge). */
interface Pending {
  registrationId: string;
  ekSha256: string;
  akPem: string;
  /** base64 */
  secret: string;
}

interface TpmChallengeOptions {
  /** How long a challenge may be answered (default 120 s). */
  ttlMs?: number;
  /** Most challenges one client address may be given per `ttlMs`, fleet-wide (default 10,000). */
  maxPerSource?: number;
  now?: () => number;
}

/**
 * Outstanding challenges, in the store (`single_use_tokens`), so the process that checks the answer need not be the
 * one that made the challenge: single use fleet-wide (taken on the first answer, right or wrong), short-lived, bound
 * to the registration id and the EK they were made for. The secret sits in the store for at most `ttlMs`; whoever can
 * read the CA database during that time could answer for the TPM (the database is inside the CA's trust boundary).
 */
export class TpmChallenges {
  private readonly tokens: SingleUseTokens;
  private readonly ttlMs: number;

  constructor(db: Db, opts: TpmChallengeOptions = {}) {
    this.ttlMs = opts.ttlMs ?? 120_000;
    this.tokens = new SingleUseTokens(db, "tpm-challenge", { ttlMs: this.ttlMs, maxPerSource: opts.maxPerSource ?? 10_000, ...(opts.now ? { now: opts.now } : {}) });
  }

  /** Make a challenge for an enrolled EK (`ekSpkiDer` comes from the enrollment, never from the request). */
  async create(registrationId: string, ekSpkiDer: Buffer, req: TpmChallengeRequest, source = "local"): Promise<TpmChallenge> {
    checkSentEk(req.ekPub, ekSpkiDer);
    const ak = await parseTpmPublic(b64(req.akPub, "akPub"), "akPub");
    const akName = /^[0-9a-fA-F]+$/.test(req.akName) ? req.akName.toLowerCase() : b64(req.akName, "akName", 256).toString("hex");
    if (akName !== ak.name) throw unauth("akName is not the name of akPub");
    checkAkAttributes(ak);
    const secret = randomBytes(32);
    const blob = await makeCredential(ekSpkiDer, ak.name, secret);
    const challengeId = randomUUID();
    const pending: Pending = { registrationId, ekSha256: sha256Hex(ekSpkiDer), akPem: ak.pem, secret: secret.toString("base64") };
    const expiresAt = await this.tokens.put(challengeId, source, JSON.stringify(pending));
    return { challengeId, credential: blob.toString("base64"), expiresAt: new Date(expiresAt).toISOString() };
  }

  /**
   * Check a registration's TPM proof against its challenge (taken: a second use fails): the activated secret, the
   * AK's certify of the identity key, and that the identity key is the CSR's key. Returns nothing; throws 401s.
   */
  async verify(registrationId: string, enrolledEkSha256: string, proof: TpmProof, csr: { pem: string; spkiDer: Buffer }, edgeCaCsr: string | undefined): Promise<void> {
    const taken = await this.tokens.take(proof.challengeId);
    if (!taken) throw unauth("unknown or already used TPM challenge", "ask for a new challenge (POST …/tpm-challenge)");
    const p = JSON.parse(taken.payload) as Pending;
    if (p.registrationId !== registrationId) throw unauth("this TPM challenge was made for another registration id");
    if (taken.expired) throw unauth("the TPM challenge expired", "ask for a new challenge");
    if (p.ekSha256 !== enrolledEkSha256) throw unauth("the enrolled EK changed since this challenge was made");
    const given = b64(proof.proof, "tpm.proof", 64);
    const want = proofMac(Buffer.from(p.secret, "base64"), proof.challengeId, csr.pem, edgeCaCsr);
    if (given.length !== want.length || !timingSafeEqual(given, want)) throw unauth("the TPM proof does not verify (the credential was not activated by the enrolled TPM, or the CSRs differ)");
    const attest = b64(proof.certifyInfo, "tpm.certifyInfo", 4096);
    const sig = b64(proof.certifySignature, "tpm.certifySignature", 4096);
    let sigOk = false;
    try {
      sigOk = verifySignature("sha256", attest, createPublicKey(p.akPem), sig);
    } catch {
      sigOk = false;
    }
    if (!sigOk) throw unauth("the certify signature does not verify with the attestation key");
    const key = await parseTpmPublic(b64(proof.keyPub, "tpm.keyPub"), "tpm.keyPub");
    if (certifiedName(attest) !== key.name) throw unauth("the attestation key did not certify this identity key");
    checkIdentityKeyAttributes(key);
    if (!key.spkiDer.equals(csr.spkiDer)) throw unauth("the CSR's key is not the TPM identity key the attestation key certified");
  }
}
