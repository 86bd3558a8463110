import { execFileSync } from "node:child_process";
import { createPublicKey, verify, constants } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { Writable } from "node:stream";
import pkcs11js from "pkcs11js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EdgeTrustError, createLogger } from "../common/index.js";
import { openKeyStore } from "./open.js";
import { Pkcs11KeyStore } from "./pkcs11.js";
import { moduleRefCount } from "./pkcs11-module.js";
import { parseKeyRef } from "./pkcs11-uri.js";
import { readPin } from "./pin.js";
import { SOFTHSM_MODULE, createSoftHsmDir, initToken, type SoftHsmDir } from "./token-setup.js";
import { HsmConfig } from "./config.js";
import { Value } from "@sinclair/typebox/value";
import { KEY_ALGORITHMS, defaultScheme, type KeyAlgorithm, type SignatureScheme } from "./types.js";

// A distinctive PIN so a leak into any message or log line is unmistakable.
const PIN = "pin-7f3a9c-secret";
const SO_PIN = "so-pin-4411-secret";
const TOKEN = "et-main";
const OTHER = "et-other";

let hsm: SoftHsmDir;
let store: Pkcs11KeyStore;
const logLines: string[] = [];
const logger = createLogger("hsm", {
  level: "debug",
  destination: new Writable({
    write(chunk: Buffer, _enc, cb) {
      logLines.push(chunk.toString());
      cb();
    },
  }),
});
const errorMessages: string[] = [];

async function expectCode(p: Promise<unknown> | (() => unknown), code: string): Promise<EdgeTrustError> {
  let err: unknown;
  try {
    await (typeof p === "function" ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err, `expected ${code}`).toBeInstanceOf(EdgeTrustError);
  const e = err as EdgeTrustError;
  errorMessages.push(e.toLine(), JSON.stringify(e.toProblem()));
  expect(e.code).toBe(code);
  expect(e.hint, "every HSM error carries a hint").toBeTruthy();
  return e;
}

function verifySig(spki: Buffer, scheme: SignatureScheme, data: Buffer, sig: Buffer): boolean {
  const key = createPublicKey({ key: spki, format: "der", type: "spki" });
  const alg = scheme.hash.replace("SHA-", "sha");
  if (scheme.name === "ECDSA") return verify(alg, data, { key, dsaEncoding: "ieee-p1363" }, sig);
  if (scheme.name === "RSA-PSS") return verify(alg, data, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: scheme.saltLength }, sig);
  return verify(alg, data, { key, padding: constants.RSA_PKCS1_PADDING }, sig);
}

beforeAll(async () => {
  hsm = createSoftHsmDir();
  initToken({ module: SOFTHSM_MODULE, label: TOKEN, soPin: SO_PIN, userPin: PIN });
  initToken({ module: SOFTHSM_MODULE, label: OTHER, soPin: SO_PIN, userPin: PIN });
  store = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: TOKEN, pin: PIN, sessionPoolSize: 4, logger });
});

afterAll(async () => {
  await store?.close();
  expect(moduleRefCount(SOFTHSM_MODULE)).toBe(0);
  hsm?.cleanup();
});

describe("Pkcs11KeyStore on SoftHSM2", () => {
  const data = Buffer.from("edgetrust signs this message");

  it.each(KEY_ALGORITHMS.map((a) => [a]))("generates %s and signs verifiably with the default scheme", async (alg: KeyAlgorithm) => {
    const info = await store.generateKey(`k-${alg}`, alg);
    expect(info).toMatchObject({ label: `k-${alg}`, algorithm: alg, extractable: false, sensitive: true });
    expect(info.id).toMatch(/^[0-9a-f]{32}$/);
    expect(info.uri).toContain(`token=${TOKEN}`);
    expect(info.uri).not.toContain("pin");
    const pub = await store.getPublicKey({ label: info.label });
    expect(pub.algorithm).toBe(alg);
    expect(pub.jwk.kty).toBe(alg.startsWith("EC") ? "EC" : "RSA");
    const scheme = defaultScheme(alg);
    const sig = await store.sign({ label: info.label }, scheme, data);
    if (alg === "EC-P256") expect(sig.length).toBe(64);
    if (alg === "EC-P384") expect(sig.length).toBe(96);
    expect(verifySig(pub.spki, scheme, data, sig)).toBe(true);
    expect(verifySig(pub.spki, scheme, Buffer.from("something else"), sig)).toBe(false);
  });

  it("signs with every hash for ECDSA, RSA PKCS#1 v1.5 and RSA-PSS", async () => {
    const ec = await store.getPublicKey({ label: "k-EC-P256" });
    const rsa = await store.getPublicKey({ label: "k-RSA-2048" });
    const schemes: [string, Buffer, SignatureScheme][] = [];
    for (const hash of ["SHA-256", "SHA-384", "SHA-512"] as const) {
      schemes.push(["k-EC-P256", ec.spki, { name: "ECDSA", hash }]);
      schemes.push(["k-RSA-2048", rsa.spki, { name: "RSASSA-PKCS1-v1_5", hash }]);
      schemes.push(["k-RSA-2048", rsa.spki, { name: "RSA-PSS", hash, saltLength: 32 }]);
    }
    for (const [label, spki, scheme] of schemes) {
      const sig = await store.sign({ label }, scheme, data);
      expect(verifySig(spki, scheme, data, sig), `${label} ${JSON.stringify(scheme)}`).toBe(true);
    }
  });

  it("uses the token's combined ECDSA mechanism only when it has one (SoftHSM 2.6.1 has only CKM_ECDSA)", () => {
    expect(store.hasMechanism(pkcs11js.CKM_ECDSA)).toBe(true);
    // Debian 12's SoftHSM lacks CKM_ECDSA_SHA256: signing above went through CKM_ECDSA over a Node digest.
    expect(typeof store.hasMechanism(pkcs11js.CKM_ECDSA_SHA256)).toBe("boolean");
  });

  it("keeps private keys sensitive and non-extractable on the token", async () => {
    for (const alg of KEY_ALGORITHMS) {
      const info = await store.getKey({ label: `k-${alg}` });
      expect(info.extractable).toBe(false);
      expect(info.sensitive).toBe(true);
      const handle = await store.privateKeyHandle({ label: `k-${alg}` });
      await store.withSession((p11, s) => {
        const attrs = p11.C_GetAttributeValue(s, handle, [
          { type: pkcs11js.CKA_TOKEN }, { type: pkcs11js.CKA_PRIVATE }, { type: pkcs11js.CKA_ALWAYS_SENSITIVE }, { type: pkcs11js.CKA_NEVER_EXTRACTABLE },
        ]);
        for (const a of attrs) expect((a.value as Buffer)[0], `attribute ${a.type}`).toBe(1);
        const secretAttr = alg.startsWith("EC") ? pkcs11js.CKA_VALUE : pkcs11js.CKA_PRIVATE_EXPONENT;
        expect(() => p11.C_GetAttributeValue(s, handle, [{ type: secretAttr }])).toThrow(/CKR_ATTRIBUTE_SENSITIVE/);
      });
    }
  });

  it("generates signing keys that can only sign: no decrypt, unwrap or derive (EC and RSA), no encrypt or wrap", async () => {
    for (const alg of KEY_ALGORITHMS) {
      const label = `k-${alg}`;
      const handle = await store.privateKeyHandle({ label });
      await store.withSession((p11, s) => {
        const attrs = p11.C_GetAttributeValue(s, handle, [
          { type: pkcs11js.CKA_SIGN }, { type: pkcs11js.CKA_DECRYPT }, { type: pkcs11js.CKA_UNWRAP }, { type: pkcs11js.CKA_DERIVE },
        ]);
        expect(attrs.map((a) => (a.value as Buffer)[0]), `${alg} private key CKA_SIGN, DECRYPT, UNWRAP, DERIVE`).toEqual([1, 0, 0, 0]);
        p11.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY }, { type: pkcs11js.CKA_LABEL, value: label }]);
        const found = p11.C_FindObjects(s, 2);
        p11.C_FindObjectsFinal(s);
        expect(found).toHaveLength(1);
        const pubAttrs = p11.C_GetAttributeValue(s, found[0] as Buffer, [{ type: pkcs11js.CKA_VERIFY }, { type: pkcs11js.CKA_ENCRYPT }, { type: pkcs11js.CKA_WRAP }]);
        expect(pubAttrs.map((a) => (a.value as Buffer)[0]), `${alg} public key CKA_VERIFY, ENCRYPT, WRAP`).toEqual([1, 0, 0]);
        // The token itself refuses a decryption with the private key.
        if (alg.startsWith("RSA")) expect(() => p11.C_DecryptInit(s, { mechanism: pkcs11js.CKM_RSA_PKCS }, handle)).toThrow(/CKR_KEY_FUNCTION_NOT_PERMITTED/);
      });
    }
  });

  it("serves 100 concurrent signers correctly through the session pool", async () => {
    const pub = await store.getPublicKey({ label: "k-EC-P256" });
    const scheme = defaultScheme("EC-P256");
    const msgs = Array.from({ length: 100 }, (_, i) => Buffer.from(`message ${i}`));
    const sigs = await Promise.all(msgs.map((m) => store.sign({ label: "k-EC-P256" }, scheme, m)));
    sigs.forEach((sig, i) => expect(verifySig(pub.spki, scheme, msgs[i] as Buffer, sig)).toBe(true));
    // a signature never verifies for another caller's message
    expect(verifySig(pub.spki, scheme, msgs[1] as Buffer, sigs[0] as Buffer)).toBe(false);
  });

  it("signs share the token (one per session at once); generating and erasing a key waits for them and has it alone", async () => {
    // Every session of the pool inside a sign-side operation at once: if signs were serialised behind one another
    // the fourth would never enter and this would hang (vitest's timeout fails it).
    let inside = 0;
    const gates = Array.from({ length: store.sessionCount }, () => {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => (resolve = r));
      return { promise, resolve };
    });
    let allIn!: () => void;
    const allInside = new Promise<void>((r) => (allIn = r));
    const holders = gates.map((g) => store.withSession(async () => {
      if (++inside === store.sessionCount) allIn();
      await g.promise;
      inside--;
    }));
    await allInside;
    // One leaves, so a session is free: a key generation asked for now is held back by the lock alone, until the
    // last sign-side operation has left.
    gates[0]?.resolve();
    await holders[0];
    let generated = false;
    const gen = store.generateKey("k-rw-wait", "EC-P256").then((k) => {
      generated = true;
      return k;
    });
    // Held until the generation is done or has had ample time (without the lock it finishes in milliseconds).
    await Promise.race([gen, new Promise((r) => setTimeout(r, 2000))]);
    expect(generated, "the key was generated while signs held the token").toBe(false);
    expect(inside).toBe(store.sessionCount - 1);
    for (const g of gates) g.resolve();
    await Promise.all(holders);
    await gen;
    expect(generated).toBe(true);
    await store.delete({ label: "k-rw-wait" });
  });

  it("400 concurrent signs with 6 keys generated, used and erased among them: every signature verifies, every key is gone", async () => {
    const pub = await store.getPublicKey({ label: "k-EC-P256" });
    const scheme = defaultScheme("EC-P256");
    const msgs = Array.from({ length: 400 }, (_, i) => Buffer.from(`concurrent message ${i}`));
    const signs = msgs.map((m) => store.sign({ label: "k-EC-P256" }, scheme, m));
    // Generations and erasures queued among the signs (writers), each new key used at once by more signs.
    const rotations = Array.from({ length: 6 }, async (_, i) => {
      const label = `k-churn-${i}`;
      const info = await store.generateKey(label, i % 2 ? "EC-P384" : "EC-P256");
      const churnPub = await store.getPublicKey({ label });
      const churnScheme = defaultScheme(info.algorithm);
      const data = Buffer.from(`signed by ${label}`);
      const sigs = await Promise.all(Array.from({ length: 10 }, () => store.sign({ label }, churnScheme, data)));
      for (const sig of sigs) expect(verifySig(churnPub.spki, churnScheme, data, sig)).toBe(true);
      await store.delete({ label });
      return label;
    });
    const more = msgs.map((m) => store.sign({ label: "k-EC-P256" }, scheme, m));
    const [sigs, rotated, sigs2] = await Promise.all([Promise.all(signs), Promise.all(rotations), Promise.all(more)]);
    sigs.forEach((sig, i) => expect(verifySig(pub.spki, scheme, msgs[i] as Buffer, sig)).toBe(true));
    sigs2.forEach((sig, i) => expect(verifySig(pub.spki, scheme, msgs[i] as Buffer, sig)).toBe(true));
    expect(rotated).toHaveLength(6);
    const left = (await store.list()).map((k) => k.label);
    for (const l of rotated) expect(left).not.toContain(l);
  });

  it("names keys by label, id and pkcs11: URI; lists and deletes them", async () => {
    const info = await store.generateKey("named key;with=odd/chars", "EC-P256", { id: "a1b2c3" });
    expect(info.id).toBe("a1b2c3");
    expect(info.uri).toContain("id=%A1%B2%C3");
    expect(await store.getKey({ id: "A1B2C3" })).toMatchObject({ label: "named key;with=odd/chars" });
    const byUri = parseKeyRef(info.uri);
    expect(byUri).toEqual({ label: "named key;with=odd/chars", id: "a1b2c3", token: TOKEN });
    expect((await store.getKey(byUri)).id).toBe("a1b2c3");
    expect((await store.list()).map((k) => k.label)).toEqual(expect.arrayContaining(["named key;with=odd/chars", "k-EC-P256", "k-RSA-3072"]));
    await expectCode(store.generateKey("named key;with=odd/chars", "EC-P256"), "HSM_KEY_EXISTS");
    await store.delete({ id: "a1b2c3" });
    await expectCode(store.getKey({ id: "a1b2c3" }), "HSM_KEY_NOT_FOUND");
    expect((await store.list()).some((k) => k.id === "a1b2c3")).toBe(false);
  });

  it("pkcs11-tool (OpenSC) sees the key generated through hsm/", async () => {
    const info = await store.getKey({ label: "k-EC-P256" });
    const out = execFileSync("pkcs11-tool", ["--module", SOFTHSM_MODULE, "--token-label", TOKEN, "--login", "--pin", PIN, "--list-objects", "--type", "privkey"], {
      env: { ...process.env },
      encoding: "utf8",
    });
    expect(out).toContain("label:      k-EC-P256");
    expect(out).toContain(`ID:         ${info.id}`);
    expect(out).toMatch(/Access:\s+sensitive, always sensitive, never extractable/);
  });

  it("opens through openKeyStore with the PIN from a file or an environment variable", async () => {
    const pinFile = join(hsm.dir, "pin");
    writeFileSync(pinFile, `${PIN}\n`, { mode: 0o600 });
    const cfg = Value.Default(HsmConfig, {}) as HsmConfig;
    const viaFile = await openKeyStore({ ...cfg, module: SOFTHSM_MODULE, tokenLabel: TOKEN, pinFile, sessionPoolSize: 2 }, { logger });
    expect((await viaFile.getKey({ label: "k-EC-P256" })).algorithm).toBe("EC-P256");
    await viaFile.close();
    const viaEnv = await openKeyStore({ ...cfg, module: SOFTHSM_MODULE, tokenLabel: TOKEN, pinEnv: "ET_TEST_PIN" }, { logger, env: { ET_TEST_PIN: PIN } });
    expect((await viaEnv.list()).length).toBeGreaterThan(0);
    await viaEnv.close();
    await expectCode(() => readPin({ pinFile: join(hsm.dir, "nope") }), "HSM_PIN_MISSING");
    await expectCode(() => readPin({ pinEnv: "ET_TEST_NO_SUCH_VAR", env: {} }), "HSM_PIN_MISSING");
    await expectCode(openKeyStore({ ...cfg, module: SOFTHSM_MODULE, tokenLabel: TOKEN, pinEnv: "ET_TEST_NO_SUCH_VAR" }, { env: {} }), "HSM_PIN_MISSING");
  });
});

describe("errors are clear codes and the process survives", () => {
  const open = (o: Partial<Parameters<typeof Pkcs11KeyStore.open>[0]>) =>
    Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: TOKEN, pin: PIN, logger, ...o });

  it("wrong PIN", async () => {
    const e = await expectCode(open({ tokenLabel: OTHER, pin: "0000-wrong" }), "HSM_PIN_INCORRECT");
    expect(e.message).toContain("CKR_PIN_INCORRECT");
    expect(e.message).not.toContain("0000-wrong");
    // the token stays usable with the right PIN
    const ok = await open({ tokenLabel: OTHER });
    await ok.close();
  });

  it("a second store on an open token with a different PIN", async () => {
    await expectCode(open({ pin: "0000-wrong" }), "HSM_PIN_INCORRECT");
  });

  it("missing or unloadable module", async () => {
    await expectCode(open({ module: "/nonexistent/libnothing.so" }), "HSM_MODULE_NOT_FOUND");
    await expectCode(open({ module: "" }), "HSM_MODULE_NOT_FOUND");
    await expectCode(open({ module: "/etc/hostname" }), "HSM_MODULE_LOAD_FAILED");
  });

  it("unknown token label lists the labels that exist", async () => {
    const e = await expectCode(open({ tokenLabel: "no-such-token" }), "HSM_TOKEN_NOT_FOUND");
    expect(e.message).toContain(`"${TOKEN}"`);
    expect(e.message).toContain(`"${OTHER}"`);
  });

  it("unknown key label and id", async () => {
    await expectCode(store.sign({ label: "no-such-key" }, defaultScheme("EC-P256"), Buffer.from("x")), "HSM_KEY_NOT_FOUND");
    await expectCode(store.getPublicKey({ id: "deadbeef" }), "HSM_KEY_NOT_FOUND");
    await expectCode(store.getKey({}), "INVALID_INPUT");
  });

  it("unsupported mechanisms and schemes", async () => {
    const data = Buffer.from("x");
    await expectCode(store.sign({ label: "k-EC-P256" }, { name: "RSA-PSS", hash: "SHA-256", saltLength: 32 }, data), "HSM_MECHANISM_UNSUPPORTED");
    await expectCode(store.sign({ label: "k-RSA-2048" }, { name: "ECDSA", hash: "SHA-256" }, data), "HSM_MECHANISM_UNSUPPORTED");
    await expectCode(store.sign({ label: "k-EC-P256" }, { name: "EdDSA", hash: "SHA-256" } as unknown as SignatureScheme, data), "HSM_MECHANISM_UNSUPPORTED");
    await expectCode(store.sign({ label: "k-EC-P256" }, { name: "ECDSA", hash: "SHA-1" } as unknown as SignatureScheme, data), "HSM_MECHANISM_UNSUPPORTED");
    await expectCode(store.generateKey("ed", "Ed25519" as KeyAlgorithm), "HSM_MECHANISM_UNSUPPORTED");
  });

  it("still signs after all of that, and the PIN never reached a message or a log line", async () => {
    const pub = await store.getPublicKey({ label: "k-EC-P384" });
    const sig = await store.sign({ label: "k-EC-P384" }, defaultScheme("EC-P384"), Buffer.from("alive"));
    expect(verifySig(pub.spki, defaultScheme("EC-P384"), Buffer.from("alive"), sig)).toBe(true);
    expect(errorMessages.length).toBeGreaterThan(10);
    expect(logLines.length).toBeGreaterThan(0);
    for (const text of [...errorMessages, ...logLines]) {
      expect(text).not.toContain(PIN);
      expect(text).not.toContain(SO_PIN);
      expect(text).not.toContain("0000-wrong");
    }
  });
});
