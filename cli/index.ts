import "reflect-metadata";
import { Command, CommanderError } from "commander";
import { loadConfig, reportFailure, type ConfigReader } from "../common/index.js";
import type { ServeExtension } from "../ca-service/cli.js";
import type { EdgeTrustConfigFile } from "./config-schema.js";

/** `ca serve` also serves the security console (issue 16) unless `console.enabled: false`; loaded only then. */
const serveConsole: ServeExtension<EdgeTrustConfigFile> = async (app, { ca, store, config }) => {
  if (!config.console.enabled) return;
  const { consolePlugin } = await import("../console/index.js");
  await app.register(consolePlugin, { ca, store, caConfig: config.ca, console: config.console });
};

interface Entry {
  description: string;
  load: () => Promise<Command>;
}

/**
 * Every command, loaded only when it runs: a daemon started as `edgetrust agent run` does not carry the CA's
 * database drivers or the hub's broker in its memory. Descriptions live here so `edgetrust --help` loads nothing.
 */
/** Reads the whole edgetrust.yaml (every section validated); loaded with the command, handed to it. */
async function readConfig(): Promise<ConfigReader<EdgeTrustConfigFile>> {
  const { EdgeTrustConfig } = await import("./config-schema.js");
  return (opts) => loadConfig(EdgeTrustConfig, opts);
}

const COMMANDS: Record<string, Entry> = {
  hsm: { description: "Key store: PKCS#11 tokens (SoftHSM2, TPM, HSM) and the development software store", load: async () => (await import("../hsm/cli.js")).hsmCommand(await readConfig()) },
  "certs-dev": { description: "Development PKI generator (never for production)", load: async () => (await import("../certs-dev/cli.js")).certsDevCommand(await readConfig()) },
  config: { description: "Show the configuration file format and its documented defaults", load: async () => (await import("./config.js")).configCommand() },
  demo: { description: "Run the attested boot flow end to end on embedded defaults", load: async () => (await import("./demo.js")).demoCommand() },
  policy: { description: "Policy files: check, explain, test", load: async () => (await import("../policy/cli.js")).policyCommand(await readConfig()) },
  manifest: { description: "Deployment manifests: sign, verify", load: async () => (await import("../policy/cli.js")).manifestCommand(await readConfig()) },
  hub: { description: "Edge hub: mTLS MQTT broker for attested modules and leaf devices", load: async () => (await import("../edge-hub/cli.js")).hubCommand(await readConfig()) },
  agent: { description: "Edge agent: verify the deployment manifest, start attested modules, supervise them", load: async () => (await import("../edge-agent/cli.js")).agentCommand(await readConfig()) },
  ca: { description: "Cloud CA: init, serve, issue, revoke, audit", load: async () => (await import("../ca-service/cli.js")).caCommand(await readConfig(), { serveExtensions: [serveConsole] }) },
  device: { description: "Device identity daemon: provision, run, status, attest", load: async () => (await import("../device-identity/cli.js")).deviceCommand(await readConfig()) },
  fleet: { description: "Fleet simulator: drive simulated devices through their life against a CA", load: async () => (await import("../fleet/cli.js")).fleetCommand() },
  bench: { description: "Run the benchmarks; each figure is a ratio against a reference measured in the same run", load: async () => (await import("../bench/cli.js")).benchCommand() },
};

function root(): Command {
  return new Command("edgetrust")
    .description("Security and attestation for containerised edge devices")
    .version("0.1.0")
    .showHelpAfterError("(run with --help for usage)")
    .exitOverride();
}

/** The program with every command loaded (tests, docs). */
export async function buildProgram(): Promise<Command> {
  const program = root();
  for (const e of Object.values(COMMANDS)) program.addCommand(await e.load());
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = root();
  const name = argv[2];
  const entry = name !== undefined && Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (entry) {
    program.addCommand(await entry.load());
  } else {
    // Help, version or a typo: list every command without loading any.
    for (const [n, e] of Object.entries(COMMANDS)) program.command(n).description(e.description);
  }
  for (const c of program.commands) c.exitOverride();
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      // --help and --version exit 0; usage errors were already printed by commander.
      return e.exitCode === 0 ? 0 : 2;
    }
    return reportFailure(e);
  }
}
