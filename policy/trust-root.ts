import { readFileSync, statSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { EdgeTrustError, validateValue } from "../common/index.js";
import { TrustRootBodySchema, type Policy, type TrustKey, type TrustRootBody } from "./schema.js";
import { countSigners, decodePayload, ed25519KeyProblem, parseGeneralJws, sha256Hex, TRUST_ROOT_TYP, type GeneralJws } from "./jws.js";
import { trustKeyProblems } from "./policy.js";
import { addSignature, type JwsSigner } from "./sign.js";

const MAX_TRUST_ROOT_BYTES = 64 * 1024;

/**
 * The trust root (TUF-like root metadata): the manifest signer keys, the threshold, a version and an expiry. On disk,
 * `trust-root.json` is a JWS General JSON Serialization whose payload is the body below, signed by (at least the
 * threshold of) its own keys. The first root is installed out of band; each next one is accepted only through
 * `verifyTrustRootRotation`.
 */
export interface TrustRoot {
  body: TrustRootBody;
  /** sha256 hex of the payload (what an attestation reports). */
  digest: string;
  /** Where it came from: `trust-root.json` (with its JWS) or the policy's inline keys. */
  source: "file" | "policy";
  jws?: GeneralJws;
}

function bodyProblems(body: TrustRootBody): string[] {
  const out = trustKeyProblems(body.keys, body.threshold).map((p) => (p.index === undefined ? `${p.field}: ${p.message}` : `keys[${p.index}].${p.field}: ${p.message}`));
  for (const [i, k] of body.keys.entries()) {
    const problem = k.kty === "OKP" ? ed25519KeyProblem(k.x) : undefined;
    if (problem) out.push(`keys[${i}].x: ${problem}`);
  }
  return out;
}

function parseTrustRootJws(text: string): { jws: GeneralJws; body: TrustRootBody } {
  if (Buffer.byteLength(text) > MAX_TRUST_ROOT_BYTES) throw new EdgeTrustError("TRUST_ROOT_INVALID", `trust root larger than ${MAX_TRUST_ROOT_BYTES} bytes`);
  const jws = parseGeneralJws(text, 64);
  if (typeof jws === "string") throw new EdgeTrustError("TRUST_ROOT_INVALID", `trust root: ${jws}`);
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(decodePayload(jws.payload, MAX_TRUST_ROOT_BYTES)));
  } catch (e) {
    throw new EdgeTrustError("TRUST_ROOT_INVALID", `trust root payload: ${(e as Error).message}`);
  }
  const body = validateValue(value, TrustRootBodySchema, "trust root", "TRUST_ROOT_INVALID");
  const problems = bodyProblems(body);
  if (problems.length > 0) throw new EdgeTrustError("TRUST_ROOT_INVALID", `trust root: ${problems.join("; ")}`);
  return { jws, body };
}

async function thresholdOf(jws: GeneralJws, keys: TrustKey[], threshold: number, what: string): Promise<string[]> {
  const r = await countSigners(jws, keys, TRUST_ROOT_TYP, 1024);
  const out = r.errors.map((e) => `${what}: ${e}`);
  if (r.signers.length < threshold) out.push(`${what}: ${r.signers.length} of the required ${threshold} keys signed (${r.signers.join(", ") || "none"})`);
  return out;
}

/**
 * Load a trust root (text of trust-root.json). It must be signed by its own threshold. Expiry is not checked here:
 * it is checked against the verifier's frozen `now` by every verification that uses the root.
 */
export async function parseTrustRoot(text: string): Promise<TrustRoot> {
  const { jws, body } = parseTrustRootJws(text);
  const problems = await thresholdOf(jws, body.keys, body.threshold, `version ${body.version}`);
  if (problems.length > 0) throw new EdgeTrustError("TRUST_ROOT_INVALID", `trust root is not signed by its own threshold: ${problems.join("; ")}`);
  return { body, digest: sha256Hex(jws.payload), source: "file", jws };
}

export async function loadTrustRoot(file: string): Promise<TrustRoot> {
  let text: string;
  try {
    if (statSync(file).size > MAX_TRUST_ROOT_BYTES) throw new Error(`larger than ${MAX_TRUST_ROOT_BYTES} bytes`);
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new EdgeTrustError("TRUST_ROOT_INVALID", `cannot read trust root ${file}: ${(e as Error).message}`, { cause: e });
  }
  return parseTrustRoot(text);
}

/** The trust a policy names: its `trust.trustRoot` file (relative to the policy file) or its inline keys. */
export async function resolveTrust(policy: Policy, policyFile: string): Promise<TrustRoot> {
  if ("trustRoot" in policy.trust) return loadTrustRoot(resolve(dirname(policyFile), policy.trust.trustRoot));
  const body: TrustRootBody = { type: "edgetrust-trust-root", version: 1, expires: "9999-12-31T23:59:59Z", threshold: policy.trust.threshold, keys: policy.trust.keys };
  return { body, digest: sha256Hex(JSON.stringify(body)), source: "policy" };
}

interface RotationResult {
  ok: boolean;
  reasons: string[];
  /** The new root, when ok. */
  root?: TrustRoot;
}

/**
 * Rotation N -> N+1: accepted only when the new root is well-formed, its version is exactly N+1, it is not expired at
 * `now`, and it is signed by the threshold of the current root's keys AND by the threshold of its own keys. Every
 * failed check is reported. The current root may itself have expired (a device offline for long must still be able
 * to rotate with its old keys' signatures).
 */
export async function verifyTrustRootRotation(current: TrustRoot, nextText: string, opts: { now?: Date } = {}): Promise<RotationResult> {
  const now = (opts.now ?? new Date()).getTime();
  let parsed;
  try {
    parsed = parseTrustRootJws(nextText);
  } catch (e) {
    return { ok: false, reasons: [(e as Error).message] };
  }
  const { jws, body } = parsed;
  const reasons: string[] = [];
  if (body.version !== current.body.version + 1) {
    reasons.push(`version ${body.version} is not exactly ${current.body.version + 1} (current ${current.body.version})`);
  }
  if (!(Date.parse(body.expires) > now)) reasons.push(`new trust root expired at ${body.expires}`);
  reasons.push(...(await thresholdOf(jws, current.body.keys, current.body.threshold, `current root (version ${current.body.version}) keys`)));
  reasons.push(...(await thresholdOf(jws, body.keys, body.threshold, `new root (version ${body.version}) keys`)));
  if (reasons.length > 0) return { ok: false, reasons };
  return { ok: true, reasons: [], root: { body, digest: sha256Hex(jws.payload), source: "file", jws } };
}

/** Start a trust root document (unsigned) or add one signature to one. */
export async function signTrustRoot(target: TrustRootBody | GeneralJws, signer: JwsSigner): Promise<GeneralJws> {
  if ("payload" in target) return addSignature({ jws: target }, signer, TRUST_ROOT_TYP);
  const body = validateValue(target, TrustRootBodySchema, "trust root", "TRUST_ROOT_INVALID");
  const problems = bodyProblems(body);
  if (problems.length > 0) throw new EdgeTrustError("TRUST_ROOT_INVALID", problems.join("; "));
  return addSignature({ payload: new TextEncoder().encode(JSON.stringify(body, null, 2)) }, signer, TRUST_ROOT_TYP);
}

/** Is the root expired at `nowMs`? */
export function trustRootExpired(root: TrustRoot, nowMs: number): boolean {
  return !(Date.parse(root.body.expires) > nowMs);
}
