import { createPublicKey, verify as nodeVerify, type KeyObject } from "node:crypto";
import type { Benchmark } from "./types.js";
import { row } from "./types.js";
import { signManifest, verifyManifest, type JwsSigner } from "../policy/index.js";
import { FIXTURE_NOW, fixturePolicy, makeManifest, makeSigners, makeTrustRoot } from "../policy/fixtures.js";

/** Run `fn` repeatedly for about `ms` milliseconds; operations per second. */
async function rate(ms: number, fn: () => Promise<unknown> | unknown): Promise<number> {
  for (let i = 0; i < 20; i++) await fn();
  let n = 0;
  const start = performance.now();
  let elapsed = 0;
  while (elapsed < ms) {
    for (let i = 0; i < 10; i++) await fn();
    n += 10;
    elapsed = performance.now() - start;
  }
  return (n * 1000) / elapsed;
}

/**
 * Full manifest verification (2-of-3 signed, 20 modules: envelope, caps, schema, headers, jose verification,
 * rollback/expiry/target, 40 policy decisions) against the bare cost of the same two signature checks with
 * Node's `crypto.verify`. The ratio says how much the verifier adds on top of the cryptography.
 */
export const manifestBenchmark: Benchmark = {
  id: "manifest-verify",
  description: "manifest verification (2-of-3, 20 modules) vs raw crypto.verify of the same signatures",
  async run(progress) {
    const signers = await makeSigners();
    const { root } = await makeTrustRoot(signers);
    const policy = fixturePolicy();
    let jws = await signManifest(makeManifest({}, 20), signers[0] as JwsSigner);
    jws = await signManifest(jws, signers[1] as JwsSigner);
    const text = JSON.stringify(jws);
    const opts = { policy, trustRoot: root, deviceId: "dev-1", now: FIXTURE_NOW };
    const check = await verifyManifest(text, opts);
    if (!check.ok) throw new Error(`bench manifest does not verify: ${check.reasons.map((r) => r.message).join("; ")}`);

    const refs = jws.signatures.map((s, i) => {
      const signer = signers[i] as JwsSigner;
      const key: KeyObject = createPublicKey({ key: { ...signer.publicKey }, format: "jwk" });
      const hash = signer.alg === "ES384" ? "sha384" : signer.alg === "ES256" ? "sha256" : null;
      return { key, hash, input: Buffer.from(`${s.protected}.${jws.payload}`), sig: Buffer.from(s.signature, "base64url") };
    });
    progress.step("raw crypto.verify of the two signatures");
    const reference = await rate(1500, () => {
      for (const r of refs) if (!nodeVerify(r.hash, r.input, { key: r.key, dsaEncoding: "ieee-p1363" }, r.sig)) throw new Error("raw verify failed");
    });
    progress.step("verifyManifest");
    const value = await rate(1500, async () => {
      const v = await verifyManifest(text, opts);
      if (!v.ok) throw new Error("verify failed");
    });
    return [
      row({
        name: "manifest verify, 2-of-3 (ES256+ES384), 20 modules",
        value,
        unit: "verifications/s",
        reference: { name: "crypto.verify x2, same signatures", value: reference },
        target: 0.3,
        source: "issue 5 (policy/README.md#benchmark)",
      }),
    ];
  },
};
