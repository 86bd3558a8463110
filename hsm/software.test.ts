import { createPublicKey, verify } from "node:crypto";
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../common/index.js";
import { SoftwareKeyStore } from "./software.js";
import type { KeyAlgorithm } from "./types.js";

let dir: string;
beforeAll(() => { dir = mkdtempSync(join(tmpdir(), "edgetrust-sw-")); });
afterAll(() => { rmSync(dir, { recursive: true, force: true }); });

describe("SoftwareKeyStore", () => {
  it("warns loudly that it is for development only", async () => {
    const out = new PassThrough();
    let logged = "";
    out.on("data", (c: Buffer) => { logged += c.toString(); });
    const s = await SoftwareKeyStore.open({ dir: join(dir, "warn"), passphrase: "p", logger: createLogger("hsm", { destination: out }) });
    await s.close();
    expect(logged).toContain("\"level\":\"warn\"");
    expect(logged).toContain("software key store: development only");
    expect(logged).not.toContain("\"p\"");
  });

  it.each<[KeyAlgorithm, number | undefined]>([["EC-P256", 64], ["EC-P384", 96], ["RSA-2048", 256], ["RSA-3072", 384]])(
    "%s: generates, signs (P1363 for ECDSA) and verifies with Node", async (alg, sigLen) => {
      const s = await SoftwareKeyStore.open({ dir: join(dir, "algs"), passphrase: "pass" });
      const label = `k-${alg}`;
      const info = await s.generateKey(label, alg);
      expect(info).toMatchObject({ label, algorithm: alg, extractable: false, sensitive: true });
      const pub = await s.getPublicKey({ id: info.id });
      const data = Buffer.from("hello edgetrust");
      const ec = alg.startsWith("EC-");
      const scheme = ec ? { name: "ECDSA" as const, hash: alg === "EC-P384" ? "SHA-384" as const : "SHA-256" as const }
        : { name: "RSASSA-PKCS1-v1_5" as const, hash: "SHA-256" as const };
      const sig = await s.sign({ label }, scheme, data);
      expect(sig.length).toBe(sigLen);
      const key = createPublicKey({ key: pub.spki, format: "der", type: "spki" });
      expect(verify(scheme.hash.replace("-", ""), data, ec ? { key, dsaEncoding: "ieee-p1363" } : key, sig)).toBe(true);
      if (!ec) {
        const pss = await s.sign({ label }, { name: "RSA-PSS", hash: "SHA-256", saltLength: 32 }, data);
        expect(verify("sha256", data, { key, padding: 6, saltLength: 32 }, pss)).toBe(true);
      }
      await s.close();
    });

  it("stores encrypted PKCS#8 with a JSON sidecar, files 0600, and lists/deletes", async () => {
    const d = join(dir, "files");
    const s = await SoftwareKeyStore.open({ dir: d, passphrase: "pass" });
    const info = await s.generateKey("device", "EC-P256", { id: "0a0b" });
    const pem = readFileSync(join(d, "device.key.pem"), "utf8");
    expect(pem).toContain("BEGIN ENCRYPTED PRIVATE KEY");
    expect(statSync(join(d, "device.key.pem")).mode & 0o777).toBe(0o600);
    expect(JSON.parse(readFileSync(join(d, "device.key.json"), "utf8"))).toMatchObject({ label: "device", id: "0a0b", algorithm: "EC-P256" });
    expect(info.id).toBe("0a0b");
    await expect(s.generateKey("device", "EC-P256")).rejects.toMatchObject({ code: "HSM_KEY_EXISTS" });
    await expect(s.generateKey("other", "EC-P256", { id: "0a0b" })).rejects.toMatchObject({ code: "HSM_KEY_EXISTS" });
    await expect(s.generateKey("../escape", "EC-P256")).rejects.toMatchObject({ code: "INVALID_INPUT" });
    expect((await s.list()).map((k) => k.label)).toEqual(["device"]);
    await s.delete({ label: "device" });
    expect(readdirSync(d)).toEqual([]);
    await s.close();
  });

  it("wrong passphrase → KEYSTORE_SOFTWARE_PASSPHRASE; unknown key → HSM_KEY_NOT_FOUND; missing passphrase refused", async () => {
    const d = join(dir, "pp");
    const s = await SoftwareKeyStore.open({ dir: d, passphrase: "right" });
    await s.generateKey("k", "EC-P256");
    await expect(s.getKey({ label: "nope" })).rejects.toMatchObject({ code: "HSM_KEY_NOT_FOUND" });
    await expect(s.sign({ id: "ffff" }, { name: "ECDSA", hash: "SHA-256" }, new Uint8Array(1))).rejects.toMatchObject({ code: "HSM_KEY_NOT_FOUND" });
    await expect(s.sign({ label: "k" }, { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }, new Uint8Array(1))).rejects.toMatchObject({ code: "HSM_MECHANISM_UNSUPPORTED" });
    await s.close();
    await expect(SoftwareKeyStore.open({ dir: d, passphrase: "wrong" })).rejects.toMatchObject({ code: "KEYSTORE_SOFTWARE_PASSPHRASE" });
    await expect(SoftwareKeyStore.open({ dir: d, passphraseEnv: "EDGETRUST_TEST_UNSET_PASSPHRASE" })).rejects.toMatchObject({ code: "KEYSTORE_SOFTWARE_PASSPHRASE" });
    process.env.EDGETRUST_TEST_PASSPHRASE = "right";
    const again = await SoftwareKeyStore.open({ dir: d, passphraseEnv: "EDGETRUST_TEST_PASSPHRASE" });
    expect((await again.getKey({ label: "k" })).algorithm).toBe("EC-P256");
    await again.close();
  });
});
