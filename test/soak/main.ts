/**
 * `make soak`: the renewal soak from the command line (see renewal-soak.ts). Progress on stderr, the result as a
 * table (or JSON with --json) on stdout; exit 1 when anything was lost, dropped outside a renewal, or not renewed.
 */
import "reflect-metadata";
import { Command, InvalidArgumentError } from "commander";
import { DEFAULT_SOAK, runRenewalSoak, soakTable, type SoakResult } from "./renewal-soak.js";

function int(min: number, max: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`must be an integer from ${min} to ${max}`);
    return n;
  };
}

export function passed(r: SoakResult): boolean {
  return r.problems.length === 0 && r.messages.sent > 0 && r.messages.delivered === r.messages.sent
    && r.disconnects.unplannedModule === 0 && r.disconnects.unplannedUpstream === 0 && r.upstream.staleCertificate === 0
    && r.renewals.device === r.rounds && r.renewals.edgeCa === r.rounds && r.renewals.hub === r.rounds && r.renewals.module === r.rounds * r.modules;
}

const program = new Command("soak")
  .description("Renew every certificate of one device (device identity, Edge CA, hub server, each module) round after round while modules publish QoS 1 through the hub to an upstream broker; count what was sent, delivered and dropped")
  .option("--rounds <n>", "renewal rounds", int(1, 10_000), DEFAULT_SOAK.rounds)
  .option("--modules <n>", "publishing modules", int(1, 8), DEFAULT_SOAK.modules)
  .option("--rate <n>", "messages per second per module (QoS 1, one in flight)", int(1, 200), DEFAULT_SOAK.ratePerModule)
  .option("--lifetime <seconds>", "device identity and Edge CA certificate lifetime (the CA backdates notBefore by 5 minutes)", int(360, 86_400), DEFAULT_SOAK.lifetimeSeconds)
  .option("--json", "print the result as JSON")
  .action(async (o: { rounds: number; modules: number; rate: number; lifetime: number; json?: boolean }) => {
    const r = await runRenewalSoak({
      ...DEFAULT_SOAK, rounds: o.rounds, modules: o.modules, ratePerModule: o.rate, lifetimeSeconds: o.lifetime,
      onProgress: (line) => process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${line}\n`),
    });
    process.stdout.write(o.json ? `${JSON.stringify({ ok: passed(r), ...r }, null, 2)}\n` : `${soakTable(r)}\n${passed(r) ? "soak passed" : "soak FAILED"}\n`);
    process.exitCode = passed(r) ? 0 : 1;
  });

try {
  await program.parseAsync(process.argv);
} catch (e) {
  process.stderr.write(`soak: ${(e as Error).message}\n`);
  process.exitCode = 2;
}
