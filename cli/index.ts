import "reflect-metadata";
import { Command, CommanderError } from "commander";
import { hsmCommand } from "../hsm/cli.js";
import { certsDevCommand } from "../certs-dev/cli.js";
import { configCommand } from "./config.js";
import { demoCommand } from "./demo.js";
import { benchCommand } from "../bench/cli.js";
import { caCommand } from "../ca-service/cli.js";
import { policyCommand, manifestCommand } from "../policy/cli.js";
import { hubCommand } from "../edge-hub/cli.js";
import { deviceCommand } from "../device-identity/cli.js";
import { agentCommand } from "../edge-agent/cli.js";
import { reportFailure } from "./output.js";

export function buildProgram(): Command {
  const program = new Command("edgetrust")
    .description("Security and attestation for containerised edge devices")
    .version("0.1.0")
    .showHelpAfterError("(run with --help for usage)")
    .exitOverride();
  program.addCommand(hsmCommand());
  program.addCommand(certsDevCommand());
  program.addCommand(configCommand());
  program.addCommand(demoCommand());
  program.addCommand(policyCommand());
  program.addCommand(manifestCommand());
  program.addCommand(hubCommand());
  program.addCommand(agentCommand());
  program.addCommand(caCommand());
  program.addCommand(deviceCommand());
  program.addCommand(benchCommand());
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
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
