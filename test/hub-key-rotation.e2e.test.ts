import { spawn, type ChildProcess } from "node:child_process";
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { webcrypto } from "node:crypto";
import { join } from "node:path";
import type { TLSSocket } from "node:tls";
import * as x509 from "@peculiar/x509";
import { Value } from "@sinclair/typebox/value";
import mqtt, { type MqttClient } from "mqtt";
import pkcs11js from "pkcs11js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { DeviceConfig, identityFromConfig, splitPems } from "../device-identity/index.js";
import { makeTokens, runDaemon, silentLogger, startCa, tmp, TRUST_DOMAIN, type RunningCa, type Tokens } from "../device-identity/test-helpers.js";
import { TEST_POLICY_YAML } from "../edge-hub/fixtures.js";
import { HsmConfig, SOFTHSM_MODULE, type Pkcs11KeyStore } from "../hsm/index.js";
import { ManagementClient } from "../identity-api/index.js";
import { DOCKER_SOCKET } from "./fixtures/images.js";
import { cliBundleArgs } from "./fixtures/cli-bundle.js";

/**
 * Issue 17: the hub server key rotates with `device.rotateKeys` (the default), and the hub follows it.
 *
 * Real parts: ca-service on a SoftHSM token, the device identity on another (renewals in this process through
 * `DeviceIdentity.renew`, the daemon's own renewal code), `edgetrust hub run` as a child with its server key in the
 * token through the OpenSSL pkcs11 engine, a leaf device with a CA-issued certificate connecting over mTLS (CONNACK).
 *
 * The hub reads its server certificate from a copy this test makes when it wants the hub to reload (copy + SIGHUP):
 * in a device the hub reads the daemon's file within its 5 s poll, and the gap between the renewal and that reload is
 * what the kept key is for — here the gap is as long as the test needs, not a race.
 */
const DEVICE = "dev-hub-key";
const HUB = "edge-hub-server";

describe("hub server key rotation (SoftHSM, real hub child, real CA)", () => {
  let tokens: Tokens;
  let ca: RunningCa;
  let keys: Pkcs11KeyStore;
  let dir: string;
  let sd: string;
  let identity: ReturnType<typeof identityFromConfig>;
  let hub: ChildProcess;
  let hubLog = "";
  let hubPort = 0;
  let configFile: string;
  let cfg: DeviceConfig;
  let leaf: { chainPem: string; keyPem: string };
  const clients: MqttClient[] = [];
  const hsm: HsmConfig = { ...(Value.Default(HsmConfig, {}) as HsmConfig), module: SOFTHSM_MODULE, tokenLabel: "device", engine: "pkcs11" };
  const view = (): string => join(dir, "hub-view", "server.chain.pem");

  /** Private-key ids on the token under `label` (looked up afresh: the other process changes the token). */
  const idsUnder = (label: string): Promise<string[]> => keys.withSession((p11, s) => {
    p11.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_LABEL, value: label }, { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }]);
    const found: Buffer[] = [];
    for (let h = p11.C_FindObjects(s); h; h = p11.C_FindObjects(s)) found.push(h);
    p11.C_FindObjectsFinal(s);
    return found.map((h) => (p11.C_GetAttributeValue(s, h, [{ type: pkcs11js.CKA_ID }])[0]?.value as Buffer).toString("hex"));
  });
  const spkiUnder = async (label: string): Promise<string> => Buffer.from((await keys.getPublicKey({ label })).spki).toString("hex");
  const hubCertFile = (): x509.X509Certificate => new x509.X509Certificate(splitPems(readFileSync(join(sd, "hub-server.chain.pem"), "utf8"))[0] ?? "");
  const spkiOf = (c: x509.X509Certificate): string => Buffer.from(c.publicKey.rawData).toString("hex");

  /** A leaf's mTLS connection to the hub, CONNACK received; the hub certificate it was shown. */
  const connectLeaf = async (n: number): Promise<{ fingerprint: string }> => {
    const c = mqtt.connect(`mqtts://127.0.0.1:${hubPort}`, {
      cert: leaf.chainPem, key: leaf.keyPem, ca: readFileSync(join(sd, "ca-bundle.pem"), "utf8"), rejectUnauthorized: true,
      // The chain is verified to the root; which certificate it is, is asserted below by fingerprint.
      ...({ checkServerIdentity: () => undefined } as object),
      reconnectPeriod: 0, protocolVersion: 4, clientId: `leaf1-${n}`, connectTimeout: 20_000,
    });
    clients.push(c);
    await new Promise<void>((resolve, reject) => {
      c.once("connect", () => resolve());
      c.once("error", (e) => reject(new Error(`leaf connection ${n}: ${e.message}\n${hubLog.slice(-3000)}`)));
      c.once("close", () => reject(new Error(`leaf connection ${n} closed before CONNACK\n${hubLog.slice(-3000)}`)));
    });
    const peer = (c.stream as TLSSocket).getPeerX509Certificate();
    c.end(true);
    return { fingerprint: new x509.X509Certificate(peer?.raw ?? Buffer.alloc(0)).toString("hex") };
  };
  const fingerprintOf = (c: x509.X509Certificate): string => c.toString("hex");

  /** What the hub's 5 s file poll does, without the wait: the renewed chain where it reads it, then SIGHUP. */
  const hubReloads = async (): Promise<void> => {
    const mark = hubLog.length;
    copyFileSync(join(sd, "hub-server.chain.pem"), view());
    hub.kill("SIGHUP");
    for (let i = 0; i < 600 && !hubLog.slice(mark).includes("server certificate reloaded"); i++) await new Promise((r) => setTimeout(r, 100));
    expect(hubLog.slice(mark), "the hub reloads its server certificate").toContain("server certificate reloaded");
    expect(hubLog.slice(mark)).not.toContain("server certificate reload failed");
  };

  beforeAll(async () => {
    tokens = await makeTokens();
    ca = await startCa(tokens, { deviceId: DEVICE });
    keys = await tokens.openDevice() as Pkcs11KeyStore;
    dir = tmp("et-hub-key-");
    sd = join(dir, "identity");
    cfg = {
      ...(Value.Default(DeviceConfig, {}) as DeviceConfig),
      deviceId: DEVICE, trustDomain: TRUST_DOMAIN, stateDir: sd, caUrl: ca.url, caTrustFile: join(dir, "ca-trust.pem"),
      managementSocket: join(dir, "mgmt.sock"), workloadDir: join(dir, "modules"), hubServerCertFile: join(dir, "hub", "server.chain.pem"),
      dockerSocket: DOCKER_SOCKET,
    };
    expect(cfg.rotateKeys, "key rotation is on by default").toBe(true);
    writeFileSync(join(dir, "ca-trust.pem"), ca.trustPem);
    identity = identityFromConfig(cfg, hsm, { keys, log: silentLogger() });
    await identity.provision(ca.adminToken);

    await ca.store.upsertEnrollment({ deviceId: "leaf1", kind: "leaf", commonName: "leaf1", dnsNames: [] }, "test");
    const leafKeys = await webcrypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"]);
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: "CN=leaf1", keys: leafKeys, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } });
    const issued = await ca.ca.issue({ csrPem: csr.toString("pem"), profile: "leaf-device", deviceId: "leaf1" }, "test");
    const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey("pkcs8", leafKeys.privateKey)).toString("base64").replace(/(.{64})/g, "$1\n").replace(/\n$/, "");
    leaf = { chainPem: issued.chainPem, keyPem: `-----BEGIN PRIVATE KEY-----\n${pkcs8}\n-----END PRIVATE KEY-----\n` };

    mkdirSync(join(dir, "hub-view"), { recursive: true });
    mkdirSync(join(dir, "hub-state"), { recursive: true });
    copyFileSync(join(sd, "hub-server.chain.pem"), view());
    writeFileSync(join(dir, "policy.yaml"), TEST_POLICY_YAML);
    writeFileSync(join(dir, "attested.json"), "{}");
    configFile = join(dir, "edgetrust.yaml");
    writeFileSync(configFile, stringify({
      log: { level: "info" }, hsm: { ...hsm, pinFile: tokens.pinFile }, device: cfg,
      hub: {
        host: "127.0.0.1", port: 0, trustDomain: TRUST_DOMAIN, metricsPort: 0,
        serverCertFile: view(), serverKey: `hsm:${HUB}`,
        edgeCaFile: join(sd, "edge-ca.cert.pem"), issuingCaFile: join(sd, "issuing-ca.cert.pem"), trustBundleFile: join(sd, "trust-bundle.pem"),
        policyFile: join(dir, "policy.yaml"), attestationFile: join(dir, "attested.json"), stateDir: join(dir, "hub-state"),
      },
    }));
    hub = spawn(process.execPath, [...cliBundleArgs(), "hub", "run", "-c", configFile], {
      env: { ...process.env, OPENSSL_CONF: tokens.opensslConf, SOFTHSM2_CONF: tokens.hsm.conf, PKCS11_MODULE_PATH: "" }, stdio: ["ignore", "pipe", "pipe"],
    });
    hub.stdout?.on("data", (d: Buffer) => { hubLog += d.toString(); });
    hub.stderr?.on("data", (d: Buffer) => { hubLog += d.toString(); });
    for (let i = 0; i < 1200 && !/edge hub listening on 127\.0\.0\.1:\d+/.test(hubLog) && hub.exitCode === null; i++) await new Promise((r) => setTimeout(r, 100));
    const m = /edge hub listening on 127\.0\.0\.1:(\d+)/.exec(hubLog);
    if (!m) throw new Error(`the hub did not start:\n${hubLog.slice(-3000)}`);
    hubPort = Number(m[1]);
  }, 180_000);

  afterAll(async () => {
    for (const c of clients) c.end(true);
    if (hub && hub.exitCode === null && hub.signalCode === null) {
      const exited = new Promise((r) => hub.once("exit", r));
      hub.kill("SIGTERM");
      await exited;
    }
    await keys?.close();
    await ca?.close();
    tokens?.hsm.cleanup();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("renewal with rotation: a new key in the other slot; the old one serves the gap until the hub reloads; after two rotations the first key is gone", async () => {
    // Generation 1: the configured label, its key in the certificate; the hub serves it.
    expect(identity.current().keys.hub).toBe(HUB);
    const certA = hubCertFile();
    const spkiA = spkiOf(certA);
    expect(await spkiUnder(HUB)).toBe(spkiA);
    const [idA] = await idsUnder(HUB);
    expect((await connectLeaf(1)).fingerprint).toBe(fingerprintOf(certA));

    // Rotation 1 (the daemon's renewal, rekey as rotateKeys asks): the new key under `.1`, the old one kept.
    await identity.renew("hub");
    expect(identity.current().keys.hub).toBe(`${HUB}.1`);
    const certB = hubCertFile();
    const spkiB = spkiOf(certB);
    expect(spkiB, "the renewed hub certificate carries a new public key").not.toBe(spkiA);
    expect(await spkiUnder(`${HUB}.1`)).toBe(spkiB);
    expect(await idsUnder(HUB), "the replaced key stays until the next rotation").toEqual([idA]);
    expect(JSON.parse(readFileSync(join(sd, "keys.kept.json"), "utf8"))).toEqual({ [HUB]: [idA] });

    // The gap: the hub has not reloaded; a new connection gets the old certificate, signed by the kept old key.
    expect((await connectLeaf(2)).fingerprint).toBe(fingerprintOf(certA));
    // The hub reloads certificate and key together (it resolves hsm:edge-hub-server by the certificate → `.1`).
    await hubReloads();
    expect((await connectLeaf(3)).fingerprint).toBe(fingerprintOf(certB));

    // Rotation 2: back to the first slot — the first key erased right before the new one is made there.
    await identity.renew("hub");
    expect(identity.current().keys.hub).toBe(HUB);
    const certC = hubCertFile();
    const spkiC = spkiOf(certC);
    expect(new Set([spkiA, spkiB, spkiC]).size).toBe(3);
    const idsC = await idsUnder(HUB);
    expect(idsC).toHaveLength(1);
    expect(idsC, "the first key is gone").not.toContain(idA);
    expect(await spkiUnder(HUB)).toBe(spkiC);
    expect(await spkiUnder(`${HUB}.1`), "the key of rotation 1 serves the gap of rotation 2").toBe(spkiB);
    expect((await connectLeaf(4)).fingerprint).toBe(fingerprintOf(certB));
    await hubReloads();
    expect((await connectLeaf(5)).fingerprint).toBe(fingerprintOf(certC));
  }, 180_000);

  it("the daemon's Edge CA renewal reissues the hub certificate with a rotated key too (the schedule's usual path), and the hub follows", async () => {
    const labels = (): Record<string, string> => (JSON.parse(readFileSync(join(sd, "current", "state.json"), "utf8")) as { keys: Record<string, string> }).keys;
    const before = labels().hub ?? "";
    const certBefore = hubCertFile();
    const [idBefore] = await idsUnder(before);
    const [idOther] = await idsUnder(before === HUB ? `${HUB}.1` : HUB);
    // `device run` as a child (the renewal's mTLS to the CA needs the engine, registered at process start).
    const daemon = runDaemon(configFile, { OPENSSL_CONF: tokens.opensslConf, SOFTHSM2_CONF: tokens.hsm.conf, PKCS11_MODULE_PATH: "" });
    try {
      await daemon.waitLog((l) => l.msg === "device identity daemon running", "daemon running");
      await new ManagementClient(cfg.managementSocket).renew("edge-ca", true);
    } finally {
      daemon.proc.kill("SIGTERM");
      await daemon.exit;
    }
    const after = labels().hub ?? "";
    expect(after).not.toBe(before);
    const cert = hubCertFile();
    expect(spkiOf(cert)).not.toBe(spkiOf(certBefore));
    expect(await spkiUnder(after)).toBe(spkiOf(cert));
    expect(await idsUnder(after), "the slot's key of two rotations ago is gone").not.toContain(idOther);
    expect(await idsUnder(before)).toEqual([idBefore]);
    expect((await connectLeaf(6)).fingerprint).toBe(fingerprintOf(certBefore));
    await hubReloads();
    expect((await connectLeaf(7)).fingerprint).toBe(fingerprintOf(cert));
    expect(JSON.parse(readFileSync(join(sd, "keys.kept.json"), "utf8"))).toEqual({ [before]: [idBefore] });
    // A daemon started on this state finds every key its certificates name.
    await expect(identityFromConfig(cfg, hsm, { keys, log: silentLogger() }).load()).resolves.toBeDefined();
  }, 180_000);
});
