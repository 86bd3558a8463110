import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pkcs11js from "pkcs11js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger, isEdgeTrustError } from "../common/index.js";
import { Pkcs11KeyStore } from "./pkcs11.js";
import { SoftwareKeyStore } from "./software.js";
import { SOFTHSM_MODULE, createSoftHsmDir, initToken, type SoftHsmDir } from "./token-setup.js";

const P = pkcs11js;
const PIN = "pin-mac-5521-secret";
let hsm: SoftHsmDir;
let store: Pkcs11KeyStore;
const log = createLogger("hsm", { level: "silent" });

beforeAll(async () => {
  hsm = createSoftHsmDir();
  initToken({ module: SOFTHSM_MODULE, label: "et-mac", soPin: "so-pin-mac", userPin: PIN });
  store = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: "et-mac", pin: PIN, logger: log });
});

afterAll(async () => {
  await store?.close();
  hsm?.cleanup();
});

describe("HMAC-SHA256 keys in SoftHSM2 (SAS signing keys)", () => {
  it("generates a key in the token that signs, and signs deterministically and per key", async () => {
    await store.mac.generateMacKey("sas.m1.g1");
    await store.mac.generateMacKey("sas.m2.g1");
    const data = Buffer.from("hub.example/devices/d1/modules/m1\n1700000000");
    const a = await store.mac.macSign("sas.m1.g1", data);
    expect(a.length).toBe(32);
    expect((await store.mac.macSign("sas.m1.g1", data)).equals(a)).toBe(true);
    expect((await store.mac.macSign("sas.m2.g1", data)).equals(a)).toBe(false);
    expect(await store.mac.listMacKeys()).toEqual(["sas.m1.g1", "sas.m2.g1"]);
  });

  it("the key is sensitive, never extractable, sign-only: its value cannot be read and it cannot verify, encrypt, wrap or derive", async () => {
    await store.withSession((p11, s) => {
      p11.C_FindObjectsInit(s, [{ type: P.CKA_CLASS, value: P.CKO_SECRET_KEY }, { type: P.CKA_LABEL, value: "sas.m1.g1" }]);
      const [h] = p11.C_FindObjects(s, 2);
      p11.C_FindObjectsFinal(s);
      expect(h).toBeDefined();
      const attrs = p11.C_GetAttributeValue(s, h as Buffer, [
        { type: P.CKA_SENSITIVE }, { type: P.CKA_EXTRACTABLE }, { type: P.CKA_SIGN }, { type: P.CKA_VERIFY },
        { type: P.CKA_ENCRYPT }, { type: P.CKA_DECRYPT }, { type: P.CKA_WRAP }, { type: P.CKA_DERIVE }, { type: P.CKA_KEY_TYPE },
      ]);
      const flag = (i: number) => (attrs[i]?.value as Buffer)[0] === 1;
      expect([flag(0), flag(1), flag(2), flag(3), flag(4), flag(5), flag(6), flag(7)]).toEqual([true, false, true, false, false, false, false, false]);
      expect((attrs[8]?.value as Buffer).readUInt32LE(0)).toBe(P.CKK_GENERIC_SECRET);
      // The token refuses to reveal the value of a sensitive key.
      let refused: unknown;
      try {
        p11.C_GetAttributeValue(s, h as Buffer, [{ type: P.CKA_VALUE }]);
      } catch (e) {
        refused = e;
      }
      expect(String((refused as Error | undefined)?.message)).toMatch(/CKR_ATTRIBUTE_SENSITIVE/);
      // And will not verify with it either: checking a token means signing again.
      let noVerify: unknown;
      try {
        p11.C_VerifyInit(s, { mechanism: P.CKM_SHA256_HMAC }, h as Buffer);
        p11.C_Verify(s, Buffer.from("x"), Buffer.alloc(32));
      } catch (e) {
        noVerify = e;
      }
      expect(String((noVerify as Error | undefined)?.message)).toMatch(/CKR_KEY_FUNCTION_NOT_PERMITTED|CKR_KEY_TYPE_INCONSISTENT/);
    });
  });

  it("a duplicate label is refused; a deleted key signs no more", async () => {
    await expect(store.mac.generateMacKey("sas.m1.g1")).rejects.toMatchObject({ code: "HSM_KEY_EXISTS" });
    expect(await store.mac.deleteMacKey("sas.m2.g1")).toBe(true);
    expect(await store.mac.deleteMacKey("sas.m2.g1")).toBe(false);
    const e = await store.mac.macSign("sas.m2.g1", Buffer.from("x")).catch((x: unknown) => x);
    expect(isEdgeTrustError(e, "HSM_KEY_NOT_FOUND")).toBe(true);
  });
});

describe("HMAC keys in the development software store", () => {
  const dir = mkdtempSync(join(tmpdir(), "et-mac-sw-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("seals the secret under the passphrase: another process with the passphrase signs the same, the file shows no key", async () => {
    const a = await SoftwareKeyStore.open({ dir, passphrase: "dev-pass", logger: log });
    await a.mac.generateMacKey("sas.m1.g1");
    const data = Buffer.from("payload");
    const sig = await a.mac.macSign("sas.m1.g1", data);
    const b = await SoftwareKeyStore.open({ dir, passphrase: "dev-pass", logger: log });
    expect((await b.mac.macSign("sas.m1.g1", data)).equals(sig)).toBe(true);
    const wrong = await SoftwareKeyStore.open({ dir, passphrase: "other", logger: log });
    await expect(wrong.mac.macSign("sas.m1.g1", data)).rejects.toMatchObject({ code: "KEYSTORE_SOFTWARE_PASSPHRASE" });
    const file = readFileSync(join(dir, readdirSync(dir).find((f) => f.endsWith(".mac.json")) ?? ""), "utf8");
    expect(Object.keys(JSON.parse(file) as object).sort()).toEqual(["iv", "label", "salt", "sealed", "tag"]);
  });
});
