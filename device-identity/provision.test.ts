import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { spawn } from "node:child_process";
import { cpSync, existsSync, readFileSync, readdirSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { stringify } from "yaml";
import type { KeyStore } from "../hsm/index.js";
import type { DeviceIdentity } from "./identity.js";
import { identityFromConfig } from "./daemon.js";
import { DeviceConfig } from "./config.js";
import { Value } from "@sinclair/typebox/value";
import { HsmConfig, SOFTHSM_MODULE } from "../hsm/index.js";
import { cliBundleArgs } from "../test/fixtures/cli-bundle.js";
import { execFileAsync, makeTokens, silentLogger, startCa, tmp, TRUST_DOMAIN, type RunningCa, type Tokens } from "./test-helpers.js";

const CLI = cliBundleArgs();
const DEVICE = "dev-prov";

/** `edgetrust device …` in a child process (its own SoftHSM session; OPENSSL_CONF registers the pkcs11 engine). */
async function cli(args: string[], env: Record<string, string>): Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> {
  const p = spawn(process.execPath, [...CLI, "device", ...args], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  p.stdout.on("data", (d: Buffer) => { stdout += d.toString(); });
  p.stderr.on("data", (d: Buffer) => { stderr += d.toString(); });
  return new Promise((resolve) => p.on("exit", (code, signal) => resolve({ code, signal, stdout, stderr })));
}

async function opensslVerify(dir: string, leaf: string, untrusted?: string, purpose = "sslclient"): Promise<string> {
  const args = ["verify", "-x509_strict", "-purpose", purpose, "-CAfile", join(dir, "ca-bundle.pem"), ...(untrusted ? ["-untrusted", join(dir, untrusted)] : []), join(dir, leaf)];
  const { stdout } = await execFileAsync("openssl", args, { encoding: "utf8" });
  return stdout;
}

describe("provisioning against a real ca-service, keys in SoftHSM", () => {
  let tokens: Tokens;
  let ca: RunningCa;
  let keys: KeyStore;
  let dir: string;
  let configFile: string;
  let cfg: DeviceConfig;
  const hsm: HsmConfig = { ...(Value.Default(HsmConfig, {}) as HsmConfig), module: SOFTHSM_MODULE, tokenLabel: "device", engine: "pkcs11" };

  beforeAll(async () => {
    tokens = await makeTokens();
    ca = await startCa(tokens, { deviceId: DEVICE });
    keys = await tokens.openDevice();
    dir = tmp("et-prov-");
    writeFileSync(join(dir, "ca-trust.pem"), ca.trustPem);
    writeFileSync(join(dir, "token"), ca.adminToken + "\n", { mode: 0o600 });
    cfg = {
      ...(Value.Default(DeviceConfig, {}) as DeviceConfig),
      deviceId: DEVICE, trustDomain: TRUST_DOMAIN, stateDir: join(dir, "identity"), caUrl: ca.url, caTrustFile: join(dir, "ca-trust.pem"),
      enrollment: "admin", bootstrapTokenFile: join(dir, "token"), managementSocket: join(dir, "mgmt.sock"), workloadDir: join(dir, "modules"),
      hubServerCertFile: join(dir, "hub", "server.chain.pem"),
    };
    configFile = join(dir, "edgetrust.yaml");
    writeFileSync(configFile, stringify({ log: { level: "warn" }, hsm: { ...hsm, pinFile: tokens.pinFile }, device: cfg }));
  });

  afterAll(async () => {
    await keys?.close();
    await ca?.close();
    await tokens?.caKeys.close();
    tokens?.hsm.cleanup();
  });

  const identity = (): DeviceIdentity => identityFromConfig(cfg, { ...hsm, pinFile: tokens.pinFile }, { keys, log: silentLogger() });

  it("provisions: keys generated in the HSM (not extractable), certificates from the CA, openssl verifies the stored state", async () => {
    const id = identity();
    const st = await id.provision(ca.adminToken);
    expect(st.generation).toBe(1);
    for (const label of [st.keys.device, st.keys.edgeCa, st.keys.hub]) {
      const k = await keys.getKey({ label });
      expect([k.extractable, k.sensitive]).toEqual([false, true]);
    }
    const sd = cfg.stateDir;
    expect(readlinkSync(join(sd, "current"))).toBe("gen-000001");
    expect(await opensslVerify(sd, "device.cert.pem", "issuing-ca.cert.pem")).toContain(": OK");
    expect(await opensslVerify(sd, "edge-ca.cert.pem", "issuing-ca.cert.pem", "any")).toContain(": OK");
    // The hub's server certificate chains through the Edge CA (name constraints: edgehub, localhost).
    const { stdout } = await execFileAsync("openssl", ["verify", "-x509_strict", "-purpose", "sslserver", "-CAfile", join(sd, "ca-bundle.pem"), "-untrusted", join(sd, "edge-ca.chain.pem"), join(sd, "current", "hub-server.chain.pem")], { encoding: "utf8" });
    expect(stdout).toContain(": OK");
    const dev = new x509.X509Certificate(readFileSync(join(sd, "device.cert.pem"), "utf8"));
    expect(dev.getExtension(x509.SubjectAlternativeNameExtension)?.names.items.map((n) => n.value)).toEqual([`edgetrust://${TRUST_DOMAIN}/devices/${DEVICE}`]);
    // The CA-held enrollment decided the names; the key is the HSM's.
    const pub = await keys.getPublicKey({ label: st.keys.device });
    expect(Buffer.from(dev.publicKey.rawData).equals(Buffer.from(pub.spki))).toBe(true);
  });

  it("refuses to provision twice without --force", async () => {
    await expect(identity().provision(ca.adminToken)).rejects.toMatchObject({ code: "CONFLICT" });
  });

  it("a crash in the middle of writing a new state (process killed) leaves the previous state in force and usable", async () => {
    const before = readFileSync(join(cfg.stateDir, "device.cert.pem"), "utf8");
    // Re-provision with --force in a child killed right after it wrote the new Edge CA file of the new generation.
    const r = await cli(["provision", "-c", configFile, "--force"], { OPENSSL_CONF: tokens.opensslConf, SOFTHSM2_CONF: tokens.hsm.conf, EDGETRUST_FAULT_CRASH_AFTER: "edge-ca.cert.pem" });
    expect(r.signal).toBe("SIGKILL");
    expect(readFileSync(join(cfg.stateDir, "device.cert.pem"), "utf8")).toBe(before);
    expect(await opensslVerify(cfg.stateDir, "device.cert.pem", "issuing-ca.cert.pem")).toContain(": OK");
    // The old keys were not erased: the previous state still loads and matches its keys.
    const id = identity();
    const st = await id.load();
    expect(st.generation).toBe(1);
    expect(existsSync(join(cfg.stateDir, "gen-000002.partial"))).toBe(false);
    // Running it again to completion switches to the new generation and only then erases the old keys.
    const ok = await cli(["provision", "-c", configFile, "--force", "--json"], { OPENSSL_CONF: tokens.opensslConf, SOFTHSM2_CONF: tokens.hsm.conf });
    expect(ok.code, ok.stderr).toBe(0);
    const out = JSON.parse(ok.stdout) as { generation: number };
    expect(out.generation).toBe(2);
    const labels = (await keys.list()).map((k) => k.label).sort();
    expect(labels).toEqual(["device-identity.1", "edge-ca.1", "edge-hub-server"]);
    expect(await opensslVerify(cfg.stateDir, "device.cert.pem", "issuing-ca.cert.pem")).toContain(": OK");
    // `device status` without a running daemon reads the state (and checks it against the HSM).
    const status = await cli(["status", "-c", configFile, "--json"], { OPENSSL_CONF: tokens.opensslConf, SOFTHSM2_CONF: tokens.hsm.conf });
    expect(status.code, status.stderr).toBe(0);
    expect(JSON.parse(status.stdout)).toMatchObject({ running: false, deviceId: DEVICE, generation: 2, certificates: [{ kind: "device", status: "valid" }, { kind: "edge-ca" }, { kind: "hub" }] });
  });

  it("a dangling `current` (its generation gone) deletes nothing: every generation stays on disk and the refusal names them", async () => {
    const sd = join(dir, "identity-dangling");
    cpSync(cfg.stateDir, sd, { recursive: true, verbatimSymlinks: true });
    const kept = readdirSync(sd).filter((n) => /^gen-\d+$/.test(n)).sort();
    expect(kept.length).toBeGreaterThanOrEqual(2);
    rmSync(join(sd, "current"));
    symlinkSync("gen-000009", join(sd, "current"));
    const id = identityFromConfig({ ...cfg, stateDir: sd }, { ...hsm, pinFile: tokens.pinFile }, { keys, log: silentLogger() });
    const err = await id.load().then(() => undefined, (e: unknown) => e);
    expect(err).toMatchObject({ code: "DEVICE_STATE_INVALID" });
    const newest = kept[kept.length - 1] ?? "";
    expect(String((err as Error).message)).toContain(newest);
    expect(readdirSync(sd).filter((n) => /^gen-\d+$/.test(n)).sort()).toEqual(kept);
    // A `current` whose state.json is broken proves nothing either.
    rmSync(join(sd, "current"));
    symlinkSync(newest, join(sd, "current"));
    writeFileSync(join(sd, newest, "state.json"), "{");
    await expect(id.load()).rejects.toMatchObject({ code: "DEVICE_STATE_INVALID" });
    expect(readdirSync(sd).filter((n) => /^gen-\d+$/.test(n)).sort()).toEqual(kept);
  });

  it("provisions through the enrollment API's registration route: keys first, the line enrolls the public key, a crash after the CA answered is retried with the same request and replayed", async () => {
    const reg: DeviceConfig = { ...cfg, enrollment: "registration", deviceId: "dev-reg", stateDir: join(dir, "identity-reg"), bootstrapTokenFile: "", hubKeyLabel: "hub-reg" };
    const regFile = join(dir, "reg.yaml");
    writeFileSync(regFile, stringify({ log: { level: "warn" }, hsm: { ...hsm, pinFile: tokens.pinFile }, device: reg }));
    const env = { OPENSSL_CONF: tokens.opensslConf, SOFTHSM2_CONF: tokens.hsm.conf, EDGETRUST_BOOTSTRAP_TOKEN: "" };
    const k = await cli(["provision", "-c", regFile, "--keys-only", "--json"], env);
    expect(k.code, k.stderr).toBe(0);
    const pub = (JSON.parse(k.stdout) as { publicKeyPem: string }).publicKeyPem;
    expect(pub).toContain("BEGIN PUBLIC KEY");
    // The factory line enrolls the device's HSM public key (individual publicKey enrollment, with an Edge CA).
    const e = await ca.server.app.inject({ method: "PUT", url: "/v1/enrollments/dev-reg", headers: { authorization: `Bearer ${ca.adminToken}` }, payload: { attestation: "publicKey", credential: pub, dnsNames: ["edgehub", "localhost"] } });
    expect(e.statusCode, e.body).toBe(201);
    const crashed = await cli(["provision", "-c", regFile], { ...env, EDGETRUST_FAULT_CRASH_AFTER: "state.json" });
    expect(crashed.signal).toBe("SIGKILL");
    const ok = await cli(["provision", "-c", regFile, "--json"], env);
    expect(ok.code, ok.stderr).toBe(0);
    expect((JSON.parse(ok.stdout) as { generation: number }).generation).toBe(1);
    expect(existsSync(join(reg.stateDir, "registration.pending.json"))).toBe(false);
    expect(await opensslVerify(reg.stateDir, "device.cert.pem", "issuing-ca.cert.pem")).toContain(": OK");
    expect(await opensslVerify(reg.stateDir, "edge-ca.cert.pem", "issuing-ca.cert.pem", "any")).toContain(": OK");
  });
});
