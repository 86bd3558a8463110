import { Command } from "commander";

export function benchCommand(): Command {
  return new Command("bench").description("Run the benchmarks; each figure is a ratio against a reference measured in the same run");
}
