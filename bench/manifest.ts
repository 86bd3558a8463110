import * as jose from "jose";
import type { Benchmark } from "./types.js";
import { row } from "./types.js";
import { signManifest, verifyManifest, type GeneralJws, type JwsSigner, type Verdict } from "../policy/index.js";
import { FIXTURE_NOW, fixturePolicy, makeManifest, makeSigner, makeTrustRoot } from "../policy/fixtures.js";

const MODULES = 50;
/** Alternating rounds (A B, B A, ...) so load from other processes on a shared machine falls on both sides alike. */
const ROUNDS = 10;
const ROUND_MS = 300;
/** Issue 5: our full verification at most 1.5x the bare jose verification of the same signatures. */
const MAX_SLOWDOWN = 1.5;

interface Timed {
  ops: number;
  ms: number;
}

async function timed(ms: number, fn: () => Promise<void>): Promise<Timed> {
  const start = performance.now();
  let ops = 0;
  let elapsed = 0;
  while (elapsed < ms) {
    for (let i = 0; i < 5; i++) await fn();
    ops += 5;
    elapsed = performance.now() - start;
  }
  return { ops, ms: elapsed };
}

/** Operations per second of `a` and of `b`, measured in alternating rounds after a warm-up of each. */
async function interleaved(a: () => Promise<void>, b: () => Promise<void>): Promise<[number, number]> {
  for (let i = 0; i < 30; i++) {
    await a();
    await b();
  }
  const tot: [Timed, Timed] = [{ ops: 0, ms: 0 }, { ops: 0, ms: 0 }];
  for (let i = 0; i < ROUNDS; i++) {
    const order: [0 | 1, () => Promise<void>][] = i % 2 === 0 ? [[0, a], [1, b]] : [[1, b], [0, a]];
    for (const [j, f] of order) {
      const r = await timed(ROUND_MS, f);
      tot[j].ops += r.ops;
      tot[j].ms += r.ms;
    }
  }
  return [(tot[0].ops * 1000) / tot[0].ms, (tot[1].ops * 1000) / tot[1].ms];
}

/**
 * Issue 5: verification of a 50-module manifest with 3-of-5 signatures (ES256 + ES384 + EdDSA signed; trust root of
 * 2 ES256, 2 ES384, 1 EdDSA key), against bare jose signature verification of the same three signatures
 * (`flattenedVerify` per signature with keys imported once) in the same run. The full verification is everything a
 * device does: size caps, envelope and canonical base64url, payload decode + JSON parse + schema, the closed
 * protected headers, the three jose verifications, threshold, rollback/replay, time, target, 50 image and 50 module
 * decisions. Target: full <= 1.5x bare, i.e. a throughput ratio >= 1/1.5.
 */
export const manifestBenchmark: Benchmark = {
  id: "manifest-verify",
  description: "manifest verification (3-of-5, 50 modules) vs bare jose flattenedVerify of the same three signatures",
  async run(progress) {
    progress.step("keys, trust root (3 of 5) and a signed 50-module manifest");
    const signers: JwsSigner[] = [];
    for (const alg of ["ES256", "ES384", "EdDSA", "ES256", "ES384"] as const) signers.push(await makeSigner(alg));
    const { root } = await makeTrustRoot(signers, { threshold: 3 });
    const policy = fixturePolicy();
    let jws: GeneralJws = await signManifest(makeManifest({}, MODULES), signers[0] as JwsSigner);
    for (const s of signers.slice(1, 3)) jws = await signManifest(jws, s);
    const text = JSON.stringify(jws);
    const opts = { policy, trustRoot: root, deviceId: "dev-1", now: FIXTURE_NOW };
    const check: Verdict = await verifyManifest(text, opts);
    if (!check.ok || check.signers.length !== 3 || check.decisions.length !== 2 * MODULES) {
      throw new Error(`bench manifest does not verify as 3-of-5: ${check.reasons.map((r) => r.message).join("; ")}`);
    }

    // The reference: jose alone, the same three signatures over the same payload, keys imported beforehand.
    const bare = await Promise.all(
      jws.signatures.map(async (s, i) => {
        const pub = (signers[i] as JwsSigner).publicKey;
        const jwk: jose.JWK = { kty: pub.kty, crv: pub.crv, x: pub.x, ...(pub.y !== undefined ? { y: pub.y } : {}) };
        return { jws: { protected: s.protected, payload: jws.payload, signature: s.signature }, key: await jose.importJWK(jwk, pub.alg), alg: pub.alg };
      }),
    );
    const bareVerify = async (): Promise<void> => {
      for (const b of bare) await jose.flattenedVerify(b.jws, b.key, { algorithms: [b.alg] });
    };
    const fullVerify = async (): Promise<void> => {
      const v = await verifyManifest(text, opts);
      if (!v.ok) throw new Error("verify failed");
    };
    progress.step(`verifyManifest vs bare jose x3, ${ROUNDS} alternating rounds of ${ROUND_MS} ms`);
    const [full, reference] = await interleaved(fullVerify, bareVerify);
    return [
      row({
        name: `manifest verify, 3-of-5 (ES256+ES384+EdDSA), ${MODULES} modules, ${text.length} B`,
        value: full,
        unit: "verifications/s",
        reference: { name: "jose flattenedVerify x3, same signatures", value: reference },
        target: 1 / MAX_SLOWDOWN,
        source: "issue 5 (policy/README.md#benchmark)",
      }),
    ];
  },
};
