import "reflect-metadata";
import { fileURLToPath } from "node:url";
import type { Command } from "commander";
import type { ServeExtension } from "../ca-service/cli.js";
import type { EdgeTrustConfigFile } from "./config-schema.js";

/** The demo's result (`edgetrust demo --json`), for the end-to-end test that runs it. */
export type { DemoResult, StepResult } from "./demo/scenario.js";
import { readConfig, root, runProgram, type Entry } from "./program.js";

/** `ca serve` also serves the security console (issue 16) unless `console.enabled: false`; loaded only then. */
const serveConsole: ServeExtension<EdgeTrustConfigFile> = async (app, { ca, store, config }) => {
  if (!config.console.enabled) return;
  const { consolePlugin } = await import("../console/index.js");
  await app.register(consolePlugin, { ca, store, caConfig: config.ca, console: config.console });
};

/** This command tree as a script file (cli/main), for `ca serve --workers` started from `node -e` code. */
function cliScript(): string {
  return fileURLToPath(new URL(import.meta.url.endsWith(".ts") ? "./main.ts" : "./main.js", import.meta.url));
}

/**
 * Every command, loaded only when it runs: a daemon started as `edgetrust agent run` does not carry the CA's
 * database drivers or the hub's broker in its memory. Descriptions live here so `edgetrust --help` loads nothing.
 * The three daemons (device, agent, hub) also have their own bundles with only their command (cli/daemons/).
 */
const COMMANDS: Record<string, Entry> = {
  hsm: { description: "Key store: PKCS#11 tokens (SoftHSM2, TPM, HSM) and the development software store", load: async () => (await import("../hsm/cli.js")).hsmCommand(await readConfig()) },
  "certs-dev": { description: "Development PKI generator (never for production)", load: async () => (await import("../certs-dev/cli.js")).certsDevCommand(await readConfig()) },
  config: { description: "Show the configuration file format and its documented defaults", load: async () => (await import("./config.js")).configCommand() },
  demo: { description: "Run the attested boot flow end to end on embedded defaults", load: async () => (await import("./demo.js")).demoCommand() },
  policy: { description: "Policy files: check, explain, test", load: async () => (await import("../policy/cli.js")).policyCommand(await readConfig()) },
  manifest: { description: "Deployment manifests: sign, verify", load: async () => (await import("../policy/cli.js")).manifestCommand(await readConfig()) },
  hub: { description: "Edge hub: mTLS MQTT broker for attested modules and leaf devices", load: async () => (await import("../edge-hub/cli.js")).hubCommand(await readConfig()) },
  agent: { description: "Edge agent: verify the deployment manifest, start attested modules, supervise them", load: async () => (await import("../edge-agent/cli.js")).agentCommand(await readConfig()) },
  ca: { description: "Cloud CA: init, serve, issue, revoke, audit", load: async () => (await import("../ca-service/cli.js")).caCommand(await readConfig(), { serveExtensions: [serveConsole], workerEntry: cliScript() }) },
  device: { description: "Device identity daemon: provision, run, status, attest", load: async () => (await import("../device-identity/cli.js")).deviceCommand(await readConfig()) },
  fleet: { description: "Fleet simulator: drive simulated devices through their life against a CA", load: async () => (await import("../fleet/cli.js")).fleetCommand() },
};

/** The program with every command loaded (tests, docs). */
export async function buildProgram(): Promise<Command> {
  const program = root();
  for (const e of Object.values(COMMANDS)) program.addCommand(await e.load());
  return program;
}

export async function main(argv: string[]): Promise<number> {
  return runProgram(argv, COMMANDS);
}
