// First, as in cli/index.ts: @peculiar/x509's dependency injection needs the Reflect metadata API before it loads.
import "reflect-metadata";
import { deviceCommand } from "../../device-identity/cli.js";
import { readConfig, runProgram } from "../program.js";

/**
 * `edgetrust device` alone: the entry of the device daemon's own bundle (scripts/bundle.mjs → dist/daemons/device.mjs), which
 * bin/edgetrust.js runs for `edgetrust device …` so the process carries only this component's code (issue 14).
 */
export function main(argv: string[]): Promise<number> {
  return runProgram(argv, {
    device: { description: "Device identity daemon: provision, run, status, attest", load: async () => deviceCommand(await readConfig()) },
  });
}
