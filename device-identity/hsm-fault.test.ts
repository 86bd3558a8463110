import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Value } from "@sinclair/typebox/value";
import { stringify } from "yaml";
import { HsmConfig, SOFTHSM_MODULE } from "../hsm/index.js";
import { DockerClient, ensureImage, type ResolvedImage } from "../engine/index.js";
import { createModuleContainer } from "../edge-agent/index.js";
import { buildBusyboxImage, DOCKER_SOCKET } from "../test/fixtures/images.js";
import { DeviceConfig } from "./config.js";
import { identityFromConfig } from "./daemon.js";
import { ManagementClient } from "../identity-api/index.js";
import { DEVICE_PIN, execFileAsync, makeTokens, runDaemon, silentLogger, startCa, tmp, TRUST_DOMAIN, type Daemon, type RunningCa, type Tokens } from "./test-helpers.js";

const DEVICE = "dev-hsm-fault";
const HOUR = 3600;
const docker = new DockerClient({ socketPath: DOCKER_SOCKET });
const tag = `${process.pid}`;

/** curl over a unix socket (async: nothing here may block the event loop for long). */
async function curl(socket: string, method: string, path: string, body?: unknown): Promise<{ status: number; body: string }> {
  const args = ["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "20", "--unix-socket", socket, "-X", method, `http://localhost${path}`];
  if (body !== undefined) args.push("-H", "content-type: application/json", "--data-binary", JSON.stringify(body));
  const { stdout } = await execFileAsync("curl", args, { encoding: "utf8", timeout: 30_000 });
  const nl = stdout.lastIndexOf("\n");
  return { status: Number(stdout.slice(nl + 1)), body: stdout.slice(0, nl) };
}

function moduleCsr(dir: string, cn: string): string {
  return execFileSync("openssl", ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", join(dir, `${cn}.key`), "-subj", `/CN=${cn}`], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
}

interface Status {
  hsm: { ok: boolean; problem?: string; code?: string; recoveries: number };
  generation: number;
  certificates: { kind: string; status: string; failures: number; lastError?: string; nextRetryAt?: string }[];
}

describe("HSM faults: the daemon with its SoftHSM token missing, unloadable, behind a wrong PIN, and gone mid-run", () => {
  let tokens: Tokens;
  let ca: RunningCa;
  let dir: string;
  let cfg: DeviceConfig;
  let tokenDir: string;
  let image: ResolvedImage;
  const hsm: HsmConfig = { ...(Value.Default(HsmConfig, {}) as HsmConfig), module: SOFTHSM_MODULE, tokenLabel: "device", engine: "pkcs11" };
  const env = (): Record<string, string> => ({ OPENSSL_CONF: tokens.opensslConf, SOFTHSM2_CONF: tokens.hsm.conf });
  // Provisioned certificates live 1 h and are due at once (5%): the daemon keeps trying to renew while the CA is down.
  const shortLived = { "device-identity": { lifetimeSeconds: HOUR }, "edge-ca": { lifetimeSeconds: HOUR } };
  const longLived = { "device-identity": { lifetimeSeconds: 10 * HOUR }, "edge-ca": { lifetimeSeconds: 10 * HOUR } };
  /** The HSM goes away the way a token does: SoftHSM's directory of the device token is moved out of its tokendir. */
  const away = (): string => join(dir, "token-away");
  const removeToken = (): void => renameSync(tokenDir, away());
  const restoreToken = (): void => renameSync(away(), tokenDir);

  const writeConfig = (name: string, over: { module?: string; pinFile?: string }): string => {
    const file = join(dir, name);
    writeFileSync(file, stringify({ log: { level: "info" }, hsm: { ...hsm, pinFile: tokens.pinFile, ...over }, device: cfg }));
    return file;
  };

  beforeAll(async () => {
    tokens = await makeTokens();
    ca = await startCa(tokens, { deviceId: DEVICE, profiles: shortLived });
    dir = tmp("et-hsm-fault-");
    cfg = {
      ...(Value.Default(DeviceConfig, {}) as DeviceConfig),
      deviceId: DEVICE, trustDomain: TRUST_DOMAIN, stateDir: join(dir, "identity"), caUrl: ca.url,
      managementSocket: join(dir, "mgmt.sock"), workloadDir: join(dir, "modules"), hubServerCertFile: join(dir, "hub", "server.chain.pem"),
      renewAtPercent: 5, retryInitialSeconds: 1, retryMaxSeconds: 2, hubLifetimeSeconds: 10 * HOUR, hsmRetrySeconds: 1, hsmRetryMaxSeconds: 1,
      dockerSocket: DOCKER_SOCKET,
    };
    const keys = await tokens.openDevice();
    try {
      writeFileSync(join(dir, "ca-trust.pem"), ca.trustPem);
      await identityFromConfig({ ...cfg, caTrustFile: join(dir, "ca-trust.pem") }, hsm, { keys, log: silentLogger() }).provision(ca.adminToken);
    } finally {
      await keys.close();
    }
    // Which of SoftHSM's token directories is the device's (its token.object carries the label).
    const found = readdirSync(tokens.hsm.tokenDir).map((d) => join(tokens.hsm.tokenDir, d))
      .find((d) => existsSync(join(d, "token.object")) && readFileSync(join(d, "token.object")).includes(Buffer.from("device".padEnd(32, " "))));
    if (!found) throw new Error("device token directory not found");
    tokenDir = found;
    image = await ensureImage(docker, buildBusyboxImage("hsmfault", `hsmfault-${tag}-${Date.now()}`));
    // The CA is down throughout until the very end: renewals are due, fail, and retry with backoff.
    await ca.stop();
  });

  afterAll(async () => {
    if (tokenDir && !existsSync(tokenDir) && existsSync(away())) restoreToken();
    await docker.removeContainer(`edgetrust-hsm${tag}`, true).catch(() => undefined);
    await ca?.close();
    await tokens?.caKeys.close();
    tokens?.hsm.cleanup();
  });

  it("at start: module missing, then token missing, then a wrong PIN — one doctor line each, nothing served, a refused PIN not retried — then starts normally", async () => {
    const moduleLink = join(dir, "lib", "libsofthsm2.so");
    const pinFile = join(dir, "pin");
    writeFileSync(pinFile, "wrong-pin-0000\n", { mode: 0o600 });
    removeToken();
    const d = runDaemon(writeConfig("start.yaml", { module: moduleLink, pinFile }), env());
    try {
      const startLine = (check: string) => (l: Record<string, unknown>) => String(l.msg).startsWith("HSM unavailable at start") && l.check === check;
      const mod = await d.waitLog(startLine("module"), "module check failure");
      expect(mod.problem).toMatch(/^hsm doctor: module check failed: PKCS#11 module .*libsofthsm2\.so does not exist \(HSM_MODULE_NOT_FOUND\); fix: install the module/);
      // Nothing that needs keys is served: not even the management socket exists yet.
      expect(existsSync(cfg.managementSocket)).toBe(false);

      mkdirSync(join(dir, "lib"));
      symlinkSync(SOFTHSM_MODULE, moduleLink);
      const token = await d.waitLog(startLine("token"), "token check failure");
      expect(token.problem).toMatch(/^hsm doctor: token check failed: no token labelled "device" .* \(HSM_TOKEN_NOT_FOUND\); fix: /);
      // The same reason is said once, not on every retry.
      expect(d.logs.filter(startLine("module"))).toHaveLength(1);

      restoreToken();
      const pin = await d.waitLog(startLine("pin"), "PIN check failure");
      expect(pin.problem).toMatch(/^hsm doctor: pin check failed: .*CKR_PIN_INCORRECT \(HSM_PIN_INCORRECT\); fix: check the PIN/);
      expect(String(pin.msg)).toMatch(/same PIN is not tried again/);
      expect(d.stderr()).not.toContain(DEVICE_PIN);

      writeFileSync(pinFile, DEVICE_PIN + "\n");
      await d.waitLog((l) => l.msg === "device identity daemon running", "daemon running");
      expect(d.logs.filter(startLine("pin"))).toHaveLength(1);
      const st = await new ManagementClient(cfg.managementSocket).status() as unknown as Status;
      expect(st.hsm).toEqual({ ok: true, recoveries: 0 });
      expect(st.generation).toBe(1);
    } finally {
      d.proc.kill("SIGTERM");
    }
    expect((await d.exit).code, d.stderr().slice(-2000)).toBe(0);
  });

  it("SIGTERM while waiting for the HSM exits cleanly", async () => {
    removeToken();
    const d = runDaemon(writeConfig("wait.yaml", {}), env());
    try {
      await d.waitLog((l) => String(l.msg).startsWith("HSM unavailable at start") && l.check === "token", "token check failure");
    } finally {
      d.proc.kill("SIGTERM");
      const exit = await d.exit;
      restoreToken();
      expect(exit.code, d.stderr().slice(-2000)).toBe(0);
    }
    expect(d.logs.some((l) => l.msg === "stopped while waiting for the HSM")).toBe(true);
  });

  it("mid-run: the token goes away — renewals are due — module certificates 503 with the reason, renewal backs off, status says why; it comes back — the daemon restarts (exit 75) for an engine with fresh sessions, renews and issues", async () => {
    let d: Daemon = runDaemon(writeConfig("run.yaml", {}), env());
    const client = new ManagementClient(cfg.managementSocket);
    const name = `hsm${tag}`;
    try {
      await d.waitLog((l) => l.msg === "renewal failed; serving with the current certificate and retrying" && l.kind === "device", "a renewal failing on the CA");
      // A busybox module, registered through the management socket like the agent does.
      const id = await createModuleContainer(docker, { deviceId: DEVICE, deploymentId: "dep", manifestVersion: 1, image, user: "1000:1000", capAdd: [], binds: [], devices: [], network: "none", readOnlyRootfs: true, env: {}, module: name, cmd: ["sleep", "600"] });
      await docker.startContainer(id);
      const view = await client.register({ name, containerId: id, imageRepository: image.repository, imageDigest: image.digest, manifestVersion: 1, deploymentId: "dep", uid: 1000, gid: 1000 });
      const before = await curl(view.socketPath, "POST", "/v1/certificate", { csr: moduleCsr(dir, "m1") });
      expect(before.status, before.body).toBe(200);

      removeToken();
      const refused = await curl(view.socketPath, "POST", "/v1/certificate", { csr: moduleCsr(dir, "m2") });
      expect(refused.status, refused.body).toBe(503);
      const problem = JSON.parse(refused.body) as { code: string; detail: string };
      expect(problem.code).toBe("UNAVAILABLE");
      expect(problem.detail).toMatch(/the HSM is unavailable: hsm doctor: (key check failed: .*no private key labelled "edge-ca" on token "device"|token check failed: no token labelled "device")/);
      // Once the HSM is known to be down, requests are refused at once with the reason (no token access, no hang).
      const again = await curl(view.socketPath, "POST", "/v1/certificate", { csr: moduleCsr(dir, "m3") });
      expect([again.status, (JSON.parse(again.body) as { detail: string }).detail]).toEqual([503, expect.stringMatching(/^no certificate for module hsm\d+ now: the HSM is unavailable: hsm doctor: (key|token) check failed/)]);
      expect((await curl(view.socketPath, "GET", "/v1/trust-bundle")).status).toBe(200);

      const down = await d.waitLog((l) => l.msg === "renewal failed; serving with the current certificate and retrying" && /the HSM is unavailable/.test(String(l.err)), "a renewal backing off on the HSM");
      expect(down.retryInSeconds).toBeGreaterThanOrEqual(1);
      const st = await client.status() as unknown as Status;
      // Which check notices first depends on whether SoftHSM has re-scanned its token directory yet: the key, or the
      // whole token, is gone — both are the true reason, and both must be reported as the HSM's.
      expect(st.hsm).toMatchObject({ ok: false, code: expect.stringMatching(/^HSM_(KEY|TOKEN)_NOT_FOUND$/), problem: expect.stringMatching(/^hsm doctor: (key|token) check failed/) });
      const dev = st.certificates.find((c) => c.kind === "device");
      expect(dev?.lastError).toMatch(/HSM is unavailable|unreachable/);
      expect(dev?.nextRetryAt).toBeDefined();
      await expect(client.renew("device")).rejects.toMatchObject({ code: "UNAVAILABLE", message: expect.stringMatching(/cannot renew the device certificate now: the HSM is unavailable/) });

      await ca.restart(longLived);
      restoreToken();
      await d.waitLog((l) => l.msg === "HSM available again: issuing and renewing", "HSM recovery");
      // Renewal needs mTLS through the OpenSSL engine, whose sessions predate the outage: the daemon stops cleanly
      // with 75 and the supervisor (systemd Restart=on-failure; here the test) starts it again.
      await d.waitLog((l) => String(l.msg).startsWith("restarting: renewal of device, edge-ca is due"), "restart for renewal");
      expect(await d.exit).toEqual({ code: 75, signal: null });
      d = runDaemon(writeConfig("run.yaml", {}), env());
      await d.waitLog((l) => l.msg === "certificate renewed" && l.kind === "edge-ca", "Edge CA renewed");
      await d.waitLog((l) => l.msg === "certificate renewed" && l.kind === "device", "device renewed");
      const after = await curl(view.socketPath, "POST", "/v1/certificate", { csr: moduleCsr(dir, "m4") });
      expect(after.status, after.body).toBe(200);
      const issued = JSON.parse(after.body) as { certificate: string; chain: string[] };
      writeFileSync(join(dir, "m4.pem"), issued.certificate);
      writeFileSync(join(dir, "m4.chain.pem"), issued.chain.map((p) => p.trim() + "\n").join(""));
      const { stdout } = await execFileAsync("openssl", ["verify", "-purpose", "sslclient", "-CAfile", join(cfg.stateDir, "ca-bundle.pem"), "-untrusted", join(dir, "m4.chain.pem"), join(dir, "m4.pem")], { encoding: "utf8" });
      expect(stdout).toContain(": OK");
      const ok = await client.status() as unknown as Status;
      expect(ok.hsm).toEqual({ ok: true, recoveries: 0 });
      expect(ok.certificates.map((c) => [c.kind, c.status, c.failures])).toEqual([["device", "valid", 0], ["edge-ca", "valid", 0], ["hub", "valid", 0]]);
    } finally {
      d.proc.kill("SIGTERM");
      if (!existsSync(tokenDir) && existsSync(away())) restoreToken();
    }
    expect((await d.exit).code, d.stderr().slice(-2000)).toBe(0);
    expect(d.logs.some((l) => l.msg === "device identity daemon stopped")).toBe(true);
  });
  it("mid-run with nothing due: the token goes away and comes back — issuance resumes in the same process", async () => {
    const d = runDaemon(writeConfig("run.yaml", {}), env());
    const socket = join(cfg.workloadDir, `hsm${tag}`, "workload.sock");
    try {
      await d.waitLog((l) => l.msg === "device identity daemon running", "daemon running");
      expect((await curl(socket, "POST", "/v1/certificate", { csr: moduleCsr(dir, "n1") })).status).toBe(200);
      removeToken();
      const refused = await curl(socket, "POST", "/v1/certificate", { csr: moduleCsr(dir, "n2") });
      expect([refused.status, (JSON.parse(refused.body) as { code: string }).code]).toEqual([503, "UNAVAILABLE"]);
      expect((await new ManagementClient(cfg.managementSocket).status() as unknown as Status).hsm.ok).toBe(false);
      restoreToken();
      await d.waitLog((l) => l.msg === "HSM available again: issuing and renewing", "HSM recovery");
      const resumed = await curl(socket, "POST", "/v1/certificate", { csr: moduleCsr(dir, "n3") });
      expect(resumed.status, resumed.body).toBe(200);
      expect((await new ManagementClient(cfg.managementSocket).status() as unknown as Status).hsm).toEqual({ ok: true, recoveries: 1 });
      expect(d.proc.exitCode).toBeNull();
    } finally {
      d.proc.kill("SIGTERM");
    }
    expect((await d.exit).code, d.stderr().slice(-2000)).toBe(0);
  });
});
