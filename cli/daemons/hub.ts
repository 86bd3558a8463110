// First, as in cli/index.ts: @peculiar/x509's dependency injection needs the Reflect metadata API before it loads.
import "reflect-metadata";
import { hubCommand } from "../../edge-hub/cli.js";
import { readConfig, runProgram } from "../program.js";

/**
 * `edgetrust hub` alone: the entry of the hub daemon's own bundle (scripts/bundle.mjs → dist/daemons/hub.mjs), which
 * bin/edgetrust.js runs for `edgetrust hub …` so the process carries only this component's code (issue 14).
 */
export function main(argv: string[]): Promise<number> {
  return runProgram(argv, {
    hub: { description: "Edge hub: mTLS MQTT broker for attested modules and leaf devices", load: async () => hubCommand(await readConfig()) },
  });
}
