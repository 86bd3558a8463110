import { execFile, spawn, type ChildProcess } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { EdgeTrustError, freePort } from "../common/index.js";

/**
 * A whole CA fleet on this machine, for the fleet test and bench: a private PostgreSQL cluster (its own data
 * directory and port, so restarting it disturbs nobody), `ca serve` processes, and HAProxy in front of them.
 */
const run = promisify(execFile);
const asRoot = process.getuid?.() === 0;

/** Debian's PostgreSQL server binaries (the newest installed major version), or undefined. */
function postgresBinaries(): string | undefined {
  const base = "/usr/lib/postgresql";
  if (!existsSync(base)) return undefined;
  const versions = readdirSync(base).filter((v) => existsSync(join(base, v, "bin", "initdb"))).sort((a, b) => Number(b) - Number(a));
  return versions[0] ? join(base, versions[0], "bin") : undefined;
}

function haproxyBinary(): string | undefined {
  return ["/usr/sbin/haproxy", "/usr/bin/haproxy"].find((p) => existsSync(p));
}

/** Why the local fleet cannot run here, or undefined when it can. */
export function localFleetUnavailable(): string | undefined {
  if (!postgresBinaries()) return "PostgreSQL server binaries (Debian postgresql) are not installed";
  if (!haproxyBinary()) return "haproxy is not installed (scripts/setup.sh installs it)";
  return undefined;
}

export interface PrivatePostgres {
  url: string;
  port: number;
  dir: string;
  /** `pg_ctl restart -m fast`: every connection is cut, the server is back when this returns. */
  restart(): Promise<void>;
  /** The postmaster and its live backends (for CPU accounting), read from postmaster.pid and /proc. */
  pids(): number[];
  /** `pg_ctl stop -m fast`: the server is down (connections refused) until `start()`. */
  halt(): Promise<void>;
  start(): Promise<void>;
  stop(): Promise<void>;
}

/** initdb + pg_ctl start of a throw-away cluster on a free port (as user postgres when running as root). */
export async function startPrivatePostgres(): Promise<PrivatePostgres> {
  const bin = postgresBinaries();
  if (!bin) throw new EdgeTrustError("UNAVAILABLE", "PostgreSQL server binaries are not installed");
  const dir = mkdtempSync(join(tmpdir(), "et-fleet-pg-"));
  const data = join(dir, "data");
  const pg = (tool: string, args: string[]) => asRoot ? run("runuser", ["-u", "postgres", "--", join(bin, tool), ...args]) : run(join(bin, tool), args);
  if (asRoot) chownSync(dir, Number((await run("id", ["-u", "postgres"])).stdout.trim()), Number((await run("id", ["-g", "postgres"])).stdout.trim()));
  const port = await freePort();
  await pg("initdb", ["-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
  // fsync off: a restart here is always clean (pg_ctl -m fast); only a host crash could lose data, and this is a test cluster.
  const opts = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=300 -c shared_buffers=64MB`;
  await pg("pg_ctl", ["-D", data, "-l", join(dir, "postgres.log"), "-o", opts, "-w", "-t", "60", "start"]);
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`, port, dir,
    restart: async () => { await pg("pg_ctl", ["-D", data, "-l", join(dir, "postgres.log"), "-m", "fast", "-w", "-t", "60", "restart"]); },
    pids: () => {
      try {
        const master = Number(readFileSync(join(data, "postmaster.pid"), "utf8").split("\n")[0]);
        const children = readFileSync(`/proc/${master}/task/${master}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
        return [master, ...children];
      } catch {
        return [];
      }
    },
    halt: async () => { await pg("pg_ctl", ["-D", data, "-m", "fast", "-w", "-t", "60", "stop"]); },
    start: async () => { await pg("pg_ctl", ["-D", data, "-l", join(dir, "postgres.log"), "-o", opts, "-w", "-t", "60", "start"]); },
    stop: async () => {
      await pg("pg_ctl", ["-D", data, "-m", "immediate", "-w", "-t", "30", "stop"]).catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface CaProcess {
  url: string;
  /** The last 4 kB the process wrote to stderr (its pino log at warn and above). */
  log(): string;
  proc: ChildProcess;
  port: number;
  /** SIGTERM and wait (graceful); resolves to the exit code — at once if it has already exited. Still running after 30 s: SIGKILL, and it rejects with the log. */
  stop(): Promise<number | null>;
  /** SIGKILL: the process dies mid-request. */
  kill9(): Promise<void>;
}

/**
 * Node arguments that start the edgetrust CLI before its own arguments (a test passes its source bundle, which starts
 * in a fraction of tsx's time); without them, from source under tsx, from dist otherwise.
 */
export interface CliStart { cli?: string[] }

/** The edgetrust CLI in a child process: node arguments for `argv`. */
function cliChild(argv: string[], start: CliStart = {}): string[] {
  if (start.cli) return [...start.cli, ...argv];
  const here = import.meta.url;
  const underTsx = here.endsWith(".ts");
  const cli = fileURLToPath(new URL(underTsx ? "../cli/index.ts" : "../cli/index.js", here));
  const entry = `import "reflect-metadata"; const { main } = await import(${JSON.stringify(cli)}); process.exitCode = await main(["node", "edgetrust", ...${JSON.stringify(argv)}]);`;
  return [...(underTsx ? ["--import", "tsx"] : []), "--input-type=module", "-e", entry];
}

/** Run one CLI command to its end (e.g. `ca rollover`); resolves to its stdout (killed after `timeoutMs` when given). */
export async function runCli(argv: string[], env: NodeJS.ProcessEnv, start: CliStart & { timeoutMs?: number } = {}): Promise<string> {
  return (await run(process.execPath, cliChild(argv, start), { env: { ...process.env, ...env }, ...(start.timeoutMs ? { timeout: start.timeoutMs } : {}) })).stdout;
}

/**
 * `edgetrust ca serve -c <config>` as a child process; resolves once it listens. One that neither listens nor exits
 * within `startMs` (120 s) is killed and the start rejects with its log.
 */
export async function startCaProcess(config: string, env: NodeJS.ProcessEnv, extraArgs: string[] = [], start: CliStart & { startMs?: number } = {}): Promise<CaProcess> {
  // One process per fleet member unless asked otherwise: the fleet is N processes behind the balancer (and a
  // `node -e` child has no script for cluster workers to re-run).
  const workers = extraArgs.some((a) => a === "--workers" || a.startsWith("--workers=")) ? [] : ["--workers", "1"];
  const proc = spawn(process.execPath, cliChild(["ca", "serve", "-c", config, ...workers, ...extraArgs], start), { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let err = "";
  proc.stderr?.on("data", (c: Buffer) => { err = (err + c.toString()).slice(-4000); });
  const exited = new Promise<number | null>((r) => proc.once("exit", (c) => r(c)));
  const startMs = start.startMs ?? 120_000;
  let startTimer: NodeJS.Timeout | undefined;
  const url = await new Promise<string>((resolve, reject) => {
    let out = "";
    proc.stdout?.on("data", (c: Buffer) => {
      out += c.toString();
      const m = /"listening":"([^"]+)"/.exec(out);
      if (m?.[1]) resolve(m[1]);
    });
    void exited.then((code) => reject(new EdgeTrustError("UNAVAILABLE", `ca serve exited ${code}: ${err.slice(-1500)}`)));
    startTimer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new EdgeTrustError("UNAVAILABLE", `ca serve (pid ${proc.pid}) did not listen within ${startMs} ms: ${err.slice(-1500)}`));
    }, startMs);
  }).finally(() => clearTimeout(startTimer));
  return {
    url, proc, port: Number(new URL(url).port), log: () => err,
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGTERM");
      // ca serve cuts its own graceful shutdown off after 10-15 s; past 30 s something hangs.
      let timer: NodeJS.Timeout | undefined;
      const hung = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          proc.kill("SIGKILL");
          reject(new EdgeTrustError("UNAVAILABLE", `ca serve (pid ${proc.pid}) still running 30 s after SIGTERM: ${err.slice(-1500)}`));
        }, 30_000);
      });
      return Promise.race([exited, hung]).finally(() => clearTimeout(timer));
    },
    kill9: async () => { proc.kill("SIGKILL"); await exited; },
  };
}

export interface Balancer {
  url: string;
  port: number;
  config: string;
  pid: number | undefined;
  /** Graceful reload of the master-worker HAProxy (SIGUSR2): new workers take the listener, old ones finish. */
  reload(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * The HAProxy configuration `deploy/haproxy/edgetrust-ca.cfg` shows (fleet/haproxy.test.ts holds the two equal), for a list of CA processes: TCP mode (TLS ends
 * at each CA process, so renewal stays mTLS end to end), round robin, health checks on GET /healthz over TLS.
 */
export function haproxyConfig(listen: { host: string; port: number }, backends: Array<{ host: string; port: number }>): string {
  return [
    "global",
    "  maxconn 4000",
    "defaults",
    "  mode tcp",
    "  timeout connect 2s",
    "  timeout client 120s",
    "  timeout server 120s",
    "  retries 2",
    "  option redispatch",
    "frontend edgetrust_ca",
    `  bind ${listen.host}:${listen.port}`,
    "  default_backend edgetrust_ca",
    "backend edgetrust_ca",
    "  balance roundrobin",
    "  option httpchk",
    "  http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host localhost",
    "  http-check expect status 200",
    "  timeout check 5s",
    // A busy process answers health checks late: three misses in a row (6 s) before it is taken out; a killed one
    // refuses connections at once, and `retries` + `redispatch` send those to another process.
    "  default-server check check-ssl verify none inter 2s fall 3 rise 2",
    ...backends.map((b, i) => `  server ca${i + 1} ${b.host}:${b.port}`),
    "",
  ].join("\n");
}

/** HAProxy (master-worker, foreground) in front of `backends`; resolves once its listener accepts connections. */
export async function startHaproxy(backends: Array<{ host: string; port: number }>): Promise<Balancer> {
  const bin = haproxyBinary();
  if (!bin) throw new EdgeTrustError("UNAVAILABLE", "haproxy is not installed");
  const dir = mkdtempSync(join(tmpdir(), "et-fleet-haproxy-"));
  const port = await freePort();
  const config = join(dir, "haproxy.cfg");
  writeFileSync(config, haproxyConfig({ host: "127.0.0.1", port }, backends));
  await run(bin, ["-c", "-q", "-f", config]);
  const proc = spawn(bin, ["-W", "-db", "-f", config], { stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  proc.stderr?.on("data", (c: Buffer) => { err = (err + c.toString()).slice(-4000); });
  const exited = new Promise<number | null>((r) => proc.once("exit", (c) => r(c)));
  const { createConnection } = await import("node:net");
  for (let i = 0; ; i++) {
    const ok = await new Promise<boolean>((r) => {
      const s = createConnection({ host: "127.0.0.1", port }, () => { s.destroy(); r(true); });
      s.on("error", () => r(false));
    });
    if (ok) break;
    if (proc.exitCode !== null || i > 100) throw new EdgeTrustError("UNAVAILABLE", `haproxy did not start: ${err}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url: `https://127.0.0.1:${port}`, port, config, pid: proc.pid,
    reload: async () => { proc.kill("SIGUSR2"); await new Promise((r) => setTimeout(r, 500)); },
    stop: async () => {
      if (proc.exitCode === null) proc.kill("SIGTERM");
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Wait until every backend is marked up (a GET /healthz through the balancer per backend is not enough: round robin). */
export async function waitHealthy(url: string, rootPem: string, instances: number, timeoutMs = 60_000): Promise<string[]> {
  const { Agent } = await import("node:https");
  const { call } = await import("./http.js");
  const seen = new Set<string>();
  const end = Date.now() + timeoutMs;
  while (seen.size < instances) {
    if (Date.now() > end) throw new EdgeTrustError("UNAVAILABLE", `only ${seen.size} of ${instances} CA processes answered through ${url}`);
    const a = new Agent({ keepAlive: false, ca: rootPem });
    try {
      const r = await call(a, "GET", `${url}/healthz`, { timeoutMs: 5000 });
      if (r.status === 200 && r.instance) seen.add(r.instance);
    } catch {
      await new Promise((r) => setTimeout(r, 200));
    } finally {
      a.destroy();
    }
  }
  return [...seen].sort();
}
