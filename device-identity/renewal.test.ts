import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { Value } from "@sinclair/typebox/value";
import { stringify } from "yaml";
import { HsmConfig, SOFTHSM_MODULE, type KeyStore } from "../hsm/index.js";
import { DeviceConfig } from "./config.js";
import { DeviceDaemon, identityFromConfig } from "./daemon.js";
import { ManagementClient } from "../identity-api/index.js";
import { assessCertificate, backoffMs, clockDisagreement } from "./renewal.js";
import { execFileAsync, makeTokens, runDaemon, silentLogger, startCa, tmp, TRUST_DOMAIN, type RunningCa, type Tokens } from "./test-helpers.js";

const DEVICE = "dev-renew";
const HOUR = 3600;

describe("renewal schedule (pure)", () => {
  const cert = { notBefore: new Date("2026-01-01T00:00:00Z"), notAfter: new Date("2026-01-11T00:00:00Z") }; // 10 days
  it("is due exactly at the policy threshold (% of lifetime), not before", () => {
    expect(assessCertificate(cert, new Date("2026-01-07T23:59:59Z"), 70).status).toBe("valid");
    expect(assessCertificate(cert, new Date("2026-01-08T00:00:00Z"), 70)).toMatchObject({ status: "due", renewAt: new Date("2026-01-08T00:00:00Z") });
    expect(assessCertificate(cert, new Date("2026-01-11T00:00:00Z"), 70).status).toBe("expired");
  });
  it("a clock behind the certificate's notBefore is reported as a clock problem, not acted on", () => {
    const a = assessCertificate(cert, new Date("1970-01-01T00:00:10Z"), 70);
    expect(a.status).toBe("clock-behind");
    expect(a.status === "clock-behind" && a.detail).toMatch(/clock is wrong/);
    // Within the CA's backdating skew it is still believed.
    expect(assessCertificate(cert, new Date("2025-12-31T23:56:00Z"), 70).status).toBe("valid");
  });
  it("backs off exponentially with ±20% jitter, capped", () => {
    expect(backoffMs(1, 1000, 60_000, () => 0.5)).toBe(1000);
    expect(backoffMs(4, 1000, 60_000, () => 0.5)).toBe(8000);
    expect(backoffMs(30, 1000, 60_000, () => 0.5)).toBe(60_000);
    expect(backoffMs(3, 1000, 60_000, () => 0)).toBe(3200);
    expect(backoffMs(3, 1000, 60_000, () => 0.999999)).toBe(4800);
  });
  it("tells a device clock that disagrees with the CA's", () => {
    expect(clockDisagreement(new Date("2036-01-01T00:00:00Z"), new Date("2026-01-01T00:00:00Z"))).toMatch(/ahead of the CA/);
    expect(clockDisagreement(new Date("2026-01-01T00:01:00Z"), new Date("2026-01-01T00:00:00Z"))).toBeUndefined();
  });
});

describe("renewal by the daemon against a real ca-service (device + Edge CA keys in SoftHSM, TLS through the pkcs11 engine)", () => {
  let tokens: Tokens;
  let ca: RunningCa;
  let keys: KeyStore;
  let dir: string;
  let cfg: DeviceConfig;
  let configFile: string;
  const hsm: HsmConfig = { ...(Value.Default(HsmConfig, {}) as HsmConfig), module: SOFTHSM_MODULE, tokenLabel: "device", engine: "pkcs11" };
  const env = (): Record<string, string> => ({ OPENSSL_CONF: tokens.opensslConf, SOFTHSM2_CONF: tokens.hsm.conf });
  const shortLived = { "device-identity": { lifetimeSeconds: HOUR }, "edge-ca": { lifetimeSeconds: HOUR } };
  const longLived = { "device-identity": { lifetimeSeconds: 10 * HOUR }, "edge-ca": { lifetimeSeconds: 10 * HOUR } };

  beforeAll(async () => {
    tokens = await makeTokens();
    // Provisioned certificates live 1 h and are backdated 5 min: 8% of their life has passed, above the 5% threshold.
    ca = await startCa(tokens, { deviceId: DEVICE, profiles: shortLived });
    keys = await tokens.openDevice();
    dir = tmp("et-renew-");
    cfg = {
      ...(Value.Default(DeviceConfig, {}) as DeviceConfig),
      deviceId: DEVICE, trustDomain: TRUST_DOMAIN, stateDir: join(dir, "identity"), caUrl: ca.url,
      managementSocket: join(dir, "mgmt.sock"), workloadDir: join(dir, "modules"), hubServerCertFile: join(dir, "hub", "server.chain.pem"),
      renewAtPercent: 5, retryInitialSeconds: 1, retryMaxSeconds: 2, hubLifetimeSeconds: 10 * HOUR, rotateKeys: true,
    };
    configFile = join(dir, "edgetrust.yaml");
    writeFileSync(configFile, stringify({ log: { level: "info" }, hsm: { ...hsm, pinFile: tokens.pinFile }, device: cfg }));
    writeFileSync(join(dir, "ca-trust.pem"), ca.trustPem);
    await identityFromConfig({ ...cfg, caTrustFile: join(dir, "ca-trust.pem") }, hsm, { keys, log: silentLogger() }).provision(ca.adminToken);
  });

  afterAll(async () => {
    await keys?.close();
    await ca?.close();
    await tokens?.caKeys.close();
    tokens?.hsm.cleanup();
  });

  const labels = async (): Promise<string[]> => (await keys.list()).map((k) => k.label).sort();

  it("a crash after the new key and certificate exist but before they are stored keeps the old key and the old state", async () => {
    const d = runDaemon(configFile, { ...env(), EDGETRUST_FAULT_CRASH_AFTER: "state.json" });
    expect((await d.exit).signal).toBe("SIGKILL");
    // The new key was made first, the old one never erased: both are in the token, the old state still matches its key.
    expect(await labels()).toEqual(["device-identity", "device-identity.1", "edge-ca", "edge-hub-server"]);
    const st = await identityFromConfig(cfg, hsm, { keys, log: silentLogger() }).load();
    expect([st.generation, st.keys.device]).toEqual([1, "device-identity"]);
  });

  it("while the CA is down it keeps serving and retries with backoff; when the CA is back it renews (rekey) and only then erases the old keys", async () => {
    await ca.stop();
    const d = runDaemon(configFile, env());
    try {
      await d.waitLog((l) => l.msg === "renewal failed; serving with the current certificate and retrying" && l.kind === "device" && l.attempt === 2, "a second failed attempt");
      const failures = d.logs.filter((l) => l.kind === "device" && l.msg?.toString().startsWith("renewal failed"));
      expect(failures[0]?.err).toMatch(/unreachable/);
      // Offline, the management socket answers with what the device has.
      const client = new ManagementClient(cfg.managementSocket);
      const offline = await client.status() as { generation: number; certificates: { kind: string; failures: number; lastError?: string }[] };
      expect(offline.generation).toBe(1);
      expect(offline.certificates.find((c) => c.kind === "device")?.failures).toBeGreaterThanOrEqual(2);

      await ca.restart(longLived);
      await d.waitLog((l) => l.msg === "certificate renewed" && l.kind === "edge-ca", "Edge CA renewed");
      await d.waitLog((l) => l.msg === "certificate renewed" && l.kind === "device", "device renewed");
      const st = await client.status() as { generation: number; certificates: { kind: string; status: string; failures: number; keyLabel: string }[] };
      expect(st.certificates.map((c) => [c.kind, c.status, c.failures])).toEqual([["device", "valid", 0], ["edge-ca", "valid", 0], ["hub", "valid", 0]]);
      expect(st.certificates.find((c) => c.kind === "device")?.keyLabel).toBe("device-identity.1");
      // The hub certificate, reissued with the Edge CA, got a new key too (under .1); the replaced hub key stays until
      // the next rotation (the hub signs with it until it reloads its certificate).
      expect(st.certificates.find((c) => c.kind === "hub")?.keyLabel).toBe("edge-hub-server.1");
      expect(await labels()).toEqual(["device-identity.1", "edge-ca.1", "edge-hub-server", "edge-hub-server.1"]);
      const { stdout } = await execFileAsync("openssl", ["verify", "-purpose", "sslclient", "-CAfile", join(cfg.stateDir, "ca-bundle.pem"), "-untrusted", join(cfg.stateDir, "issuing-ca.cert.pem"), join(cfg.stateDir, "device.cert.pem")], { encoding: "utf8" });
      expect(stdout).toContain(": OK");
      const pub = await keys.getPublicKey({ label: "device-identity.1" });
      const renewed = await identityFromConfig(cfg, hsm, { keys, log: silentLogger() }).load();
      expect(Buffer.from(new x509.X509Certificate(renewed.device.cert).publicKey.rawData).equals(Buffer.from(pub.spki))).toBe(true);
      // The Edge CA before the switch stays trusted (overlap) until it expires.
      expect(renewed.edgeCa.previous).toHaveLength(1);
    } finally {
      d.proc.kill("SIGTERM");
    }
    const exit = await d.exit;
    expect(exit.code, d.stderr().slice(-2000)).toBe(0);
    expect(d.logs.some((l) => l.msg === "device identity daemon stopped")).toBe(true);
  });

  it("a clock far ahead: renews once, then says the clock is wrong instead of looping, and keeps serving", async () => {
    const d = runDaemon(configFile, { ...env(), EDGETRUST_FAULT_CLOCK_OFFSET_SECONDS: String(20 * 365 * 86400) });
    try {
      const hit = await d.waitLog((l) => l.msg === "device clock disagrees with the CA", "clock complaint");
      expect(String(hit.problem)).toMatch(/ahead of the CA/);
      const st = await new ManagementClient(cfg.managementSocket).status() as { clock?: string; generation: number };
      expect(st.clock).toMatch(/ahead of the CA/);
      const gen = st.generation;
      await new Promise((r) => setTimeout(r, 2500));
      expect((await new ManagementClient(cfg.managementSocket).status() as { generation: number }).generation).toBe(gen);
    } finally {
      d.proc.kill("SIGTERM");
    }
    expect((await d.exit).code).toBe(0);
  });

  it("a clock far behind (booted at 1970): nothing renewed or discarded, the problem is stated, module certificates refused with the reason", async () => {
    // A new session: the children rotated keys behind this process's key cache.
    const fresh = await tokens.openDevice();
    const before = await identityFromConfig(cfg, hsm, { keys: fresh, log: silentLogger() }).load();
    const daemon = await DeviceDaemon.start({
      config: { ...cfg, managementSocket: join(dir, "mgmt2.sock") }, hsm, keys: fresh, log: silentLogger(), now: () => new Date("1970-01-02T00:00:00Z"),
    });
    try {
      const st = await new ManagementClient(join(dir, "mgmt2.sock")).status() as { clock?: string; generation: number; certificates: { status: string }[] };
      expect(st.clock).toMatch(/clock is wrong/);
      expect(st.generation).toBe(before.generation);
      expect(st.certificates.map((c) => c.status)).toEqual(["clock-behind", "clock-behind", "clock-behind"]);
      expect(() => daemon.identity.assertCanIssue({ name: "m" } as Parameters<typeof daemon.identity.assertCanIssue>[0])).toThrow(/clock/);
    } finally {
      await daemon.stop();
      await fresh.close();
    }
  });
});
