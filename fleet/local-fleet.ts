import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { Agent } from "node:https";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import * as jose from "jose";
import { EdgeTrustError } from "../common/index.js";
import { SOFTHSM_MODULE } from "../hsm/index.js";
import { signManifest, signerFromPrivateKey, type Manifest } from "../policy/index.js";
import { call, codeOf } from "./http.js";
import { runCli, startCaProcess, startHaproxy, startPrivatePostgres, waitHealthy, localFleetUnavailable, type Balancer, type CaProcess, type PrivatePostgres } from "./harness.js";
import type { ReferenceDigests } from "./simulate.js";

/**
 * A whole CA fleet on this machine, started the way an operator would: a private PostgreSQL cluster, a SoftHSM token
 * of the fleet's own (initialised by Debian's softhsm2-util), `edgetrust ca init`, N `edgetrust ca serve` processes
 * sharing one configuration, HAProxy in TCP mode in front, and one signed deployment for the simulated devices.
 * Every part runs in a child process (this process never loads the PKCS#11 module), so a bench can start and stop
 * several fleets in one run. Behind `edgetrust fleet up` and the fleet bench.
 */
const run = promisify(execFile);
const TOKEN_LABEL = "et-local-fleet";
const d = (c: string) => `sha256:${c.repeat(64)}`;
/** What the simulated devices measure: the fleet's reference values, so every device appraises affirming. */
export const LOCAL_FLEET_REFERENCES: ReferenceDigests = { agent: [d("a")], policy: [d("b")], trustRoot: [d("c")], manifest: { minVersion: 1 }, modules: { sensor: [d("e")] } };

interface LocalFleetOptions {
  processes: number;
  /** Where the configuration, root certificate, admin token and HSM token live (default: a new temporary directory, removed at stop). */
  dir?: string;
  /** More `ca serve` arguments (the same for every process). */
  serveArgs?: string[];
  onStep?: (message: string) => void;
}

export interface LocalFleet {
  /** The load balancer's URL: what devices and `fleet simulate --ca-url` use. */
  url: string;
  rootPem: string;
  /** root.pem in `dir` (`fleet simulate --ca-cert`). */
  rootFile: string;
  adminToken: string;
  /** admin-token in `dir` (mode 0600): `EDGETRUST_ADMIN_TOKEN=$(cat …)`. */
  adminTokenFile: string;
  databaseUrl: string;
  referencesFile: string;
  config: string;
  dir: string;
  /** Environment the `ca` commands need (SOFTHSM2_CONF), e.g. for `ca rollover -c <config>`. */
  env: NodeJS.ProcessEnv;
  processes: CaProcess[];
  balancer: Balancer;
  postgres: PrivatePostgres;
  stop(): Promise<void>;
}

/** Why a local fleet cannot start here (PostgreSQL server binaries, haproxy, softhsm2-util), or undefined. */
export function localFleetMissing(): string | undefined {
  return localFleetUnavailable() ?? (existsSync("/usr/bin/softhsm2-util") && existsSync(SOFTHSM_MODULE) ? undefined : "SoftHSM (softhsm2 package) is not installed");
}

export async function startLocalFleet(opts: LocalFleetOptions): Promise<LocalFleet> {
  const missing = localFleetMissing();
  if (missing) throw new EdgeTrustError("UNAVAILABLE", `cannot start a local CA fleet: ${missing}`, { hint: "scripts/setup.sh all installs haproxy and SoftHSM; PostgreSQL's server binaries (initdb, pg_ctl: the fleet runs a private cluster of its own) come from the Debian package postgresql" });
  if (!Number.isInteger(opts.processes) || opts.processes < 1 || opts.processes > 16) throw new EdgeTrustError("INVALID_INPUT", "processes must be an integer from 1 to 16");
  const step = opts.onStep ?? (() => undefined);
  const ownDir = opts.dir === undefined;
  const dir = ownDir ? mkdtempSync(join(tmpdir(), "et-local-fleet-")) : resolve(opts.dir as string);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (existsSync(join(dir, "edgetrust.yaml"))) throw new EdgeTrustError("INVALID_INPUT", `${dir} already holds a fleet (edgetrust.yaml)`, { hint: "give an empty or new --dir" });
  let postgres: PrivatePostgres | undefined;
  const processes: CaProcess[] = [];
  let balancer: Balancer | undefined;
  const stop = async () => {
    await balancer?.stop();
    await Promise.all(processes.map((p) => p.stop()));
    await postgres?.stop();
    if (ownDir) rmSync(dir, { recursive: true, force: true });
  };
  try {
    step("private PostgreSQL cluster (initdb, pg_ctl start)");
    postgres = await startPrivatePostgres();
    step("SoftHSM token of the fleet's own (softhsm2-util --init-token)");
    const hsmDir = join(dir, "softhsm");
    mkdirSync(join(hsmDir, "tokens"), { recursive: true, mode: 0o700 });
    const conf = join(hsmDir, "softhsm2.conf");
    writeFileSync(conf, `directories.tokendir = ${join(hsmDir, "tokens")}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`, { mode: 0o600 });
    const pin = randomBytes(12).toString("hex");
    const pinFile = join(dir, "hsm-pin");
    writeFileSync(pinFile, `${pin}\n`, { mode: 0o600 });
    const env = { SOFTHSM2_CONF: conf };
    await run("softhsm2-util", ["--init-token", "--free", "--label", TOKEN_LABEL, "--so-pin", `so-${pin}`, "--pin", pin], { env: { ...process.env, ...env } });
    const referencesFile = join(dir, "references.yaml");
    writeFileSync(referencesFile, JSON.stringify(LOCAL_FLEET_REFERENCES, null, 2) + "\n");
    const config = join(dir, "edgetrust.yaml");
    writeFileSync(config, [
      "log:", "  level: warn",
      "hsm:", "  backend: pkcs11", `  module: ${SOFTHSM_MODULE}`, `  tokenLabel: ${TOKEN_LABEL}`, `  pinFile: ${pinFile}`,
      "ca:", "  host: 127.0.0.1", "  port: 0", "  revocationPort: -1", `  databaseUrl: ${postgres.url}`,
      "  trustDomain: fleet.edgetrust", "  rateLimitPerMinute: 1000000",
      "  attestation:", `    referenceFile: ${referencesFile}`, "    requiredForRenewal: true", "",
    ].join("\n"), { mode: 0o600 });
    step("edgetrust ca init");
    const rootFile = join(dir, "root.pem");
    const init = JSON.parse(await runCli(["ca", "init", "-c", config, "--json", "--root-out", rootFile], env)) as { adminToken: string; rootCertificatePem: string };
    const adminTokenFile = join(dir, "admin-token");
    writeFileSync(adminTokenFile, `${init.adminToken}\n`, { mode: 0o600 });
    step(`${opts.processes} × edgetrust ca serve`);
    processes.push(...(await Promise.all(Array.from({ length: opts.processes }, () => startCaProcess(config, env, opts.serveArgs ?? [])))));
    step("HAProxy (TCP mode, /healthz checks) in front");
    balancer = await startHaproxy(processes.map((p) => ({ host: "127.0.0.1", port: p.port })));
    await waitHealthy(balancer.url, init.rootCertificatePem, opts.processes);
    step("a signed deployment for the simulated devices");
    await uploadDeployment(balancer.url, init.rootCertificatePem, init.adminToken);
    return {
      url: balancer.url, rootPem: init.rootCertificatePem, rootFile, adminToken: init.adminToken, adminTokenFile, databaseUrl: postgres.url,
      referencesFile, config, dir, env, processes, balancer, postgres, stop,
    };
  } catch (e) {
    await stop().catch(() => undefined);
    throw e;
  }
}

/** One deployment for every simulated device (`sim-*`, `fleet-*`), signed by a throw-away key: devices fetch and report it. */
async function uploadDeployment(url: string, rootPem: string, adminToken: string): Promise<void> {
  const { privateKey } = await jose.generateKeyPair("ES256", { extractable: true });
  const signer = await signerFromPrivateKey(JSON.stringify(await jose.exportJWK(privateKey)));
  const manifest: Manifest = {
    schemaVersion: 1, deploymentId: "local-fleet", version: 1, targets: ["*"],
    issuedAt: new Date(Date.now() - 60_000).toISOString(), expiresAt: new Date(Date.now() + 30 * 86_400_000).toISOString(),
    modules: { sensor: { image: `127.0.0.1:5000/edgetrust/sensor@${d("e")}`, options: { user: "1000:1000" }, restartPolicy: "always", startupOrder: 0 } },
  };
  const agent = new Agent({ keepAlive: false, ca: rootPem });
  try {
    const r = await call(agent, "PUT", `${url}/v1/deployments`, { headers: { authorization: `Bearer ${adminToken}` }, body: await signManifest(manifest, signer) });
    if (r.status !== 201 && r.status !== 200) throw new EdgeTrustError("UNAVAILABLE", `the local fleet refused its deployment: ${codeOf(r)} ${String(r.json.detail ?? "")}`);
  } finally {
    agent.destroy();
  }
}
