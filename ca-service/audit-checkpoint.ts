import * as jose from "jose";
import { EdgeTrustError } from "../common/index.js";
import { signingAlgorithmFor } from "../pki/index.js";
import type { CertificateAuthority } from "./ca.js";
import type { CaStore } from "./store.js";

/**
 * The audit head anchored outside the CA. `audit verify` alone cannot see an attacker who rewrites the tail of the
 * chain AND the head row (every link recomputed). A checkpoint — head seq, head hash, time — signed by the issuing
 * CA's key (in the HSM) and kept elsewhere (a file, a ticket, a log shipper) pins the chain: a later store whose entry
 * at that seq has another hash, or that has fewer entries, was rewritten.
 *
 * Format: a compact JWS (header `{alg, typ: "audit-checkpoint+jwt", x5c: [issuing CA]}`), signed like the EAR results
 * (the key is in the HSM, so the signing input is built here and signed through the key store; anyone verifies it
 * with jose).
 */
interface AuditCheckpoint {
  seq: number;
  headHash: string;
  at: string;
  issuerId: string;
}

const TYP = "audit-checkpoint+jwt";
const ALGS = ["ES256", "ES384", "RS256"];

export async function createCheckpoint(ca: CertificateAuthority, store: CaStore): Promise<{ jws: string; checkpoint: AuditCheckpoint }> {
  const head = (await store.db.query<{ seq: number | string; hash: string }>("SELECT seq, hash FROM audit_head WHERE id = 1"))[0];
  if (!head) throw new EdgeTrustError("CONFLICT", "the audit chain has no head row");
  const issuer = ca.current();
  const checkpoint: AuditCheckpoint = { seq: Number(head.seq), headHash: head.hash, at: new Date().toISOString(), issuerId: issuer.record.id };
  const alg = signingAlgorithmFor(issuer.key);
  const jwsAlg = alg.name === "ECDSA" ? (alg.hash === "SHA-384" ? "ES384" : "ES256") : "RS256";
  const header = { alg: jwsAlg, typ: TYP, x5c: [Buffer.from(issuer.cert.rawData).toString("base64")] };
  const input = `${jose.base64url.encode(JSON.stringify(header))}.${jose.base64url.encode(JSON.stringify(checkpoint))}`;
  const sig = await ca.crypto.subtle.sign(alg.name === "ECDSA" ? { name: "ECDSA", hash: alg.hash } : { name: alg.name }, issuer.key, new TextEncoder().encode(input));
  return { jws: `${input}.${jose.base64url.encode(new Uint8Array(sig))}`, checkpoint };
}

interface CheckpointVerdict {
  ok: boolean;
  checkpoint?: AuditCheckpoint;
  reason?: string;
}

/**
 * Check the store against a checkpoint: signed by one of this CA's issuing CAs, and the store's entry at its seq has
 * its hash (so nothing up to there was rewritten) and the head has not gone backwards.
 */
export async function verifyCheckpoint(ca: CertificateAuthority, store: CaStore, jws: string): Promise<CheckpointVerdict> {
  let header: jose.ProtectedHeaderParameters;
  try {
    header = jose.decodeProtectedHeader(jws.trim());
  } catch (e) {
    return { ok: false, reason: `the checkpoint is not a compact JWS: ${(e as Error).message}` };
  }
  const x5c: unknown = header.x5c;
  const leaf = Array.isArray(x5c) && typeof x5c[0] === "string" ? x5c[0] : undefined;
  const issuer = leaf ? ca.issuers().find((c) => Buffer.from(c.cert.rawData).toString("base64") === leaf) : undefined;
  if (!issuer) return { ok: false, reason: "the checkpoint was not signed by an issuing CA of this CA" };
  let cp: AuditCheckpoint;
  try {
    const { payload } = await jose.compactVerify(jws.trim(), await jose.importX509(issuer.cert.toString("pem"), typeof header.alg === "string" ? header.alg : "none"), { algorithms: ALGS });
    if (header.typ !== TYP) throw new Error(`typ must be ${TYP}`);
    cp = JSON.parse(new TextDecoder().decode(payload)) as AuditCheckpoint;
    if (!Number.isSafeInteger(cp.seq) || cp.seq < 0 || typeof cp.headHash !== "string") throw new Error("payload has no seq/headHash");
  } catch (e) {
    return { ok: false, reason: `the checkpoint signature or payload does not verify: ${(e as Error).message}` };
  }
  const chain = await store.verifyAudit();
  if (!chain.ok) return { ok: false, checkpoint: cp, reason: `the chain itself is broken at ${chain.problem?.seq ?? "?"}: ${chain.problem?.reason ?? ""}` };
  if (cp.seq === 0) return { ok: true, checkpoint: cp };
  if (chain.entries < cp.seq) return { ok: false, checkpoint: cp, reason: `the log has ${chain.entries} entries, fewer than the ${cp.seq} the checkpoint of ${cp.at} saw (entries removed and the head rewritten)` };
  const row = (await store.db.query<{ hash: string }>("SELECT hash FROM audit_log WHERE seq = ?", [cp.seq]))[0];
  if (row?.hash !== cp.headHash) {
    return { ok: false, checkpoint: cp, reason: `entry ${cp.seq} hashes to ${(row?.hash ?? "nothing").slice(0, 16)}…, the checkpoint of ${cp.at} recorded ${cp.headHash.slice(0, 16)}… (the chain up to there was rewritten)` };
  }
  return { ok: true, checkpoint: cp };
}
