import { readFileSync } from "node:fs";
import { Command, InvalidArgumentError, Option } from "commander";
import { EdgeTrustError, action, emit, parseYamlStrict } from "../common/index.js";
import { ReferenceValues } from "../ca-service/index.js";
import { formatResult, progressReporter, simulateFleet } from "./index.js";

const int = (name: string, min: number, max: number) => (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be an integer from ${min} to ${max}`);
  return n;
};

interface SimulateCli {
  caUrl: string;
  caCert: string;
  devices: number;
  concurrency: number;
  lineToken?: string;
  adminToken?: string;
  prefix?: string;
  revokePercent: number;
  references?: string;
  crossInstance: boolean;
  maxAttempts: number;
  databaseUrl?: string;
  databaseSchema?: string;
  sqlitePath?: string;
  progress: boolean;
  json?: boolean;
}

function readFile(file: string, what: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (e) {
    throw new EdgeTrustError("INVALID_INPUT", `cannot read ${what} ${file}: ${(e as Error).message}`);
  }
}

export function fleetCommand(): Command {
  const cmd = new Command("fleet").description("Drive simulated devices against a CA (one process or a fleet behind a load balancer)");
  cmd.command("simulate")
    .description("N simulated devices, each through its life: enroll (line), register, attest, deployment + report (mTLS), renew; some revoked and refused; then the store is checked for duplicates and lost records")
    .requiredOption("--ca-url <url>", "the CA's HTTPS base URL (a load balancer in front of several `ca serve`)")
    .requiredOption("--ca-cert <file>", "root CA certificate (PEM) the devices trust the CA's TLS listener with")
    .option("--devices <n>", "simulated devices", int("--devices", 1, 10_000_000), 100)
    .option("--concurrency <n>", "devices living at once", int("--concurrency", 1, 10_000), 32)
    .addOption(new Option("--line-token <token>", "provisioning line token (etl_…)").env("EDGETRUST_LINE_TOKEN"))
    .addOption(new Option("--admin-token <token>", "admin token: creates a line when none is given; revokes devices").env("EDGETRUST_ADMIN_TOKEN"))
    .option("--prefix <p>", "device ids are <prefix>-<n> (default sim-<random>)")
    .option("--revoke-percent <n>", "devices revoked after renewal and then refused (needs the admin token)", int("--revoke-percent", 0, 100), 5)
    .option("--references <file>", "the CA's attestation reference values (YAML/JSON, as ca.attestation.referenceFile): devices measure these, so they appraise affirming")
    .option("--no-cross-instance", "do not steer each device's evidence to another CA process than the one that made its nonce")
    .option("--max-attempts <n>", "attempts per request (exponential backoff up to 5 s)", int("--max-attempts", 1, 1000), 25)
    .addOption(new Option("--database-url <url>", "the CA's PostgreSQL: count duplicates and lost records there afterwards").env("EDGETRUST_CA_DATABASEURL"))
    .option("--database-schema <schema>", "PostgreSQL schema of the CA tables", "public")
    .option("--sqlite-path <file>", "the CA's SQLite database (instead of --database-url)")
    .option("--no-progress", "no progress bar on stderr")
    .option("--json", "the result as JSON")
    .addHelpText("after", "\nExit status 1 when any device failed, or the store holds a duplicate, misses a record, or its audit chain does not verify.")
    .action(action(async (o: SimulateCli) => {
      const refs = o.references ? parseYamlStrict(readFile(o.references, "reference values"), ReferenceValues, o.references).value : undefined;
      const progress = o.progress ? progressReporter(process.stderr, "fleet", o.devices) : undefined;
      const store = o.databaseUrl ? { databaseUrl: o.databaseUrl, schema: o.databaseSchema ?? "public" } : o.sqlitePath ? { sqlitePath: o.sqlitePath } : undefined;
      const r = await simulateFleet({
        caUrl: o.caUrl, rootPem: readFile(o.caCert, "CA certificate"), devices: o.devices, concurrency: o.concurrency,
        ...(o.lineToken ? { lineToken: o.lineToken } : {}), ...(o.adminToken ? { adminToken: o.adminToken } : {}), ...(o.prefix ? { prefix: o.prefix } : {}),
        revokePercent: o.adminToken ? o.revokePercent : 0, ...(refs ? { references: refs } : {}), crossInstance: o.crossInstance, maxAttempts: o.maxAttempts,
        ...(store ? { store } : {}), ...(progress ? { onProgress: (d: number, e: number) => progress.update(d, e) } : {}),
      });
      progress?.end();
      emit(Boolean(o.json), r, () => formatResult(r));
      const s = r.store;
      if (r.errors > 0 || (s && (s.duplicateCertificates > 0 || s.lostCertificates > 0 || s.duplicateReports > 0 || s.lostReports > 0 || !s.auditChainOk))) process.exitCode = 1;
    }));
  return cmd;
}
