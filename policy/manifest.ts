import { existsSync, readFileSync } from "node:fs";
import { Type, type Static } from "@sinclair/typebox";
import { EdgeTrustError, validateValue, writeFileAtomic } from "../common/index.js";
import { decideImage, decideModuleOptions, type Decision } from "./decide.js";
import { countSigners, decodePayload, MANIFEST_TYP, parseGeneralJws, sha256Hex, type GeneralJws } from "./jws.js";
import { nameGlobMatch } from "./match.js";
import { MANIFEST_LIMITS, ManifestSchema, type Manifest, type Policy } from "./schema.js";
import { addSignature, type JwsSigner } from "./sign.js";
import { trustRootExpired, type TrustRoot } from "./trust-root.js";

/** How far in the future `issuedAt` may be (signer clock ahead of the device). */
const MAX_CLOCK_SKEW_MS = 5 * 60 * 1000;

/** Validate a manifest object (schema + caps) without signing it. */
export function validateManifest(value: unknown): Manifest {
  const m = validateValue(value, ManifestSchema, "manifest", "MANIFEST_INVALID");
  const problems = manifestProblems(m);
  if (problems.length > 0) throw new EdgeTrustError("MANIFEST_INVALID", problems.join("; "));
  return m;
}

function manifestProblems(m: Manifest): string[] {
  const out: string[] = [];
  const names = Object.keys(m.modules);
  if (names.length > MANIFEST_LIMITS.maxModules) out.push(`${names.length} modules, more than ${MANIFEST_LIMITS.maxModules}`);
  if (Object.keys(m.routes ?? {}).length > MANIFEST_LIMITS.maxRoutes) out.push(`more than ${MANIFEST_LIMITS.maxRoutes} routes`);
  for (const [n, mod] of Object.entries(m.modules)) {
    if (Object.keys(mod.env ?? {}).length > MANIFEST_LIMITS.maxEnv) out.push(`module ${n}: more than ${MANIFEST_LIMITS.maxEnv} env variables`);
  }
  const iss = Date.parse(m.issuedAt);
  const exp = Date.parse(m.expiresAt);
  if (!Number.isFinite(iss) || !Number.isFinite(exp)) out.push("issuedAt/expiresAt are not valid times");
  else if (exp <= iss) out.push(`expiresAt ${m.expiresAt} is not after issuedAt ${m.issuedAt}`);
  return out;
}

/**
 * Sign a manifest: start a JWS over `manifest` (validated first), or add one signature to an existing JWS (its
 * payload bytes untouched, so every signer signs the same bytes).
 */
export async function signManifest(target: Manifest | GeneralJws, signer: JwsSigner): Promise<GeneralJws> {
  if ("payload" in target && "signatures" in target) {
    const payload = JSON.parse(new TextDecoder().decode(decodePayload(target.payload, MANIFEST_LIMITS.maxPayloadBytes))) as unknown;
    validateManifest(payload);
    return addSignature({ jws: target }, signer, MANIFEST_TYP);
  }
  const m = validateManifest(target);
  const bytes = new TextEncoder().encode(JSON.stringify(m, null, 2));
  if (bytes.length > MANIFEST_LIMITS.maxPayloadBytes) throw new EdgeTrustError("MANIFEST_TOO_LARGE", `manifest is ${bytes.length} bytes, more than ${MANIFEST_LIMITS.maxPayloadBytes}`);
  return addSignature({ payload: bytes }, signer, MANIFEST_TYP);
}

/** The last accepted manifest (what rollback and replay are measured against). */
export const ManifestStateSchema = Type.Object(
  {
    deviceId: Type.String({ maxLength: 128 }),
    deploymentId: Type.String({ maxLength: 128 }),
    version: Type.Integer({ minimum: 0 }),
    payloadDigest: Type.String({ pattern: "^[a-f0-9]{64}$" }),
    acceptedAt: Type.String({ maxLength: 64 }),
  },
  { additionalProperties: false },
);
type ManifestState = Static<typeof ManifestStateSchema>;

type Check =
  | "size"
  | "format"
  | "schema"
  | "trust-root"
  | "signature"
  | "threshold"
  | "rollback"
  | "replay"
  | "expired"
  | "not-yet-valid"
  | "target"
  | "image"
  | "module-options";

export interface VerdictReason {
  check: Check;
  message: string;
}

export interface Verdict {
  ok: boolean;
  /** Every failed check (empty when ok). */
  reasons: VerdictReason[];
  /** Non-fatal findings: policy denials in audit mode, signatures by keys the trust root does not list. */
  warnings: VerdictReason[];
  /** The manifest, only when ok: nothing unverified leaks out. */
  manifest?: Manifest;
  /** Distinct trusted keys that signed. */
  signers: string[];
  /** Policy decisions for every image and module (with the rules that decided). */
  decisions: Decision[];
  /** sha256 hex of the signed payload (for state, attestation and reports). */
  payloadDigest?: string;
  version?: number;
  deploymentId?: string;
  /** The one reference time every time check used (ISO). */
  checkedAt: string;
}

interface VerifyOptions {
  policy: Policy;
  trustRoot: TrustRoot;
  deviceId: string;
  /** Last accepted state; undefined on a device that has never accepted a manifest. */
  state?: ManifestState | undefined;
  /** The reference time (frozen: taken once). Defaults to the clock, read once. */
  now?: Date;
  /**
   * Re-verify the last accepted manifest itself (boot with last-known-good): version equal to the state's is then
   * accepted only when the payload digest is exactly the accepted one. Off by default: equal version is a replay.
   */
  reloadAccepted?: boolean;
}

function fail(checkedAt: string, check: Check, message: string): Verdict {
  return { ok: false, reasons: [{ check, message }], warnings: [], signers: [], decisions: [], checkedAt };
}

/**
 * Verify a signed deployment manifest (JWS General JSON text or bytes). The checks, in order, all run (except when
 * the input is too large or not a JWS at all) and every failure is reported:
 * size caps; JWS shape; payload schema; trust root not expired; each signature (closed header, known kid, alg equal
 * to the key's, jose verification); threshold of distinct keys; version > last accepted (rollback, replay);
 * issuedAt not in the future, expiresAt in the future (one frozen `now`); this device targeted; every image by digest
 * from an allowed registry; every module's options inside policy.
 */
export async function verifyManifest(input: string | Uint8Array, opts: VerifyOptions): Promise<Verdict> {
  const nowMs = (opts.now ?? new Date()).getTime();
  const checkedAt = new Date(nowMs).toISOString();
  try {
    return await verifyFrozen(input, opts, nowMs, checkedAt);
  } catch (e) {
    // Fail closed: an unexpected error is a rejection with its reason, never an exception the caller might skip.
    return fail(checkedAt, "format", `verification failed: ${(e as Error).message}`);
  }
}

async function verifyFrozen(input: string | Uint8Array, opts: VerifyOptions, nowMs: number, checkedAt: string): Promise<Verdict> {
  const L = MANIFEST_LIMITS;
  const size = typeof input === "string" ? Buffer.byteLength(input) : input.byteLength;
  if (size > L.maxJwsBytes) return fail(checkedAt, "size", `manifest JWS is ${size} bytes, more than ${L.maxJwsBytes}`);
  const text = typeof input === "string" ? input : new TextDecoder().decode(input);
  const jws = parseGeneralJws(text, L.maxSignatures);
  if (typeof jws === "string") return fail(checkedAt, "format", jws);

  const reasons: VerdictReason[] = [];
  const warnings: VerdictReason[] = [];
  const decisions: Decision[] = [];

  // Payload: bounded decode, then schema.
  let manifest: Manifest | undefined;
  let payloadDigest: string | undefined;
  try {
    const bytes = decodePayload(jws.payload, L.maxPayloadBytes);
    payloadDigest = sha256Hex(jws.payload);
    manifest = validateManifest(JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes)) as unknown);
  } catch (e) {
    const tooLarge = e instanceof EdgeTrustError && e.code === "MANIFEST_TOO_LARGE";
    if (tooLarge) return fail(checkedAt, "size", (e as Error).message);
    reasons.push({ check: "schema", message: (e as Error).message });
  }

  // Trust root and signatures.
  const root = opts.trustRoot.body;
  if (trustRootExpired(opts.trustRoot, nowMs)) reasons.push({ check: "trust-root", message: `trust root version ${root.version} expired at ${root.expires}` });
  const sig = await countSigners(jws, root.keys, MANIFEST_TYP, L.maxProtectedHeaderBytes);
  for (const e of sig.errors) reasons.push({ check: "signature", message: e });
  for (const w of sig.warnings) warnings.push({ check: "signature", message: w });
  if (sig.signers.length < root.threshold) {
    reasons.push({ check: "threshold", message: `${sig.signers.length} of the required ${root.threshold} distinct trusted keys signed (${sig.signers.join(", ") || "none"})` });
  }

  if (manifest) {
    const m = manifest;
    const state = opts.state;
    if (state) {
      if (m.version < state.version) reasons.push({ check: "rollback", message: `version ${m.version} is older than the accepted version ${state.version}` });
      else if (m.version === state.version) {
        if (!(opts.reloadAccepted && payloadDigest === state.payloadDigest)) {
          reasons.push({ check: "replay", message: `version ${m.version} was already accepted (a new deployment needs a greater version)` });
        }
      }
    }
    const iss = Date.parse(m.issuedAt);
    const exp = Date.parse(m.expiresAt);
    if (iss > nowMs + MAX_CLOCK_SKEW_MS) reasons.push({ check: "not-yet-valid", message: `issuedAt ${m.issuedAt} is in the future (now ${checkedAt})` });
    if (!(exp > nowMs)) reasons.push({ check: "expired", message: `expired at ${m.expiresAt} (now ${checkedAt})` });
    if (!m.targets.some((t) => nameGlobMatch(t, opts.deviceId))) {
      reasons.push({ check: "target", message: `device ${opts.deviceId} is not among the targets (${m.targets.slice(0, 5).join(", ")}${m.targets.length > 5 ? ", …" : ""})` });
    }
    for (const [name, mod] of Object.entries(m.modules)) {
      const di = decideImage(opts.policy, mod.image, name);
      decisions.push(di);
      const dm = decideModuleOptions(opts.policy, name, mod.options ?? {});
      decisions.push(dm);
      for (const [d, check] of [[di, "image"], [dm, "module-options"]] as const) {
        if (d.allowed) continue;
        const why = d.rules.filter((r) => r.effect === "deny").map((r) => `${r.reason} [${r.rule}]`).join("; ");
        const reason = { check, message: `module ${name}: ${why}` };
        // Digest pinning is a trust check, not a policy preference: audit mode never relaxes it.
        const pinning = d.rules.some((r) => r.effect === "deny" && r.rule === "images.digest-pinning");
        if (d.permitted && !pinning) warnings.push({ check, message: `audit: ${reason.message}` });
        else reasons.push(reason);
      }
    }
  }

  const ok = reasons.length === 0 && manifest !== undefined;
  const v: Verdict = { ok, reasons, warnings, signers: sig.signers, decisions, checkedAt };
  if (payloadDigest) v.payloadDigest = payloadDigest;
  if (manifest) {
    v.version = manifest.version;
    v.deploymentId = manifest.deploymentId;
  }
  if (ok) v.manifest = manifest;
  return v;
}

/**
 * The accepted-manifest state on disk (one JSON file, written atomically). A corrupt or unreadable state fails
 * closed: the agent keeps its last-known-good and reports, it never treats a broken file as "nothing accepted".
 */
export class ManifestStateStore {
  constructor(readonly file: string) {}

  read(): ManifestState | undefined {
    if (!existsSync(this.file)) return undefined;
    let v: unknown;
    try {
      v = JSON.parse(readFileSync(this.file, "utf8"));
    } catch (e) {
      throw new EdgeTrustError("MANIFEST_STATE_INVALID", `manifest state ${this.file} is unreadable: ${(e as Error).message}`, { hint: "restore it from backup; never delete it to get past a rollback check" });
    }
    return validateValue(v, ManifestStateSchema, `manifest state ${this.file}`, "MANIFEST_STATE_INVALID");
  }

  /** Record an ok verdict; refuses anything not newer than what is stored. Returns the new state. */
  accept(verdict: Verdict, deviceId: string, now: Date = new Date()): ManifestState {
    if (!verdict.ok || !verdict.manifest || !verdict.payloadDigest) throw new EdgeTrustError("MANIFEST_REJECTED", "cannot accept a manifest that did not verify");
    const cur = this.read();
    if (cur && verdict.manifest.version <= cur.version) {
      if (verdict.manifest.version === cur.version && verdict.payloadDigest === cur.payloadDigest) return cur;
      throw new EdgeTrustError("MANIFEST_REJECTED", `version ${verdict.manifest.version} is not newer than the accepted ${cur.version}`);
    }
    const state: ManifestState = {
      deviceId,
      deploymentId: verdict.manifest.deploymentId,
      version: verdict.manifest.version,
      payloadDigest: verdict.payloadDigest,
      acceptedAt: now.toISOString(),
    };
    writeFileAtomic(this.file, JSON.stringify(state, null, 2) + "\n");
    return state;
  }
}
