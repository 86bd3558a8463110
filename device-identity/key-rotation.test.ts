import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { Value } from "@sinclair/typebox/value";
import pkcs11js from "pkcs11js";
import { stringify } from "yaml";
import { HsmConfig, SOFTHSM_MODULE, type Pkcs11KeyStore } from "../hsm/index.js";
import { ManagementClient } from "../identity-api/index.js";
import { DOCKER_SOCKET } from "../test/fixtures/images.js";
import { DeviceConfig } from "./config.js";
import { identityFromConfig } from "./daemon.js";
import { makeTokens, runDaemon, silentLogger, startCa, tmp, TRUST_DOMAIN, type Daemon, type RunningCa, type Tokens } from "./test-helpers.js";

const DEVICE = "dev-key-rotation";

interface KeyFault { step: "generated" | "delete:half-destroyed"; label: string; ckr: string; times: number }

/**
 * Key rotation when the token fails part-way (fault points of common/faults.ts, installed in the daemon child from
 * EDGETRUST_FAULT_KEY_STEPS): SoftHSM failing a generation after it made objects, the token going away after the new
 * key exists, an old key's erasure cut between its two halves. Every case used to leave an object under the next
 * label that no retry could get past.
 */
describe("key rotation across token failures (daemon child, SoftHSM, real ca-service)", () => {
  let tokens: Tokens;
  let ca: RunningCa;
  let keys: Pkcs11KeyStore;
  let dir: string;
  let cfg: DeviceConfig;
  let configFile: string;
  const hsm: HsmConfig = { ...(Value.Default(HsmConfig, {}) as HsmConfig), module: SOFTHSM_MODULE, tokenLabel: "device", engine: "pkcs11" };

  const daemon = async (faults: KeyFault[]): Promise<Daemon> => {
    const d = runDaemon(configFile, { OPENSSL_CONF: tokens.opensslConf, SOFTHSM2_CONF: tokens.hsm.conf, EDGETRUST_FAULT_KEY_STEPS: JSON.stringify(faults) });
    await d.waitLog((l) => l.msg === "device identity daemon running", "daemon running");
    return d;
  };
  const stop = async (d: Daemon): Promise<void> => {
    d.proc.kill("SIGTERM");
    expect((await d.exit).code, d.stderr().slice(-2000)).toBe(0);
  };
  /** Every object on the token under `label`, any class, as "class:id" (what C_GenerateKeyPair's label check sees). */
  const objectsUnder = (label: string): Promise<string[]> => keys.withSession((p11, s) => {
    p11.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_LABEL, value: label }]);
    const found: Buffer[] = [];
    for (let h = p11.C_FindObjects(s); h; h = p11.C_FindObjects(s)) found.push(h);
    p11.C_FindObjectsFinal(s);
    return found.map((h) => {
      const [cls, id] = p11.C_GetAttributeValue(s, h, [{ type: pkcs11js.CKA_CLASS }, { type: pkcs11js.CKA_ID }]);
      const c = (cls?.value as Buffer).readUInt32LE(0) === pkcs11js.CKO_PRIVATE_KEY ? "private" : "public";
      return `${c}:${(id?.value as Buffer).toString("hex")}`;
    }).sort();
  });
  /** The id of the one private key under `label`, looked up afresh (the daemon child changes the token). */
  const idOf = async (label: string): Promise<string | undefined> => (await objectsUnder(label)).find((o) => o.startsWith("private:"))?.slice("private:".length);
  const spkiOf = async (label: string): Promise<string> => Buffer.from((await keys.getPublicKey({ label, id: await idOf(label) })).spki).toString("hex");
  const state = () => identityFromConfig(cfg, hsm, { keys, log: silentLogger() }).load();
  const certSpki = (pem: string): string => Buffer.from(new x509.X509Certificate(pem).publicKey.rawData).toString("hex");
  const pending = (): Record<string, string[]> => {
    const f = join(cfg.stateDir, "keys.pending.json");
    return existsSync(f) ? JSON.parse(readFileSync(f, "utf8")) as Record<string, string[]> : {};
  };

  beforeAll(async () => {
    tokens = await makeTokens();
    ca = await startCa(tokens, { deviceId: DEVICE });
    keys = await tokens.openDevice() as Pkcs11KeyStore;
    dir = tmp("et-rotation-");
    cfg = {
      ...(Value.Default(DeviceConfig, {}) as DeviceConfig),
      deviceId: DEVICE, trustDomain: TRUST_DOMAIN, stateDir: join(dir, "identity"), caUrl: ca.url,
      managementSocket: join(dir, "mgmt.sock"), workloadDir: join(dir, "modules"), hubServerCertFile: join(dir, "hub", "server.chain.pem"),
      dockerSocket: DOCKER_SOCKET, rotateKeys: true,
    };
    writeFileSync(join(dir, "ca-trust.pem"), ca.trustPem);
    await identityFromConfig({ ...cfg, caTrustFile: join(dir, "ca-trust.pem") }, hsm, { keys, log: silentLogger() }).provision(ca.adminToken);
    configFile = join(dir, "edgetrust.yaml");
    writeFileSync(configFile, stringify({ log: { level: "info" }, hsm: { ...hsm, pinFile: tokens.pinFile }, device: cfg }));
  });

  afterAll(async () => {
    await keys?.close();
    await ca?.close();
    await tokens?.caKeys.close();
    tokens?.hsm.cleanup();
  });

  it("SoftHSM fails the Edge CA key generation after making objects (CKR_FUNCTION_FAILED): the rotation erases them by id, tries again (logged) and renews", async () => {
    // Then, on the second try, it answers as if the object it made were gone (HSM_KEY_NOT_FOUND); the third succeeds.
    const d = await daemon([
      { step: "generated", label: "edge-ca.1", ckr: "CKR_FUNCTION_FAILED", times: 1 },
      { step: "generated", label: "edge-ca.1", ckr: "CKR_OBJECT_HANDLE_INVALID", times: 1 },
    ]);
    try {
      await new ManagementClient(cfg.managementSocket).renew("edge-ca", true);
      const retries = d.logs.filter((l) => l.msg === "the token failed to generate the key; erasing what it left and trying again");
      expect(retries).toMatchObject([{ label: "edge-ca.1", attempt: 1, ckr: "CKR_FUNCTION_FAILED" }, { label: "edge-ca.1", attempt: 2, ckr: "CKR_OBJECT_HANDLE_INVALID" }]);
    } finally {
      await stop(d);
    }
    const st = await state();
    expect(st.keys.edgeCa).toBe("edge-ca.1");
    // One key pair under the new label (the failed attempt's objects are gone), and it is the certificate's key.
    const objs = await objectsUnder("edge-ca.1");
    const id = await idOf("edge-ca.1");
    expect(objs).toEqual([`private:${id}`, `public:${id}`]);
    expect(certSpki(st.edgeCa.cert)).toBe(await spkiOf("edge-ca.1"));
    expect(await objectsUnder("edge-ca")).toEqual([]);
    expect(pending()).toEqual({});
  });

  it("the token goes away after the new device key exists: the retry erases that key by its recorded id and renews with a new one; the old key's erasure cut between its halves is finished by the next rotation back to its label", async () => {
    const d = await daemon([
      { step: "generated", label: "device-identity.1", ckr: "CKR_DEVICE_REMOVED", times: 1 },
      { step: "delete:half-destroyed", label: "device-identity", ckr: "CKR_DEVICE_REMOVED", times: 1 },
    ]);
    const client = new ManagementClient(cfg.managementSocket);
    const oldId = await idOf("device-identity");
    try {
      await expect(client.renew("device", true)).rejects.toThrow(/CKR_DEVICE_REMOVED/);
      // The new key exists and is recorded as this rotation's own before anything else happens.
      const made = await idOf("device-identity.1");
      expect(pending()["device-identity.1"]).toEqual([made]);
      expect((await state()).keys.device).toBe("device-identity");

      await client.renew("device", true);
      expect(d.logs.some((l) => l.msg === "erased what an interrupted provisioning or renewal left of its new key" && l.id === made)).toBe(true);
      const st = await state();
      expect(st.keys.device).toBe("device-identity.1");
      const renewedWith = await idOf("device-identity.1");
      expect(renewedWith).not.toBe(made);
      expect(await objectsUnder("device-identity.1")).toEqual([`private:${renewedWith}`, `public:${renewedWith}`]);
      expect(certSpki(st.device.cert)).toBe(await spkiOf("device-identity.1"));
      // The old key's erasure was cut short half-way: what is left of it is recorded as this daemon's own.
      expect(d.logs.some((l) => l.msg === "could not erase the old key" && l.label === "device-identity")).toBe(true);
      expect((await objectsUnder("device-identity")).length).toBeGreaterThan(0);
      expect(pending()).toEqual({ "device-identity": [oldId] });

      // The next rotation goes back to that label: the remains are erased as ours, a new key is made and used.
      await client.renew("device", true);
    } finally {
      await stop(d);
    }
    const st = await state();
    expect(st.keys.device).toBe("device-identity");
    const id = await idOf("device-identity");
    expect(id).not.toBe(oldId);
    expect(await objectsUnder("device-identity")).toEqual([`private:${id}`, `public:${id}`]);
    expect(certSpki(st.device.cert)).toBe(await spkiOf("device-identity"));
    expect(await objectsUnder("device-identity.1")).toEqual([]);
    expect(pending()).toEqual({});
  });

  it("an object under the next label that this daemon did not make is never erased: the rotation refuses, naming it, and the current key stays", async () => {
    const stranger = await keys.generateKey("edge-ca", "EC-P256");
    const before = (await keys.list()).map((k) => `${k.label}:${k.id}`).sort();
    const d = await daemon([]);
    try {
      await expect(new ManagementClient(cfg.managementSocket).renew("edge-ca", true)).rejects.toThrow(new RegExp(`key labelled "edge-ca" \\(id ${stranger.id}\\) that this daemon did not make`));
    } finally {
      await stop(d);
    }
    expect(await objectsUnder("edge-ca")).toEqual([`private:${stranger.id}`, `public:${stranger.id}`]);
    expect((await state()).keys.edgeCa).toBe("edge-ca.1");
    // Nothing erased, nothing made (the hub key, which rotates with the Edge CA, neither).
    expect((await keys.list()).map((k) => `${k.label}:${k.id}`).sort()).toEqual(before);
    expect(before.map((k) => k.split(":")[0])).toEqual(expect.arrayContaining(["device-identity", "edge-ca", "edge-ca.1"]));
    await keys.delete({ label: "edge-ca", id: stranger.id });
  });
  it("a public key under the next label whose private half is gone (what an earlier version's cut erasure left, which blocked every retry) is erased and the rotation goes on", async () => {
    const debris = await keys.generateKey("edge-ca", "EC-P256");
    const privateHalf = await keys.privateKeyHandle({ label: "edge-ca", id: debris.id });
    await keys.withSession((p11, s) => p11.C_DestroyObject(s, privateHalf));
    expect(await objectsUnder("edge-ca")).toEqual([`public:${debris.id}`]);
    const d = await daemon([]);
    try {
      await new ManagementClient(cfg.managementSocket).renew("edge-ca", true);
      expect(d.logs.some((l) => l.msg === "erased a public key whose private half is gone (left by an interrupted erasure)" && l.id === debris.id)).toBe(true);
    } finally {
      await stop(d);
    }
    const st = await state();
    expect(st.keys.edgeCa).toBe("edge-ca");
    const id = await idOf("edge-ca");
    expect(await objectsUnder("edge-ca")).toEqual([`private:${id}`, `public:${id}`]);
    expect(certSpki(st.edgeCa.cert)).toBe(await spkiOf("edge-ca"));
  });
});
