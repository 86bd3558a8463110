import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { Command, InvalidArgumentError, Option } from "commander";
import { EdgeTrustError, action, emit, parseYamlStrict } from "../common/index.js";
import { ReferenceValues } from "../ca-service/index.js";
import { simulateFleet, startLocalFleet } from "./index.js";
import { formatResult } from "./simulate.js";
import { progressReporter } from "./progress.js";
import { pkcs11EngineEnvironment, pkcs11EngineRegistered, softHsmKeys } from "./keys.js";

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
  hsm?: boolean;
}

/**
 * `--hsm` needs the OpenSSL pkcs11 engine registered before Node starts (a later registration serves one TLS context
 * per process): the command runs itself again in a child with OPENSSL_CONF set, and exits with its status.
 */
async function rerunWithEngine(): Promise<number> {
  const script = process.argv[1];
  if (!script) throw new EdgeTrustError("INVALID_CONFIG", "--hsm cannot restart this process with the pkcs11 engine (no script path)", { hint: "set OPENSSL_CONF to an engine configuration (hsm engineConfig) before starting" });
  const child = spawn(process.execPath, [...process.execArgv, script, ...process.argv.slice(2)], { stdio: "inherit", env: { ...process.env, ...pkcs11EngineEnvironment() } });
  const forward = (sig: NodeJS.Signals) => child.kill(sig);
  process.on("SIGINT", forward);
  process.on("SIGTERM", forward);
  return new Promise((resolve) => child.once("exit", (code, sig) => resolve(code ?? (sig ? 1 : 0))));
}

function readFile(file: string, what: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (e) {
    throw new EdgeTrustError("INVALID_INPUT", `cannot read ${what} ${file}: ${(e as Error).message}`);
  }
}

/** `edgetrust fleet simulate`. */
function fleetSimulateCommand(): Command {
  return new Command("simulate")
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
    .option("--hsm", "device keys in SoftHSM: a token of the simulator's own, one key per device made in the token; CSR and evidence signed there, mTLS through OpenSSL's pkcs11 engine")
    .option("--no-progress", "no progress bar on stderr")
    .option("--json", "the result as JSON")
    .addHelpText("after", "\nExit status 1 when any device failed, or the store holds a duplicate, misses a record, or its audit chain does not verify.")
    .action(action(async (o: SimulateCli) => {
      if (o.hsm && !pkcs11EngineRegistered()) {
        process.exitCode = await rerunWithEngine();
        return;
      }
      const keys = o.hsm ? await softHsmKeys() : undefined;
      const refs = o.references ? parseYamlStrict(readFile(o.references, "reference values"), ReferenceValues, o.references).value : undefined;
      const progress = o.progress ? progressReporter(process.stderr, "fleet", o.devices) : undefined;
      const store = o.databaseUrl ? { databaseUrl: o.databaseUrl, schema: o.databaseSchema ?? "public" } : o.sqlitePath ? { sqlitePath: o.sqlitePath } : undefined;
      const r = await simulateFleet({
        caUrl: o.caUrl, rootPem: readFile(o.caCert, "CA certificate"), devices: o.devices, concurrency: o.concurrency,
        ...(o.lineToken ? { lineToken: o.lineToken } : {}), ...(o.adminToken ? { adminToken: o.adminToken } : {}), ...(o.prefix ? { prefix: o.prefix } : {}),
        revokePercent: o.adminToken ? o.revokePercent : 0, ...(refs ? { references: refs } : {}), crossInstance: o.crossInstance, maxAttempts: o.maxAttempts,
        ...(store ? { store } : {}), ...(progress ? { onProgress: (d: number, e: number) => progress.update(d, e) } : {}), ...(keys ? { keys } : {}),
      }).finally(() => keys?.close());
      progress?.end();
      emit(Boolean(o.json), r, () => formatResult(r));
      const s = r.store;
      if (r.errors > 0 || (s && (s.duplicateCertificates > 0 || s.lostCertificates > 0 || s.duplicateReports > 0 || s.lostReports > 0 || !s.auditChainOk))) process.exitCode = 1;
    }));
}

/** `edgetrust fleet up`. */
function fleetUpCommand(): Command {
  return new Command("up")
    .description("start a CA fleet on this machine — a private PostgreSQL cluster, a SoftHSM token of its own, `ca init`, N `ca serve` behind HAProxy — and keep it running until SIGINT/SIGTERM")
    .option("--processes <n>", "`ca serve` processes behind HAProxy", int("--processes", 1, 16), 3)
    .option("--dir <dir>", "where its configuration, root certificate, admin token (0600) and HSM token live (default: a temporary directory, removed at stop)")
    .option("--json", "print where everything is as one JSON line")
    .addHelpText("after", "\nThen, in another shell, the printed `edgetrust fleet simulate …` line. Needs PostgreSQL server binaries, haproxy and softhsm2 (scripts/setup.sh all). Ctrl-C stops every part.")
    .action(action(async (o: { processes: number; dir?: string; json?: boolean }) => {
      const fleet = await startLocalFleet({ processes: o.processes, ...(o.dir ? { dir: o.dir } : {}), onStep: (m) => process.stderr.write(`fleet up: ${m}\n`) });
      const simulate = `EDGETRUST_ADMIN_TOKEN=$(cat ${fleet.adminTokenFile}) edgetrust fleet simulate --ca-url ${fleet.url} --ca-cert ${fleet.rootFile} --references ${fleet.referencesFile} --database-url ${fleet.databaseUrl} --devices 10000`;
      const info = {
        url: fleet.url, rootFile: fleet.rootFile, adminTokenFile: fleet.adminTokenFile, databaseUrl: fleet.databaseUrl, referencesFile: fleet.referencesFile,
        config: fleet.config, dir: fleet.dir, softhsmConf: fleet.env.SOFTHSM2_CONF, processes: fleet.processes.map((p) => ({ url: p.url, pid: p.proc.pid })), simulate,
      };
      // One JSON line (the command keeps running, so a script reads its first line rather than waiting for the end).
      if (o.json) process.stdout.write(`${JSON.stringify(info)}\n`);
      else emit(false, info, () => [
        `CA fleet up: HAProxy ${fleet.url} → ${fleet.processes.map((p) => p.url).join(", ")}`,
        `PostgreSQL ${fleet.databaseUrl}; configuration ${fleet.config} (SOFTHSM2_CONF=${fleet.env.SOFTHSM2_CONF ?? ""})`,
        `root certificate ${fleet.rootFile}; admin token in ${fleet.adminTokenFile}`,
        `simulate: ${simulate}`,
        "Ctrl-C (or SIGTERM) stops the fleet.",
      ].join("\n"));
      await new Promise<void>((done) => {
        let stopping = false;
        const stop = () => { stopping = true; process.stderr.write("fleet up: stopping HAProxy, the CA processes and PostgreSQL\n"); void fleet.stop().then(done, done); };
        process.once("SIGINT", stop);
        process.once("SIGTERM", stop);
        // A `ca serve` that dies on its own is said at once; the others keep serving (the balancer takes it out).
        for (const p of fleet.processes) p.proc.once("exit", (code, sig) => { if (!stopping) process.stderr.write(`fleet up: ca serve ${p.url} exited (${sig ?? code ?? "?"})\n`); });
      });
    }));
}

export function fleetCommand(): Command {
  const cmd = new Command("fleet").description("Drive simulated devices against a CA (one process or a fleet behind a load balancer)");
  cmd.addCommand(fleetSimulateCommand());
  cmd.addCommand(fleetUpCommand());
  return cmd;
}
