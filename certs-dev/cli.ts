import { Command } from "commander";

export function certsDevCommand(): Command {
  return new Command("certs-dev").description("Development PKI generator (never for production)");
}
