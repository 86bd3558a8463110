import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Command } from "commander";
import { action } from "../common/index.js";

/** `edgetrust demo`: the attested boot flow end to end on this machine (cli/demo/scenario.ts), then the refusals. */
export function demoCommand(): Command {
  return new Command("demo")
    .description("Run the attested boot flow end to end on embedded defaults (SQLite, SoftHSM, local dockerd + registry, TLS Mosquitto), then the refusals")
    .option("--json", "print the step results as JSON")
    .option("--keep", "leave ca-service, the device daemon, Mosquitto and the containers running; print how to stop them")
    .option("--dir <dir>", "state directory (default .edgetrust-demo/run-<time>)")
    .action(action(async (opts: { json?: boolean; keep?: boolean; dir?: string }) => {
      const { engineConfig, SOFTHSM_MODULE, ENGINE_ID } = await import("../hsm/index.js");
      const { engineRegistered, repoRoot } = await import("./demo/procs.js");
      if (!engineRegistered(ENGINE_ID)) {
        // TLS keys stay in SoftHSM through the OpenSSL pkcs11 engine, which Node registers only from OPENSSL_CONF at
        // start: run the demo again in a child that has it.
        const dir = join(repoRoot(), ".edgetrust-demo");
        mkdirSync(dir, { recursive: true });
        const conf = join(dir, `openssl-${process.pid}.cnf`);
        writeFileSync(conf, engineConfig({ module: SOFTHSM_MODULE }));
        const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], { stdio: "inherit", env: { ...process.env, OPENSSL_CONF: conf } });
        const code = await new Promise<number>((r) => child.on("exit", (c, sig) => r(c ?? (sig ? 1 : 0))));
        const { rmSync } = await import("node:fs");
        rmSync(conf, { force: true });
        process.exitCode = code;
        return;
      }
      const { runDemo } = await import("./demo/scenario.js");
      const { printStep, printSummary } = await import("./demo/print.js");
      const json = Boolean(opts.json);
      const out = (l: string) => process.stderr.write(`${l}\n`);
      if (!json) out("edgetrust demo — the whole system on this machine, step by step\n");
      const result = await runDemo({
        ...(opts.dir ? { baseDir: opts.dir } : {}),
        keep: Boolean(opts.keep),
        progress: (l) => out(`  … ${l}`),
        onStep: (s) => { if (!json) process.stdout.write(printStep(s) + "\n"); },
      });
      if (json) process.stdout.write(JSON.stringify(result, null, 2) + "\n");
      else process.stdout.write(printSummary(result) + "\n");
      if (!result.ok) process.exitCode = 1;
    }));
}
