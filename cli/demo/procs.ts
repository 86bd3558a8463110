/**
 * Processes the demo starts: `edgetrust …` children (the CA and the device identity daemon are their own processes in
 * real life), Mosquitto, the docker CLI. Everything is async: the hub and agent in this process keep serving meanwhile.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { DOCKER_SOCKET } from "../../dev-images/index.js";

const execFileAsync = promisify(execFile);

/** The source tree root (the folder with package.json), from the sources or from dist/. */
export function repoRoot(): string {
  for (let d = dirname(fileURLToPath(import.meta.url)); ; d = dirname(d)) {
    if (existsSync(join(d, "package.json")) && existsSync(join(d, "bin", "edgetrust.js"))) return d;
    if (dirname(d) === d) throw new Error("source tree root not found");
  }
}

/** How to run `edgetrust`: the built bin when this runs from dist/, else the sources through tsx (tests). */
function edgetrustArgv(args: string[]): string[] {
  const root = repoRoot();
  if (!import.meta.url.endsWith(".ts")) return [join(root, "bin", "edgetrust.js"), ...args];
  const entry = `const { main } = await import(${JSON.stringify(join(root, "cli/index.ts"))}); process.exitCode = await main(["node", "edgetrust", ...process.argv.slice(1)]);`;
  return ["--import", "tsx", "--input-type=module", "-e", entry, "--", ...args];
}

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run `edgetrust <args>` to completion. */
export function edgetrust(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, edgetrustArgv(args), { cwd: repoRoot(), env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    p.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    p.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

/** `edgetrust <args>` that must succeed and print JSON. */
export async function edgetrustJson<T>(args: string[], env: NodeJS.ProcessEnv = {}): Promise<T> {
  const r = await edgetrust(args, env);
  if (r.code !== 0) throw new Error(`edgetrust ${args.slice(0, 3).join(" ")} exited ${r.code}: ${lastLines(r.stderr)}`);
  return JSON.parse(r.stdout) as T;
}

export function lastLines(text: string, n = 3): string {
  return text.trim().split("\n").slice(-n).join(" | ");
}

/**
 * A long-running child, detached (its own process group) with stdout+stderr appended to a log file: it outlives the
 * demo process when asked to (--keep), and no pipe ties it to this one.
 */
export class Daemon {
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(readonly name: string, readonly proc: ChildProcess, readonly logFile: string) {
    this.exited = new Promise((r) => proc.once("exit", (code, signal) => r({ code, signal })));
  }

  get pid(): number | undefined {
    return this.proc.pid;
  }

  /** The last 64 KiB of its log. */
  output(): string {
    try {
      const size = statSync(this.logFile).size;
      const fd = openSync(this.logFile, "r");
      try {
        const len = Math.min(size, 65536);
        const buf = Buffer.alloc(len);
        readSync(fd, buf, 0, len, size - len);
        return buf.toString("utf8");
      } finally {
        closeSync(fd);
      }
    } catch {
      return "";
    }
  }

  running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Resolves with the first match of `re` in the output; rejects when the process exits first or after `ms`. */
  async waitFor(re: RegExp, what: string, ms = 60_000): Promise<RegExpMatchArray> {
    const deadline = Date.now() + ms;
    for (;;) {
      const text = this.output();
      const m = text.match(re);
      if (m) return m;
      if (!this.running()) throw new Error(`${this.name} exited before ${what}: ${lastLines(text)} (log: ${this.logFile})`);
      if (Date.now() > deadline) throw new Error(`${this.name}: timed out waiting for ${what}: ${lastLines(text)} (log: ${this.logFile})`);
      await sleep(100);
    }
  }

  /** SIGTERM, then SIGKILL after `ms`. */
  async stop(ms = 15_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.running()) {
      this.proc.kill("SIGTERM");
      const t = setTimeout(() => this.proc.kill("SIGKILL"), ms);
      const r = await this.exited;
      clearTimeout(t);
      return r;
    }
    return this.exited;
  }
}

function spawnDetached(name: string, cmd: string, args: string[], env: NodeJS.ProcessEnv, logFile: string): Daemon {
  mkdirSync(dirname(logFile), { recursive: true });
  const fd = openSync(logFile, "a", 0o600);
  try {
    const proc = spawn(cmd, args, { cwd: repoRoot(), env, stdio: ["ignore", fd, fd], detached: true });
    // Not waited for by this process's event loop: the demo stops it explicitly, or leaves it running (--keep).
    proc.unref();
    return new Daemon(name, proc, logFile);
  } finally {
    closeSync(fd);
  }
}

/** `edgetrust <args>` as a long-running detached child logging to `logFile`. */
export function startEdgetrust(name: string, args: string[], env: NodeJS.ProcessEnv, logFile: string): Daemon {
  return spawnDetached(name, process.execPath, edgetrustArgv(args), { ...process.env, ...env }, logFile);
}

/** A plain program (Mosquitto, …) without this process's engine OPENSSL_CONF, detached, logging to `logFile`. */
export function startProcess(name: string, cmd: string, args: string[], logFile: string): Daemon {
  const env = { ...process.env };
  delete env.OPENSSL_CONF;
  return spawnDetached(name, cmd, args, env, logFile);
}

export async function docker(args: string[]): Promise<string> {
  const { stdout } = await execFileAsync("docker", args, { env: { ...process.env, DOCKER_HOST: `unix://${DOCKER_SOCKET}` }, encoding: "utf8", timeout: 180_000, maxBuffer: 16 * 1024 * 1024 });
  return stdout;
}

/** A plain tool (openssl, …) without this process's engine OPENSSL_CONF. */
export async function run(cmd: string, args: string[], cwd?: string): Promise<string> {
  const env = { ...process.env };
  delete env.OPENSSL_CONF;
  const { stdout } = await execFileAsync(cmd, args, { encoding: "utf8", timeout: 60_000, env, ...(cwd ? { cwd } : {}) });
  return stdout;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Poll `probe` until it returns something (bounded). */
export async function until<T>(what: string, probe: () => T | undefined | false | Promise<T | undefined | false>, ms = 60_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(150);
  }
}


/** True when this process started with OPENSSL_CONF registering the pkcs11 engine (Node reads it only at start). */
export function engineRegistered(engineId: string, env: NodeJS.ProcessEnv = process.env): boolean {
  const conf = env.OPENSSL_CONF;
  if (!conf || !existsSync(conf)) return false;
  return new RegExp(`^\\s*engine_id\\s*=\\s*${engineId}\\s*$`, "m").test(readFileSync(conf, "utf8"));
}
