import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createConnection, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pkcs11js from "pkcs11js";
import { Value } from "@sinclair/typebox/value";
import * as x509 from "@peculiar/x509";
import { stringify } from "yaml";
import { HsmConfig, Pkcs11KeyStore, SOFTHSM_MODULE } from "../hsm/index.js";
import { DockerClient, ensureImage } from "../engine/index.js";
import { createModuleContainer } from "../edge-agent/index.js";
import { buildBusyboxImage, DOCKER_SOCKET } from "../dev-images/index.js";
import { DeviceConfig, identityFromConfig } from "../device-identity/index.js";
import { ManagementClient } from "../identity-api/index.js";
import { makeTokens, silentLogger, startCa, DEVICE_PIN, TRUST_DOMAIN } from "../device-identity/test-helpers.js";
import { EngineProxy } from "../test/fixtures/engine-proxy.js";
import { interleaved, timed } from "./measure.js";
import { BUILT_BIN } from "./paths.js";
import { row, type Benchmark, type BenchRow, type Progress } from "./types.js";
import { assertDaemonBundle, bareNodeMb, unitCommand, unitEnv } from "./units.js";

const SOURCE = "issue 6 (device identity)";
const CLIENTS = 8;
const CSRS = 512;
const ROUNDS = 6;
const ROUND_S = 1;
/** As deploy/systemd/edgetrust-identity.service runs the daemon: its node flags and environment, read from the unit. */
const UNIT = unitCommand("identity");
const UNIT_NODE_FLAGS = UNIT.nodeFlags;
const BIN = BUILT_BIN;

/** Peak and current RSS (kB) of a process, from the kernel. */
function rssKb(pid: number): { peak: number; now: number } {
  const st = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(st)?.[1] ?? NaN);
  return { peak: kb("VmHWM"), now: kb("VmRSS") };
}

/** CPU time (user + system, all threads) of another process so far, in µs, from /proc/<pid>/stat (clock ticks). */
function processCpuUs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").replace(/^.*\) /s, "").split(" ");
  // After "(comm) ": state is field 3, utime 14 and stime 15 (proc(5)), so indices 11 and 12 here.
  return ((Number(fields[11]) + Number(fields[12])) / TICKS_PER_S) * 1e6;
}
const TICKS_PER_S = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;

/**
 * The load generator: a module's client reduced to what the daemon cannot tell apart from node:http — HTTP/1.1 requests
 * written as prepared bytes over the unix socket, each answer read only as far as its status line and Content-Length.
 * node:http with JSON on both sides cost this process 250–550 µs of CPU per certificate, on the same two cores as the
 * daemon; this costs a few tens. `keepAlive: false` opens a new connection per certificate (the caller check each time).
 */
class CertificateClient {
  private sock: Socket | undefined;
  private buf: Buffer = Buffer.alloc(0);
  private waiting: { ok: () => void; fail: (e: Error) => void } | undefined;
  private next = 0;

  constructor(private readonly socketPath: string, private readonly requests: Buffer[], private readonly keepAlive: boolean) {}

  async post(): Promise<void> {
    const sock = this.sock ?? (await this.connect());
    const req = this.requests[this.next++ % this.requests.length] as Buffer;
    await new Promise<void>((ok, fail) => {
      this.waiting = { ok, fail };
      sock.write(req);
    });
    if (!this.keepAlive) this.destroy();
  }

  destroy(): void {
    this.sock?.destroy();
    this.sock = undefined;
    this.buf = Buffer.alloc(0);
  }

  private connect(): Promise<Socket> {
    return new Promise((ok, fail) => {
      const sock = createConnection(this.socketPath, () => {
        sock.off("error", fail);
        sock.on("error", (e) => this.settle(e));
        ok(sock);
      });
      sock.once("error", fail);
      sock.on("data", (c: Buffer) => this.onData(c));
      sock.on("close", () => {
        if (this.sock === sock) this.sock = undefined;
        this.settle(new Error("the daemon closed the connection"));
      });
      this.sock = sock;
    });
  }

  private onData(c: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, c]) : c;
    const head = this.buf.indexOf("\r\n\r\n");
    if (head < 0) return;
    const headers = this.buf.subarray(0, head).toString("latin1");
    const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(headers)?.[1] ?? NaN);
    if (!Number.isFinite(length)) return this.settle(new Error(`answer without content-length: ${headers.slice(0, 200)}`));
    if (this.buf.length < head + 4 + length) return;
    const body = this.buf.subarray(head + 4, head + 4 + length);
    this.buf = this.buf.subarray(head + 4 + length);
    if (!headers.startsWith("HTTP/1.1 200 ")) return this.settle(new Error(`${headers.split("\r\n")[0]}: ${body.toString("utf8").slice(0, 300)}`));
    this.settle();
  }

  private settle(e?: Error): void {
    const w = this.waiting;
    this.waiting = undefined;
    if (!w) return;
    if (e) w.fail(e);
    else w.ok();
  }
}

/** A POST /v1/certificate request as bytes, for one CSR. */
function certificateRequest(csrPem: string, keepAlive: boolean): Buffer {
  const body = JSON.stringify({ csr: csrPem });
  return Buffer.from(`POST /v1/certificate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: ${keepAlive ? "keep-alive" : "close"}\r\n\r\n${body}`);
}

interface RunningDaemon {
  proc: ChildProcess;
  exit: Promise<number | null>;
  stop(): Promise<void>;
}

async function startDaemon(configFile: string, env: NodeJS.ProcessEnv, logFile: string, mgmt: string, nodeFlags: string[], bin = BIN): Promise<RunningDaemon> {
  const fd = openSync(logFile, "a");
  const proc = spawn(process.execPath, [...nodeFlags, bin, "device", "run", "-c", configFile], { env: { ...process.env, ...env }, stdio: ["ignore", "ignore", fd] });
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
    assertDaemonBundle("device");
    const docker = new DockerClient({ socketPath: DOCKER_SOCKET });
    const deviceId = `bench-id-${process.pid}`;
    const dir = mkdtempSync(join(tmpdir(), "et-bench-identity-"));
    const tokens = await makeTokens();
    const ca = await startCa(tokens, { deviceId });
    const module = `idbench${process.pid}`;
    let containerId = "";
    let daemon: RunningDaemon | undefined;
    // The daemon reaches dockerd only through this proxy, which records every request: the engine cost per certificate.
    const engine = new EngineProxy(join(dir, "docker.sock"), DOCKER_SOCKET);
    const hsm: HsmConfig = { ...(Value.Default(HsmConfig, {}) as HsmConfig), module: SOFTHSM_MODULE, tokenLabel: "device", engine: "pkcs11", pinFile: tokens.pinFile };
    try {
      const cfg: DeviceConfig = {
        ...(Value.Default(DeviceConfig, {}) as DeviceConfig),
        deviceId, trustDomain: TRUST_DOMAIN, stateDir: join(dir, "identity"), caUrl: ca.url, caTrustFile: join(dir, "ca-trust.pem"),
        managementSocket: join(dir, "mgmt.sock"), workloadDir: join(dir, "modules"), hubServerCertFile: join(dir, "hub", "server.chain.pem"), dockerSocket: engine.path,
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

      await engine.listen();
      progress.step("building the busybox module image");
      const image = await ensureImage(docker, buildBusyboxImage("idbench", `idbench-${Date.now()}`));
      containerId = await createModuleContainer(docker, { deviceId, module, deploymentId: "bench", manifestVersion: 1, image, user: "1000:1000", capAdd: [], binds: [], devices: [], network: "none", readOnlyRootfs: true, env: {}, cmd: ["sleep", "3600"] });
      await docker.startContainer(containerId);

      // Distinct CSRs (each its own P-256 key), made before any round: more than the daemon's per-key caches hold, so
      // no certificate is answered from a key it has just seen; each client cycles through its own share.
      progress.step(`making ${CSRS} CSRs (P-256 keys) for the clients`);
      const csrs: string[] = [];
      for (let i = 0; i < CSRS; i++) {
        const keys = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"]);
        csrs.push((await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=client${i}`, keys, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } })).toString("pem"));
      }

      // The reference: this process's own session pool on the same token, signing with the same Edge CA key.
      const raw = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: "device", pin: DEVICE_PIN, sessionPoolSize: 1, logger: silentLogger() });
      const edgeCaLabel = (JSON.parse(readFileSync(join(cfg.stateDir, "current", "state.json"), "utf8")) as { keys: { edgeCa: string } }).keys.edgeCa;
      const handle = await raw.privateKeyHandle({ label: edgeCaLabel });
      const poolSize = hsm.sessionPoolSize;
      const digest = createHash("sha256").update(randomBytes(64)).digest();

      /**
       * Engine requests the event stream made itself (listings, re-reads after events), from the daemon's status. Its
       * liveness pings (`GET /_ping`, a timer, not per certificate) are left out of both sides: a ping in flight at a
       * snapshot would be counted on one side only.
       */
      const streamRequests = async (client: ManagementClient): Promise<number> => {
        const e = (await client.status() as { engineEvents?: { syncs: number; rereads: number; imageRereads: number } }).engineEvents;
        return e ? e.syncs + e.rereads + e.imageRereads : Number.NaN;
      };
      const engineCalls = (): number => engine.calls().filter((c) => c !== "GET /_ping").length;

      /** CPU per certificate, µs: the daemon's (all its threads) and this load generator's, over the certificate rounds only. */
      interface Cpu { daemonUs: number; clientUs: number }
      interface Measured { rate: number; rawRate: number; idle: number; load: number; bare: number; certs: number; engineRequests: number; streamRequests: number; cpu: Cpu }
      const measure = async (flags: string[], label: string, unitEnvironment: Record<string, string> = {}, keepAlive = true, bin = BIN): Promise<Measured> => {
        progress.step(`daemon ${label}${keepAlive ? "" : ", a new connection per certificate"}: start, register the module, ${ROUNDS} alternating rounds of ${ROUND_S}s (${CLIENTS} clients) vs raw C_Sign (${poolSize} sessions)`);
        // The reference for its memory: a bare node with the same flags, now.
        const bare = (await bareNodeMb(flags, unitEnvironment)).peak * 1024;
        daemon = await startDaemon(configFile, { ...env, ...unitEnvironment }, logFile, cfg.managementSocket, flags, bin);
        const pid = daemon.proc.pid as number;
        const client = new ManagementClient(cfg.managementSocket);
        const view = await client.register({ name: module, containerId, imageRepository: image.repository, imageDigest: image.digest, manifestVersion: 1, deploymentId: "bench", uid: 1000, gid: 1000 });
        await new Promise((r) => setTimeout(r, 2000));
        const idle = rssKb(pid).peak;
        const share = CSRS / CLIENTS;
        const clients = Array.from({ length: CLIENTS }, (_, i) => new CertificateClient(view.socketPath, csrs.slice(i * share, (i + 1) * share).map((c) => certificateRequest(c, keepAlive)), keepAlive));
        let certs = 0;
        const post = (i: number): Promise<void> => (clients[i] as CertificateClient).post().then(() => { certs++; });
        try {
          // Warm-up (first requests compile code paths, check the caller of each kept-alive connection).
          await timed(0.5, CLIENTS, post);
          certs = 0;
          const before = { all: engineCalls(), stream: await streamRequests(client) };
          let daemonUs = 0;
          let clientUs = 0;
          const certRound = async (): Promise<{ ops: number; ms: number }> => {
            const d0 = processCpuUs(pid);
            const c0 = process.cpuUsage();
            const r = await timed(ROUND_S, CLIENTS, post);
            const c = process.cpuUsage(c0);
            daemonUs += processCpuUs(pid) - d0;
            clientUs += c.user + c.system;
            return r;
          };
          const [rate, rawRate] = await raw.withSession(async (p11) => {
            const sessions = Array.from({ length: poolSize }, () => p11.C_OpenSession(raw.slot, pkcs11js.CKF_SERIAL_SESSION));
            try {
              return await interleaved(ROUNDS,
                certRound,
                () => timed(ROUND_S, poolSize, async (loop) => {
                  const s = sessions[loop] as Buffer;
                  p11.C_SignInit(s, { mechanism: pkcs11js.CKM_ECDSA }, handle);
                  await p11.C_SignAsync(s, digest, Buffer.alloc(64));
                }));
            } finally {
              for (const s of sessions) p11.C_CloseSession(s);
            }
          });
          // The status call itself is not an engine request; what the stream did is subtracted from what the proxy saw.
          const stream = (await streamRequests(client)) - before.stream;
          const engineRequests = engineCalls() - before.all;
          const load = rssKb(pid).peak;
          return { rate, rawRate, idle, load, bare, certs, engineRequests, streamRequests: stream, cpu: { daemonUs: daemonUs / certs, clientUs: clientUs / certs } };
        } finally {
          for (const c of clients) c.destroy();
          await daemon.stop();
          daemon = undefined;
        }
      };

      const cpuText = (c: Cpu): string => `daemon ${c.daemonUs.toFixed(0)} µs + load generator ${c.clientUs.toFixed(0)} µs of CPU per certificate`;
      try {
        // EDGETRUST_BENCH_IDENTITY_VARIANTS="--lite-mode;--no-opt --max-lazy": node flag sets (`;` between sets) measured
        // instead of the default rows, each with the unit's environment and the unit's bundle: the README's flag table.
        // In a set, `NAME=value` adds to (or, empty, removes from) the unit's environment and `bin=<path>` runs another
        // copy of bin/edgetrust.js (beside its own dist/daemons/device.mjs): same-run A/B pairs of environment and bundle.
        const variants = (process.env.EDGETRUST_BENCH_IDENTITY_VARIANTS ?? "").split(";").map((v) => v.trim().split(/\s+/).filter(Boolean)).filter((f) => f.length > 0);
        if (variants.length > 0) {
          const rows: BenchRow[] = [];
          for (const words of [UNIT_NODE_FLAGS, ...variants]) {
            const flags = words.filter((w) => !/^[A-Za-z_][A-Za-z0-9_]*=/.test(w));
            const environment = unitEnv(UNIT);
            let bin = BIN;
            for (const w of words.filter((x) => !flags.includes(x))) {
              const [k, v] = [w.slice(0, w.indexOf("=")), w.slice(w.indexOf("=") + 1)];
              if (k === "bin") bin = v;
              else if (v === "") delete environment[k];
              else environment[k] = v;
            }
            const m = await measure(flags, words.join(" "), environment, true, bin);
            const load = readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
            progress.step(`${words.join(" ")}: idle ${(m.idle / 1024).toFixed(1)} MB, load ${(m.load / 1024).toFixed(1)} MB, bare ${(m.bare / 1024).toFixed(1)} MB, ${m.rate.toFixed(0)} certs/s = ${(m.rate / m.rawRate).toFixed(3)}x raw; ${cpuText(m.cpu)}; load average ${load}`);
            rows.push(
              row({ name: `module certificates, ${words.join(" ")}`, value: m.rate, unit: "cert/s", reference: { name: "SoftHSM raw, same rounds", value: m.rawRate }, target: 0.25, source: "issue 12 (certificate factory)" }),
              row({ name: `peak RSS idle, ${words.join(" ")}`, value: m.idle / 1024, unit: "MB", reference: { name: "target ceiling", value: 60 }, target: 1, higherIsBetter: false, source: SOURCE }),
              row({ name: `peak RSS under load, ${words.join(" ")}`, value: m.load / 1024, unit: "MB", reference: { name: "target ceiling", value: 60 }, target: 1, higherIsBetter: false, source: SOURCE }),
            );
          }
          return rows;
        }
        const plain = await measure([], "default node flags");
        const unit = await measure(UNIT_NODE_FLAGS, `as edgetrust-identity.service runs it (${UNIT_NODE_FLAGS.join(" ")}, its own bundle)`, unitEnv(UNIT));
        const fresh = await measure([], "default node flags", {}, false);
        const perCert = (m: Measured): string => `${m.engineRequests - m.streamRequests} engine requests for ${m.certs} certificates (the event stream's own re-reads and listings: ${m.streamRequests}; pings not counted)`;
        progress.step(`CPU per certificate: default flags ${cpuText(plain.cpu)}; as the unit runs it ${cpuText(unit.cpu)}; new connections ${cpuText(fresh.cpu)}`);
        progress.step(`engine: ${perCert(plain)}; new connections: ${perCert(fresh)}`);
        progress.step(`rates ${plain.rate.toFixed(0)} and ${unit.rate.toFixed(0)} certs/s; raw ${plain.rawRate.toFixed(0)} / ${unit.rawRate.toFixed(0)} sig/s; RSS idle ${(plain.idle / 1024).toFixed(1)} / ${(unit.idle / 1024).toFixed(1)} MB, load ${(plain.load / 1024).toFixed(1)} / ${(unit.load / 1024).toFixed(1)} MB; bare node ${(plain.bare / 1024).toFixed(1)} / ${(unit.bare / 1024).toFixed(1)} MB; load average ${readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ")}`);
        const mb = (kb: number): number => kb / 1024;
        const ceiling = { name: "target ceiling", value: 60 };
        return [
          row({ name: `module certificates over the workload socket, ${CLIENTS} concurrent keep-alive clients, Edge CA key in SoftHSM; ${perCert(plain)}`, value: plain.rate, unit: "cert/s", reference: { name: `SoftHSM raw ECDSA P-256 (pkcs11js C_SignInit + C_SignAsync loop, ${poolSize} sessions, same key, same run)`, value: plain.rawRate }, target: 0.25, source: "issue 12 (certificate factory)" }),
          row({ name: `same, a new connection per certificate (caller check each time), ${CLIENTS} concurrent clients; ${perCert(fresh)}`, value: fresh.rate, unit: "cert/s", reference: { name: "SoftHSM raw, same rounds", value: fresh.rawRate }, target: 0.25, source: "issue 12 (certificate factory)" }),
          row({ name: `module certificates over the workload socket, ${CLIENTS} clients, Edge CA key in SoftHSM`, value: plain.rate, unit: "cert/s", reference: { name: `SoftHSM raw ECDSA P-256 (pkcs11js C_SignAsync, ${poolSize} sessions, same key)`, value: plain.rawRate }, target: 0.5, source: SOURCE }),
          row({ name: `same, daemon with ${UNIT_NODE_FLAGS.join(" ")}`, value: unit.rate, unit: "cert/s", reference: { name: "SoftHSM raw, same rounds", value: unit.rawRate }, target: 0.5, source: SOURCE }),
          row({ name: "identity daemon peak RSS after start (idle), default node flags", value: mb(plain.idle), unit: "MB", reference: ceiling, target: 1, higherIsBetter: false, source: SOURCE }),
          row({ name: "identity daemon peak RSS under that load, default node flags", value: mb(plain.load), unit: "MB", reference: ceiling, target: 1, higherIsBetter: false, source: SOURCE }),
          row({ name: `identity daemon peak RSS after start (idle), as edgetrust-identity.service runs it (${UNIT_NODE_FLAGS.join(" ")})`, value: mb(unit.idle), unit: "MB", reference: ceiling, target: 1, higherIsBetter: false, source: SOURCE }),
          row({ name: `identity daemon peak RSS under that load, as edgetrust-identity.service runs it`, value: mb(unit.load), unit: "MB", reference: ceiling, target: 1, higherIsBetter: false, source: SOURCE }),
          // Beside a bare node with the same flags, same run: the target as a ratio (ceiling / bare node).
          row({ name: "(context) identity daemon idle, as the unit runs it, vs a bare node with the same flags (ratio = node / daemon; target = node / 60 MB)", value: mb(unit.idle), unit: "MB", reference: { name: `bare node ${UNIT_NODE_FLAGS.join(" ")}, same run`, value: mb(unit.bare) }, target: mb(unit.bare) / 60, higherIsBetter: false, source: SOURCE }),
          row({ name: "(context) identity daemon under load, as the unit runs it, vs the same bare node", value: mb(unit.load), unit: "MB", reference: { name: `bare node ${UNIT_NODE_FLAGS.join(" ")}, same run`, value: mb(unit.bare) }, target: mb(unit.bare) / 60, higherIsBetter: false, source: SOURCE }),
        ];
      } finally {
        await raw.close();
      }
    } finally {
      await daemon?.stop().catch(() => undefined);
      await engine.close();
      if (containerId) await docker.removeContainer(containerId).catch(() => undefined);
      await ca.close();
      await tokens.caKeys.close();
      tokens.hsm.cleanup();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
