import { Command } from "commander";
import { renderDefaults, loadConfig, action, emit } from "../common/index.js";
import { EdgeTrustConfig } from "./config-schema.js";


export function configCommand(): Command {
  const cmd = new Command("config").description("Show the configuration file format and its documented defaults");
  cmd
    .command("defaults")
    .description("print every setting with its default, description and environment variable, as YAML")
    .action(action(() => { process.stdout.write(renderDefaults(EdgeTrustConfig)); }));
  cmd
    .command("check")
    .description("validate a config file and print the effective configuration")
    .argument("<file>", "YAML config file")
    .option("--json", "print the effective configuration as JSON")
    .action(action((file: string, opts: { json?: boolean }) => {
      const cfg = loadConfig(EdgeTrustConfig, { file, required: true });
      emit(Boolean(opts.json), cfg, () => `${file}: ok`);
    }));
  return cmd;
}
