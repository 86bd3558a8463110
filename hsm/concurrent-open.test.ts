import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SOFTHSM_MODULE, createSoftHsmDir, initToken, type SoftHsmDir } from "./token-setup.js";

/**
 * Two processes opening one SoftHSM token at once (as `ca serve --workers` starts its workers): every login rewrites
 * the token's file, and a process reading it meanwhile did not find the token ("tokens present: none") or failed its
 * login with CKR_GENERAL_ERROR — 18 of 80 opens in a run of this loop before the key store tried again.
 */
const CHILD = fileURLToPath(new URL("./testdata/open-loop.ts", import.meta.url));
const ROOT = fileURLToPath(new URL("..", import.meta.url));
const TOKEN = "et-concurrent";
const PIN = "concurrent-pin-5521";
const OPENS = 30;

interface Report { opens: number; failures: string[]; retries: number }

interface Loop { ready: Promise<void>; go(): void; report: Promise<Report> }

function openLoop(conf: string): Loop {
  const p = spawn(process.execPath, ["--import", "tsx", CHILD], {
    cwd: ROOT, env: { ...process.env, SOFTHSM2_CONF: conf, TOKEN, PIN, OPENS: String(OPENS) }, stdio: ["pipe", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  p.stderr.on("data", (c: Buffer) => { err += c.toString(); });
  const timer = setTimeout(() => p.kill("SIGKILL"), 150_000);
  const exited = new Promise<string>((resolve) => p.on("exit", (code, signal) => { clearTimeout(timer); resolve(`exited ${code ?? signal}: ${err.slice(-2000)}`); }));
  const ready = new Promise<void>((resolve, reject) => {
    p.stdout.on("data", (c: Buffer) => {
      out += c.toString();
      if (out.startsWith("ready\n")) resolve();
    });
    void exited.then((why) => reject(new Error(`open loop ${why}`)));
  });
  const report = exited.then((why) => {
    const line = out.split("\n").find((l) => l.startsWith("{"));
    if (!line) throw new Error(`open loop ${why} without a report`);
    return JSON.parse(line) as Report;
  });
  return { ready, go: () => p.stdin.write("go\n"), report };
}

describe("SoftHSM: two processes opening one token at once", () => {
  let hsm: SoftHsmDir;

  beforeAll(() => {
    hsm = createSoftHsmDir();
    initToken({ module: SOFTHSM_MODULE, label: TOKEN, soPin: `so-${PIN}`, userPin: PIN });
  });

  afterAll(() => hsm?.cleanup());

  it(`every one of ${OPENS} opens in each process finds the token and logs in`, async () => {
    const loops = [openLoop(hsm.conf), openLoop(hsm.conf)];
    await Promise.all(loops.map((l) => l.ready));
    for (const l of loops) l.go();
    const reports = await Promise.all(loops.map((l) => l.report));
    process.stderr.write(`concurrent-open: ${reports.map((r) => `${r.opens} opens, ${r.retries} retried, ${r.failures.length} failed`).join("; ")}\n`);
    for (const r of reports) {
      expect(r.failures).toEqual([]);
      expect(r.opens).toBe(OPENS);
    }
  }, 180_000);
});
