// First, as in cli/index.ts: @peculiar/x509's dependency injection needs the Reflect metadata API before it loads.
import "reflect-metadata";
import { agentCommand } from "../../edge-agent/cli.js";
import { readConfig, runProgram } from "../program.js";

/**
 * `edgetrust agent` alone: the entry of the agent daemon's own bundle (scripts/bundle.mjs → dist/daemons/agent.mjs), which
 * bin/edgetrust.js runs for `edgetrust agent …` so the process carries only this component's code (issue 14).
 */
export function main(argv: string[]): Promise<number> {
  return runProgram(argv, {
    agent: { description: "Edge agent: verify the deployment manifest, start attested modules, supervise them", load: async () => agentCommand(await readConfig()) },
  });
}
