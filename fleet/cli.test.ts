import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { cliBundleArgs } from "../test/fixtures/cli-bundle.js";
import { localFleetMissing } from "./local-fleet.js";

/**
 * Issue 13, the commands as an operator runs them: `edgetrust fleet up` starts a fleet (private PostgreSQL, SoftHSM,
 * `ca init`, N `ca serve`, HAProxy) and `edgetrust fleet simulate` drives devices through it from another process,
 * printing its table. The 10,000-device run in fleet/README.md is this, at scale.
 */
const ROOT = resolve(import.meta.dirname, "..");
const missing = localFleetMissing();
if (missing) process.stderr.write(`fleet/cli.test.ts: skipped: ${missing}\n`);

/** `fleet up` from the sources under tsx: it starts `ca init` / `ca serve` the same way (a bundle has no sibling cli/). */
function tsxCli(argv: string[]): string[] {
  const cli = join(ROOT, "cli", "index.ts");
  const entry = `import "reflect-metadata"; const { main } = await import(${JSON.stringify(cli)}); process.exitCode = await main(["node", "edgetrust", ...${JSON.stringify(argv)}]);`;
  return ["--import", "tsx", "--input-type=module", "-e", entry];
}

interface Run { code: number; stdout: string; stderr: string }
function cli(argv: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 120_000): Promise<Run> {
  return new Promise((done) => {
    execFile(process.execPath, [...cliBundleArgs(), ...argv], { env: { ...process.env, ...env }, timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      done({ code: err ? (typeof err.code === "number" ? err.code : -1) : 0, stdout, stderr });
    });
  });
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};
const refuses = (port: number) => new Promise<boolean>((r) => {
  const s = createConnection({ host: "127.0.0.1", port }, () => { s.destroy(); r(false); });
  s.on("error", () => r(true));
});

interface UpInfo { url: string; rootFile: string; adminTokenFile: string; databaseUrl: string; referencesFile: string; config: string; dir: string; processes: Array<{ url: string; pid: number }>; simulate: string }

describe.skipIf(Boolean(missing))("edgetrust fleet up + edgetrust fleet simulate (the command line against running processes)", () => {
  let dir: string;
  let up: ChildProcess;
  let upExit: Promise<number | null>;
  let upErr = "";
  let upOut = "";
  let info: UpInfo;
  let admin: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "et-fleet-cli-"));
    up = spawn(process.execPath, tsxCli(["fleet", "up", "--processes", "2", "--dir", join(dir, "fleet"), "--json"]), { stdio: ["ignore", "pipe", "pipe"] });
    upExit = new Promise((r) => up.once("exit", (c) => r(c)));
    up.stderr?.on("data", (c: Buffer) => { upErr += c.toString(); });
    info = await new Promise<UpInfo>((resolveInfo, reject) => {
      const timer = setTimeout(() => reject(new Error(`fleet up printed nothing within 240 s: ${upErr.slice(-2000)}`)), 240_000);
      up.stdout?.on("data", (c: Buffer) => {
        upOut += c.toString();
        // Its --json is one line (the help says so): the first line is the whole answer.
        const nl = upOut.indexOf("\n");
        if (nl >= 0) {
          clearTimeout(timer);
          try {
            resolveInfo(JSON.parse(upOut.slice(0, nl)) as UpInfo);
          } catch (e) {
            reject(new Error(`fleet up --json: the first line is not JSON (${(e as Error).message}): ${upOut.slice(0, 200)}`));
          }
        }
      });
      void upExit.then((code) => { clearTimeout(timer); reject(new Error(`fleet up exited ${code}: ${upErr.slice(-2000)}`)); });
    });
    admin = readFileSync(info.adminTokenFile, "utf8").trim();
  }, 300_000);

  afterAll(async () => {
    if (up && up.exitCode === null && up.signalCode === null) {
      up.kill("SIGTERM");
      await upExit;
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("`fleet up` says where everything is; secrets stay in 0600 files, never on its output; a second `fleet up` on the same --dir is refused", async () => {
    expect(info.processes).toHaveLength(2);
    for (const p of info.processes) expect(alive(p.pid)).toBe(true);
    expect(info.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    for (const f of [info.adminTokenFile, join(info.dir, "hsm-pin")]) expect(statSync(f).mode & 0o777).toBe(0o600);
    expect(admin).toMatch(/^et_/);
    expect(upOut + upErr).not.toContain(admin);
    expect(upOut + upErr).not.toContain(readFileSync(join(info.dir, "hsm-pin"), "utf8").trim());
    expect(info.simulate).toContain(`--ca-url ${info.url}`);
    const again = await cli(["fleet", "up", "--processes", "1", "--dir", info.dir]);
    expect(again.code).not.toBe(0);
    expect(again.stderr.trim().split("\n")).toHaveLength(1);
    expect(again.stderr).toMatch(/already holds a fleet/);
  }, 60_000);

  it("`fleet simulate` against it: every device's whole life through HAProxy, evidence on the other process, the table and the store check", async () => {
    const r = await cli([
      "fleet", "simulate", "--ca-url", info.url, "--ca-cert", info.rootFile, "--references", info.referencesFile,
      "--database-url", info.databaseUrl, "--devices", "6", "--concurrency", "3", "--revoke-percent", "50",
    ], { EDGETRUST_ADMIN_TOKEN: admin }, 240_000);
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    const row = (label: string) => new RegExp(`^${label.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\s{2,}(.*)$`, "m").exec(r.stdout)?.[1];
    expect(row("devices")).toBe("6 (keys: software)");
    expect(row("completed (whole life, no error)")).toBe("6");
    expect(row("registered")).toBe("6");
    expect(row("attested")).toBe("6 affirming");
    expect(row("  nonce and evidence on different CA processes")).toBe("6 (processes seen: 2)");
    expect(row("deployment fetched (mTLS)")).toBe("6");
    expect(row("reported")).toBe("6");
    expect(row("renewed")).toBe("6");
    expect(row("revoked, then refused as expected")).toBe("3 of 3");
    expect(row("errors")).toBe("0");
    expect(row("store: enrollments / registrations / certificates")).toBe("6 / 6 / 12");
    expect(row("store: duplicated certificates / lost / undelivered")).toBe("0 / 0 / 0");
    expect(row("store: reports (duplicated / lost)")).toBe("6 (0 / 0)");
    expect(row("store: audit chain")).toMatch(/^verifies \(\d+ entries\)$/);
    for (const step of ["enroll", "register", "attest", "deployment", "report", "renew", "revoke", "refused"]) {
      expect(r.stdout).toMatch(new RegExp(`^  ${step}\\s+n=\\d+\\s+p50 [\\d.]+ ms\\s+p99 [\\d.]+ ms$`, "m"));
    }
    // Progress on stderr (not a TTY: a line per 10 %), ending at all devices.
    expect(r.stderr).toMatch(/fleet 6\/6 devices, 0 errors/);
  }, 300_000);

  it("a run whose devices fail exits 1 with the errors by step and code; bad arguments are one line and exit 1", async () => {
    const failed = await cli([
      "fleet", "simulate", "--ca-url", info.url, "--ca-cert", info.rootFile, "--devices", "2", "--line-token", "etl_not-a-line-token", "--max-attempts", "2", "--no-progress",
    ], { EDGETRUST_ADMIN_TOKEN: "" });
    expect(failed.code).toBe(1);
    expect(failed.stdout).toMatch(/^errors\s+2: enroll:UNAUTHENTICATED ×2$/m);
    expect(failed.stdout).not.toContain("etl_not-a-line-token");
    for (const [args, message] of [
      [["--devices", "0"], /--devices must be an integer from 1 to 10000000/],
      [["--ca-cert", join(dir, "missing.pem")], /cannot read CA certificate .*missing\.pem/],
    ] as Array<[string[], RegExp]>) {
      const r = await cli(["fleet", "simulate", "--ca-url", info.url, "--ca-cert", info.rootFile, ...args]);
      expect(r.code).toBe(1);
      expect(r.stderr.trim().split("\n")).toHaveLength(1);
      expect(r.stderr).toMatch(message);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    }
  }, 120_000);

  it("SIGTERM stops every part: the CA processes, HAProxy and PostgreSQL", async () => {
    const pgPort = Number(new URL(info.databaseUrl).port);
    const lbPort = Number(new URL(info.url).port);
    up.kill("SIGTERM");
    expect(await upExit).toBe(0);
    for (const p of info.processes) expect(alive(p.pid)).toBe(false);
    expect(await refuses(lbPort)).toBe(true);
    expect(await refuses(pgPort)).toBe(true);
    expect(existsSync(info.config)).toBe(true);
  }, 120_000);
});
