import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { Agent, request } from "node:http";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import pkcs11js from "pkcs11js";
import { Value } from "@sinclair/typebox/value";
import { stringify } from "yaml";
import { HsmConfig, Pkcs11KeyStore, SOFTHSM_MODULE } from "../hsm/index.js";
import { DockerClient, ensureImage } from "../engine/index.js";
import { buildBusyboxImage, createModuleContainer, DOCKER_SOCKET } from "../edge-agent/index.js";
import { DeviceConfig, identityFromConfig } from "../device-identity/index.js";
import { ManagementClient } from "../identity-api/index.js";
import { makeTokens, silentLogger, startCa, DEVICE_PIN, TRUST_DOMAIN } from "../device-identity/test-helpers.js";
import { interleaved, timed } from "./measure.js";
import { row, type Benchmark, type BenchRow, type Progress } from "./types.js";

const SOURCE = "issue 6 (device identity)";
const CLIENTS = 8;
const ROUNDS = 6;
const ROUND_S = 1;
/** Keep in step with NODE_OPTIONS in deploy/systemd/edgetrust-identity.service (and the agent's unit). */
const UNIT_NODE_FLAGS = ["--max-semi-space-size=1", "--lite-mode"];
const BIN = resolve(import.meta.dirname, "../../bin/edgetrust.js");

/** Peak and current RSS (kB) of a process, from the kernel. */
function rssKb(pid: number): { peak: number; now: number } {
  const st = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(st)?.[1] ?? NaN);
  return { peak: kb("VmHWM"), now: kb("VmRSS") };
}

/** POST /v1/certificate over the module's unix socket (HTTP/1.1, one keep-alive connection per client). */
function postCsr(agent: Agent, socketPath: string, body: string): Promise<void> {
  return new Promise((ok, fail) => {
    const req = request({ agent, socketPath, method: "POST", path: "/v1/certificate", headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        if (res.statusCode === 200) ok();
        else fail(new Error(`HTTP ${res.statusCode}: ${Buffer.concat(chunks).toString("utf8").slice(0, 300)}`));
      });
    });
    req.on("error", fail);
    req.end(body);
  });
}

interface RunningDaemon {
  proc: ChildProcess;
  exit: Promise<number | null>;
  stop(): Promise<void>;
}

async function startDaemon(configFile: string, env: NodeJS.ProcessEnv, logFile: string, mgmt: string, nodeFlags: string[]): Promise<RunningDaemon> {
  const fd = openSync(logFile, "a");
  const proc = spawn(process.execPath, [...nodeFlags, BIN, "device", "run", "-c", configFile], { env: { ...process.env, ...env }, stdio: ["ignore", "ignore", fd] });
  closeSync(fd);
  const exit = new Promise<number | null>((r) => proc.on("exit", (code) => r(code)));
  const client = new ManagementClient(mgmt, 2000);
  for (let i = 0; ; i++) {
    if (proc.exitCode !== null) throw new Error(`daemon exited ${proc.exitCode}: ${readFileSync(logFile, "utf8").slice(-2000)}`);
    try {
      await client.status();
      break;
    } catch {
      if (i > 600) throw new Error(`daemon not ready: ${readFileSync(logFile, "utf8").slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return {
    proc, exit,
    stop: async () => {
      proc.kill("SIGTERM");
      await exit;
    },
  };
}

/**
 * The device identity daemon (`edgetrust device run` from the build, its own process, Edge CA key in SoftHSM) issuing
 * module certificates over a registered busybox module's workload socket — caller check (peer.ts), container check
 * against dockerd, CSR check, certificate signed in the token — to CLIENTS concurrent keep-alive clients, against
 * what the token itself signs: pkcs11js C_SignInit + C_SignAsync with the same Edge CA key on the same token, as many
 * sessions as the daemon's pool, in alternating rounds of the same run. Plus the daemon's peak RSS (VmHWM) after start
 * and after that load, with default node flags and with the systemd unit's.
 */
export const identityBenchmark: Benchmark = {
  id: "identity",
  description: "module certificates/s over the workload socket (Edge CA key in SoftHSM) vs the token's raw signing rate; daemon RSS idle and under load",
  async run(progress: Progress): Promise<BenchRow[]> {
    const docker = new DockerClient({ socketPath: DOCKER_SOCKET });
    const deviceId = `bench-id-${process.pid}`;
    const dir = mkdtempSync(join(tmpdir(), "et-bench-identity-"));
    const tokens = await makeTokens();
    const ca = await startCa(tokens, { deviceId });
    const module = `idbench${process.pid}`;
    let containerId = "";
    let daemon: RunningDaemon | undefined;
    const hsm: HsmConfig = { ...(Value.Default(HsmConfig, {}) as HsmConfig), module: SOFTHSM_MODULE, tokenLabel: "device", engine: "pkcs11", pinFile: tokens.pinFile };
    try {
      const cfg: DeviceConfig = {
        ...(Value.Default(DeviceConfig, {}) as DeviceConfig),
        deviceId, trustDomain: TRUST_DOMAIN, stateDir: join(dir, "identity"), caUrl: ca.url, caTrustFile: join(dir, "ca-trust.pem"),
        managementSocket: join(dir, "mgmt.sock"), workloadDir: join(dir, "modules"), hubServerCertFile: join(dir, "hub", "server.chain.pem"), dockerSocket: DOCKER_SOCKET,
      };
      writeFileSync(cfg.caTrustFile, ca.trustPem);
      progress.step("provisioning the device (keys in SoftHSM, certificates from a local ca-service)");
      const keys = await tokens.openDevice();
      try {
        await identityFromConfig(cfg, hsm, { keys, log: silentLogger() }).provision(ca.adminToken);
      } finally {
        await keys.close();
      }
      const configFile = join(dir, "edgetrust.yaml");
      writeFileSync(configFile, stringify({ log: { level: "info" }, hsm, device: cfg }));
      const env = { OPENSSL_CONF: tokens.opensslConf, SOFTHSM2_CONF: tokens.hsm.conf, PKCS11_MODULE_PATH: SOFTHSM_MODULE };
      const logFile = join(dir, "daemon.log");

      progress.step("building the busybox module image");
      const image = await ensureImage(docker, buildBusyboxImage("idbench", `idbench-${Date.now()}`));
      containerId = await createModuleContainer(docker, { deviceId, module, deploymentId: "bench", manifestVersion: 1, image, user: "1000:1000", capAdd: [], binds: [], devices: [], network: "none", readOnlyRootfs: true, env: {}, cmd: ["sleep", "3600"] });
      await docker.startContainer(containerId);

      const csrs = Array.from({ length: CLIENTS }, (_, i) => JSON.stringify({
        csr: execFileSync("openssl", ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", join(dir, `c${i}.key`), "-subj", `/CN=client${i}`], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }),
      }));

      // The reference: this process's own session pool on the same token, signing with the same Edge CA key.
      const raw = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: "device", pin: DEVICE_PIN, sessionPoolSize: 1, logger: silentLogger() });
      const edgeCaLabel = (JSON.parse(readFileSync(join(cfg.stateDir, "current", "state.json"), "utf8")) as { keys: { edgeCa: string } }).keys.edgeCa;
      const handle = await raw.privateKeyHandle({ label: edgeCaLabel });
      const poolSize = hsm.sessionPoolSize;
      const digest = createHash("sha256").update(randomBytes(64)).digest();

      const measure = async (flags: string[], label: string): Promise<{ rate: number; rawRate: number; idle: number; load: number }> => {
        progress.step(`daemon ${label}: start, register the module, ${ROUNDS} alternating rounds of ${ROUND_S}s (${CLIENTS} clients) vs raw C_Sign (${poolSize} sessions)`);
        daemon = await startDaemon(configFile, env, logFile, cfg.managementSocket, flags);
        const pid = daemon.proc.pid as number;
        const client = new ManagementClient(cfg.managementSocket);
        const view = await client.register({ name: module, containerId, imageRepository: image.repository, imageDigest: image.digest, manifestVersion: 1, deploymentId: "bench", uid: 1000, gid: 1000 });
        await new Promise((r) => setTimeout(r, 2000));
        const idle = rssKb(pid).peak;
        const agents = Array.from({ length: CLIENTS }, () => new Agent({ keepAlive: true, maxSockets: 1 }));
        try {
          // Warm-up (first requests compile code paths, open the dockerd connection).
          await timed(0.5, CLIENTS, (i) => postCsr(agents[i] as Agent, view.socketPath, csrs[i] as string));
          const [rate, rawRate] = await raw.withSession(async (p11) => {
            const sessions = Array.from({ length: poolSize }, () => p11.C_OpenSession(raw.slot, pkcs11js.CKF_SERIAL_SESSION));
            try {
              return await interleaved(ROUNDS,
                () => timed(ROUND_S, CLIENTS, (i) => postCsr(agents[i] as Agent, view.socketPath, csrs[i] as string)),
                () => timed(ROUND_S, poolSize, async (loop) => {
                  const s = sessions[loop] as Buffer;
                  p11.C_SignInit(s, { mechanism: pkcs11js.CKM_ECDSA }, handle);
                  await p11.C_SignAsync(s, digest, Buffer.alloc(64));
                }));
            } finally {
              for (const s of sessions) p11.C_CloseSession(s);
            }
          });
          const load = rssKb(pid).peak;
          return { rate, rawRate, idle, load };
        } finally {
          for (const a of agents) a.destroy();
          await daemon.stop();
          daemon = undefined;
        }
      };

      try {
        const plain = await measure([], "default node flags");
        const unit = await measure(UNIT_NODE_FLAGS, UNIT_NODE_FLAGS.join(" "));
        progress.step(`rates ${plain.rate.toFixed(0)} and ${unit.rate.toFixed(0)} certs/s; raw ${plain.rawRate.toFixed(0)} / ${unit.rawRate.toFixed(0)} sig/s; RSS idle ${(plain.idle / 1024).toFixed(1)} / ${(unit.idle / 1024).toFixed(1)} MB, load ${(plain.load / 1024).toFixed(1)} / ${(unit.load / 1024).toFixed(1)} MB`);
        const mb = (kb: number): number => kb / 1024;
        const ceiling = { name: "target ceiling", value: 60 };
        return [
          row({ name: `module certificates over the workload socket, ${CLIENTS} clients, Edge CA key in SoftHSM`, value: plain.rate, unit: "cert/s", reference: { name: `SoftHSM raw ECDSA P-256 (pkcs11js C_SignAsync, ${poolSize} sessions, same key)`, value: plain.rawRate }, target: 0.5, source: SOURCE }),
          row({ name: `same, daemon with ${UNIT_NODE_FLAGS.join(" ")}`, value: unit.rate, unit: "cert/s", reference: { name: "SoftHSM raw, same rounds", value: unit.rawRate }, target: 0.5, source: SOURCE }),
          row({ name: "identity daemon peak RSS after start (idle), default node flags", value: mb(plain.idle), unit: "MB", reference: ceiling, target: 1, higherIsBetter: false, source: SOURCE }),
          row({ name: "identity daemon peak RSS under that load, default node flags", value: mb(plain.load), unit: "MB", reference: ceiling, target: 1, higherIsBetter: false, source: SOURCE }),
          row({ name: `identity daemon peak RSS after start (idle), ${UNIT_NODE_FLAGS.join(" ")}`, value: mb(unit.idle), unit: "MB", reference: ceiling, target: 1, higherIsBetter: false, source: SOURCE }),
          row({ name: `identity daemon peak RSS under that load, ${UNIT_NODE_FLAGS.join(" ")}`, value: mb(unit.load), unit: "MB", reference: ceiling, target: 1, higherIsBetter: false, source: SOURCE }),
        ];
      } finally {
        await raw.close();
      }
    } finally {
      await daemon?.stop().catch(() => undefined);
      if (containerId) await docker.removeContainer(containerId).catch(() => undefined);
      await ca.close();
      await tokens.caKeys.close();
      tokens.hsm.cleanup();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
