import { Command } from "commander";

export function demoCommand(): Command {
  return new Command("demo").description("Run the attested boot flow end to end on embedded defaults");
}
