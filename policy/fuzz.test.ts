import { describe, expect, it } from "vitest";
import { verifyManifest, signManifest, type GeneralJws, type JwsSigner } from "./index.js";
import { FIXTURE_NOW, fixturePolicy, makeManifest, makeSigners, makeTrustRoot } from "./fixtures.js";

/** Deterministic PRNG (mulberry32) so a failure is reproducible from the printed seed. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

describe("property: random mutations of a valid signed manifest never verify", () => {
  it("600 mutations (string-level, base64url-level and decoded-payload-level)", async () => {
    const signers = await makeSigners();
    const { root } = await makeTrustRoot(signers);
    const policy = fixturePolicy();
    let jws = await signManifest(makeManifest(), signers[0] as JwsSigner);
    jws = await signManifest(jws, signers[1] as JwsSigner);
    const text = JSON.stringify(jws);
    const opts = { policy, trustRoot: root, deviceId: "dev-1", now: FIXTURE_NOW };
    expect((await verifyManifest(text, opts)).ok).toBe(true);
    const seed = 20260115;
    const r = rng(seed);
    const pick = (n: number) => Math.floor(r() * n);
    const payloadBytes = Buffer.from(jws.payload, "base64url");
    let tried = 0;
    for (let i = 0; i < 600; i++) {
      let mutated: string;
      const kind = i % 4;
      if (kind === 0) {
        // flip one character anywhere in the JSON text
        const at = pick(text.length);
        let c = String.fromCharCode(32 + pick(95));
        if (c === text[at]) c = c === "A" ? "B" : "A";
        mutated = text.slice(0, at) + c + text.slice(at + 1);
      } else if (kind === 1) {
        // change one base64url character of the payload, a protected header or a signature
        const j = JSON.parse(text) as GeneralJws;
        const which = pick(1 + j.signatures.length * 2);
        const sig = j.signatures[Math.floor((which - 1) / 2)];
        const get = (): string => (which === 0 ? j.payload : (which - 1) % 2 === 0 ? (sig?.protected ?? "") : (sig?.signature ?? ""));
        const s = get();
        const at = pick(s.length);
        let c = B64[pick(64)] ?? "A";
        if (c === s[at]) c = c === "A" ? "B" : "A";
        const v = s.slice(0, at) + c + s.slice(at + 1);
        if (which === 0) j.payload = v;
        else if (sig && (which - 1) % 2 === 0) sig.protected = v;
        else if (sig) sig.signature = v;
        mutated = JSON.stringify(j);
      } else if (kind === 2) {
        // flip one bit of the decoded payload and re-encode (keeps the signatures)
        const b = Buffer.from(payloadBytes);
        const at = pick(b.length);
        b[at] = (b[at] ?? 0) ^ (1 << pick(8));
        mutated = JSON.stringify({ ...jws, payload: b.toString("base64url") });
      } else {
        // drop, duplicate or reorder signatures; truncate
        const j = JSON.parse(text) as GeneralJws;
        const op = pick(3);
        if (op === 0) j.signatures.splice(pick(j.signatures.length), 1);
        else if (op === 1) j.signatures.push(j.signatures[pick(j.signatures.length)] as GeneralJws["signatures"][number]);
        else {
          mutated = text.slice(0, pick(text.length));
          tried++;
          expect((await verifyManifest(mutated, opts)).ok, `seed ${seed} i ${i}`).toBe(false);
          continue;
        }
        mutated = JSON.stringify(j);
      }
      if (mutated === text) continue;
      tried++;
      const v = await verifyManifest(mutated, opts);
      if (v.ok) throw new Error(`mutation ${i} (seed ${seed}, kind ${kind}) verified: ${mutated.slice(0, 300)}`);
    }
    expect(tried).toBeGreaterThan(550);
  });
});
