import { Command, CommanderError } from "commander";
import { loadConfig, registerCompiledValidator, reportFailure, type ConfigReader } from "../common/index.js";
import type { EdgeTrustConfigFile } from "./config-schema.js";

/** One top-level command: its description (for the listing) and how to load it (only when it runs). */
export interface Entry {
  description: string;
  load: () => Promise<Command>;
}

/** Reads the whole edgetrust.yaml (every section validated); loaded with the command, handed to it. */
export async function readConfig(): Promise<ConfigReader<EdgeTrustConfigFile>> {
  const { EdgeTrustConfig } = await import("./config-schema.js");
  // Checked by the validator compiled at build time (scripts/compiled-validators.mjs), not compiled at each start.
  const { edgeTrustConfigValidator } = await import("./config-validator.js");
  registerCompiledValidator(EdgeTrustConfig, edgeTrustConfigValidator);
  return (opts) => loadConfig(EdgeTrustConfig, opts);
}

export function root(): Command {
  return new Command("edgetrust")
    .description("Security and attestation for containerised edge devices")
    .version("0.1.0")
    .showHelpAfterError("(run with --help for usage)")
    .exitOverride();
}

/**
 * Run `argv` against a table of commands, loading only the one named: the whole command tree (cli/index.ts) and each
 * daemon's own bundle (cli/daemons/) share this, so both answer help, usage errors and failures alike.
 */
export async function runProgram(argv: string[], commands: Record<string, Entry>): Promise<number> {
  const program = root();
  const name = argv[2];
  const entry = name !== undefined && Object.hasOwn(commands, name) ? commands[name] : undefined;
  if (entry) {
    program.addCommand(await entry.load());
  } else {
    // Help, version or a typo: list every command without loading any.
    for (const [n, e] of Object.entries(commands)) program.command(n).description(e.description);
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
