import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SOFTHSM_MODULE } from "../hsm/index.js";
import { runCli } from "../test/fixtures/cli.js";
import { softHsm, startCaServe, TEST_PIN, within, type SoftHsm } from "./test-helpers.js";

/**
 * How `ca serve --workers 2` ends when its start does not complete (real processes from the CLI bundle, SoftHSM,
 * SQLite): a worker failing before it listens stops the service with its error, and SIGTERM while the workers load
 * stops it with exit 0. Both used to leave it running for good or for the 15 s kill: the failed worker reported and
 * stayed alive (its IPC channel held it), and a shutdown sent to a worker still loading its code was lost.
 */

/** Processes whose command line names `needle` (the test's private config path): the primary and its workers. */
function processesNaming(needle: string): number[] {
  const pids: number[] = [];
  for (const e of readdirSync("/proc")) {
    if (!/^\d+$/.test(e)) continue;
    try {
      if (readFileSync(`/proc/${e}/cmdline`, "utf8").includes(needle)) pids.push(Number(e));
    } catch {
      // exited while we looked
    }
  }
  return pids;
}

/** Children of `pid` (from /proc/<n>/stat: the field after the parenthesised name is the state, then the parent). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const e of readdirSync("/proc")) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, "utf8");
      if (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === pid) out.push(Number(e));
    } catch {
      // exited while we looked
    }
  }
  return out;
}

describe("ca serve --workers 2: a start that does not complete", () => {
  let hsm: SoftHsm;
  let dir: string;
  const env = (): NodeJS.ProcessEnv => ({ ...process.env, SOFTHSM2_CONF: hsm.conf, CA_TEST_PIN: TEST_PIN });
  const config = (name: string, extra: string[] = []): string => {
    const file = join(dir, `${name}.yaml`);
    writeFileSync(file, [
      "log:", "  level: info",
      "hsm:", "  backend: pkcs11", `  module: ${SOFTHSM_MODULE}`, `  tokenLabel: ${hsm.tokenLabel}`, "  pinEnv: CA_TEST_PIN",
      "ca:", "  host: 127.0.0.1", "  port: 0", "  revocationPort: -1", `  sqlitePath: ${join(dir, "ca.db")}`, `  identityFile: ${join(dir, "ca-identity.json")}`,
      ...extra, "",
    ].join("\n"));
    return file;
  };

  beforeAll(async () => {
    hsm = softHsm("et-cluster-start");
    dir = mkdtempSync(join(tmpdir(), "et-cluster-start-"));
    const init = await runCli(["ca", "init", "-c", config("init"), "--json"], env(), 90_000);
    expect(init.code, init.stderr).toBe(0);
  }, 120_000);

  afterAll(() => {
    hsm?.cleanup();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("a worker failing before it listens stops the service: exit 1 with the worker's error, no process left", async () => {
    // Files named in the config are read by each worker, not by the primary: every worker fails, the primary starts.
    const cfg = config("missing-tls", [`  tlsCert: ${join(dir, "missing.pem")}`, `  tlsKey: ${join(dir, "missing.key")}`]);
    const server = startCaServe(["-c", cfg, "--workers", "2"], env(), { startMs: 60_000 });
    await expect(server.listening).rejects.toThrow(/exited 1 before it listened/);
    expect(await within(server.exited, 10_000, "exit")).toBe(1);
    expect(server.stderr()).toContain(`no such file or directory, open '${join(dir, "missing.pem")}'`);
    expect(server.stderr()).toMatch(/ca serve worker \d+ \(pid \d+\) exited with code 1 before it listened/);
    expect(processesNaming(cfg)).toEqual([]);
  }, 120_000);

  it("SIGTERM while the workers load their code: exit 0, nothing announced, no process left", async () => {
    const cfg = config("term-at-start");
    const server = startCaServe(["-c", cfg, "--workers", "2"], env(), { startMs: 60_000 });
    const pid = server.proc.pid ?? -1;
    // The primary has run the start-up ceremony and forked both workers; they are still loading the bundle.
    await within((async () => {
      while (childrenOf(pid).length < 2) {
        if (server.proc.exitCode !== null) throw new Error(`ca serve exited ${server.proc.exitCode}: ${server.stderr()}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    })(), 60_000, "both workers forked", () => server.stderr());
    expect(await server.stop({ ms: 30_000 })).toBe(0);
    await expect(server.listening).rejects.toThrow(/exited 0 before it listened/);
    expect(server.stderr()).toContain('"reason":"SIGTERM"');
    expect(processesNaming(cfg)).toEqual([]);
  }, 120_000);
});
