import { execFile, spawn } from "node:child_process";
import { existsSync, readFileSync, statSync } from "node:fs";
import { resolve } from "node:path";
import { promisify } from "node:util";
import { REPO_ROOT } from "./paths.js";


/** How a systemd unit in deploy/systemd/ starts its daemon, read from the unit file itself. */
interface UnitCommand {
  /** node's own flags from ExecStart (between `node` and the script). */
  nodeFlags: string[];
  /** The command's arguments after the script, e.g. ["device", "run", "--config", "/etc/edgetrust/edgetrust.yaml"]. */
  args: string[];
  /** Environment= settings, NODE_OPTIONS included. */
  env: Record<string, string>;
}

/**
 * Parse `deploy/systemd/edgetrust-<name>.service` so benchmarks and tests run a daemon exactly as its unit does
 * (flags, environment): a flag changed in the unit changes what is measured, and a flag node refuses fails there.
 */
export function unitCommand(name: "identity" | "agent" | "hub"): UnitCommand {
  const file = resolve(REPO_ROOT, "deploy", "systemd", `edgetrust-${name}.service`);
  const env: Record<string, string> = {};
  let exec: string | undefined;
  for (const raw of readFileSync(file, "utf8").split("\n")) {
    const line = raw.trim();
    const m = /^(Environment|ExecStart)=(.*)$/.exec(line);
    if (!m) continue;
    if (m[1] === "ExecStart") {
      exec = m[2];
      continue;
    }
    const v = (m[2] as string).replace(/^"(.*)"$/, "$1");
    const eq = v.indexOf("=");
    if (eq > 0) env[v.slice(0, eq)] = v.slice(eq + 1);
  }
  const words = (exec ?? "").split(/\s+/).filter(Boolean);
  const node = words.findIndex((w) => w === "node" || w.endsWith("/node"));
  const script = words.findIndex((w, i) => i > node && !w.startsWith("-"));
  if (node < 0 || script < 0) throw new Error(`${file}: ExecStart does not run node with a script: ${exec ?? "(none)"}`);
  return { nodeFlags: words.slice(node + 1, script), args: words.slice(script + 1), env };
}

/** Peak (VmHWM) and current (VmRSS) resident memory of a process, in MB, from the kernel. */
function residentMb(pid: number): { peak: number; now: number } {
  const st = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(st)?.[1] ?? NaN);
  return { peak: kb("VmHWM") / 1024, now: kb("VmRSS") / 1024 };
}

/**
 * The reference for a daemon's memory: a bare `node` with the same flags and environment, idling on a timer, measured
 * in the same run (what the node runtime itself costs on this machine, this build).
 */
export async function bareNodeMb(nodeFlags: string[], env: Record<string, string> = {}): Promise<{ peak: number; now: number }> {
  const p = spawn(process.execPath, [...nodeFlags, "-e", "setInterval(() => {}, 1000)"], { stdio: "ignore", env: { ...process.env, ...env } });
  try {
    await new Promise((r) => setTimeout(r, 1500));
    if (p.exitCode !== null || p.pid === undefined) throw new Error(`bare node ${nodeFlags.join(" ")} exited ${p.exitCode}`);
    return residentMb(p.pid);
  } finally {
    p.kill("SIGTERM");
  }
}

/**
 * Preloaded into a measured command (`--import`, so the command itself runs unchanged): as the process exits it prints
 * its own peak resident memory, VmHWM of /proc/self/status. Not `process.resourceUsage().maxRSS`: Linux carries
 * ru_maxrss through fork+exec (the exec'd image starts from the forking parent's high-water mark), so a child of a
 * 85 MB bench process reports at least 85 MB whatever it does — the agent and a bare node then print the same figure.
 * VmHWM belongs to the process's own address space, which exec makes new.
 */
const REPORT_PEAK_RSS = `data:text/javascript,${encodeURIComponent(
  'import { readFileSync } from "node:fs";\n' +
    'process.on("exit", () => process.stdout.write(`\\nVMHWM_KB ${/^VmHWM:\\s+(\\d+)/m.exec(readFileSync("/proc/self/status", "utf8"))[1]}\\n`));',
)}`;

/**
 * Peak resident memory (MB) of one process run to completion: `node <nodeFlags> <script> <args>`, or, with no script,
 * a bare node with those flags (`-e ""`), measured by the same preload. Only that process: a child it spawned would not
 * count (the agent spawns none). Rejects when the command fails or prints no figure.
 */
export async function peakRssMbOfRun(opts: { script?: string; args?: string[]; nodeFlags?: string[]; env?: Record<string, string>; cwd?: string }): Promise<number> {
  const run = opts.script ? [opts.script, ...(opts.args ?? [])] : ["-e", ""];
  const { stdout } = await promisify(execFile)(process.execPath, [...(opts.nodeFlags ?? []), "--import", REPORT_PEAK_RSS, ...run], {
    cwd: opts.cwd, env: { ...process.env, ...opts.env }, maxBuffer: 1 << 24,
  });
  const m = /VMHWM_KB (\d+)/.exec(stdout);
  if (!m?.[1]) throw new Error(`no peak RSS figure from ${run.slice(0, 3).join(" ")}: ${stdout.slice(-200)}`);
  return Number(m[1]) / 1024;
}

/** The unit's environment for running it here: without the device's install path and OpenSSL engine configuration. */
export function unitEnv(u: UnitCommand): Record<string, string> {
  const { EDGETRUST_HOME: _h, OPENSSL_CONF: _o, ...rest } = u.env;
  return rest;
}

/**
 * The bundle bin/edgetrust.js runs for `edgetrust <daemon>` (same rule: present and not older than the tsc build);
 * without it a unit measurement would measure the module tree, so the benchmark stops and says how to build it.
 */
export function assertDaemonBundle(daemon: "device" | "agent" | "hub"): void {
  const bundle = resolve(REPO_ROOT, "dist", "daemons", `${daemon}.mjs`);
  const tree = resolve(REPO_ROOT, "dist", "cli", "index.js");
  if (!existsSync(bundle) || statSync(bundle).mtimeMs < statSync(tree).mtimeMs) {
    throw new Error(`${bundle} is missing or older than the tsc build: run \`make build\` (tsc, then scripts/bundle.mjs) first`);
  }
}
