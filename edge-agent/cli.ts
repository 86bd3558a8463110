import { Command } from "commander";
import { readFileSync } from "node:fs";
import { createLogger, EdgeTrustError, action, emit, type ConfigReader } from "../common/index.js";
import type { HsmConfig, KeyStore } from "../hsm/index.js";
import type { AgentConfig } from "./config.js";
import { loadPolicy, resolveTrust } from "../policy/index.js";
import { DockerClient } from "../engine/index.js";
import { EdgeAgent } from "./agent.js";
import { ManagementSocketRegistrar } from "./identity-client.js";
import { CloudClient, ReportQueue, syncDeployment } from "./cloud.js";
import { failureLine } from "./deployment.js";

/** `edgetrust agent run`. */
function runCommand(readConfig: ConfigReader<AgentCliConfig>): Command {
  return new Command("run")
    .description("boot the last-known-good deployment, apply a newer signed manifest, then supervise until SIGTERM")
    .option("-c, --config <file>", "edgetrust.yaml", "/etc/edgetrust/edgetrust.yaml")
    .option("--manifest <file>", "signed manifest (JWS JSON) to apply; overrides agent.manifestFile")
    .option("--device-id <id>", "this device's id; overrides agent.deviceId")
    .option("--once", "apply, print the module states and exit (no supervision)")
    .option("--json", "machine-readable output")
    .action(action(async (opts: RunOptions) => {
      const all = readConfig({ ...(opts.config ? { file: opts.config } : {}) });
      const cfg = all.agent;
      const deviceId = opts.deviceId ?? cfg.deviceId;
      if (!deviceId) throw new EdgeTrustError("INVALID_CONFIG", "no device id", { hint: "set agent.deviceId or pass --device-id" });
      const log = createLogger("edge-agent");
      const { policy, file } = loadPolicy(cfg.policyFile);
      let store: KeyStore | undefined;
      let cloud: CloudClient | undefined;
      if (cfg.cloudUrl) {
        // The key store (native PKCS#11, X.509 stack) is loaded only when the agent talks to the cloud.
        const { openKeyStore, tlsCredentialsFromFile } = await import("../hsm/index.js");
        // Read before every request: the device certificate in force and the key that belongs to it (a rekey
        // renewal moves it between <label> and <label>.1), not what was on disk when the agent started.
        const deviceTls = async () => ({
          ca: readFileSync(cfg.cloudCaFile, "utf8"),
          ...(await tlsCredentialsFromFile(cfg.deviceKey, () => readFileSync(cfg.deviceCertFile, "utf8"), async () => (store ??= await openKeyStore(all.hsm, { logger: log })), all.hsm)),
        });
        await deviceTls();
        cloud = new CloudClient(cfg.cloudUrl, deviceTls);
      }
      const client = cloud;
      const queue = client ? new ReportQueue(cfg.reportQueueFile, (r) => client.sendReport(r)) : undefined;
      const agent = new EdgeAgent({
        docker: new DockerClient({ socketPath: cfg.dockerSocket }),
        identity: new ManagementSocketRegistrar(cfg.managementSocket, cfg.workloadSocketsDir),
        policy,
        trustRoot: await resolveTrust(policy, file),
        deviceId,
        stateDir: cfg.stateDir,
        log,
        backoff: { baseMs: cfg.restartBackoffMs, maxMs: cfg.restartBackoffMaxMs },
        iotEdge: { iotHubHostName: cfg.iotHubHostName, gatewayHostName: cfg.gatewayHostName },
        onPull: (module, p) => process.stderr.write(`pull ${module}: ${p.status}${p.progress ? " " + p.progress : ""}\n`),
        report: (r) => {
          log.info({ report: r }, `report: ${r.kind}`);
          queue?.push(r);
        },
      });
      const booted = await agent.boot();
      let applied = booted?.applied ?? false;
      let rejected = false;
      const manifestFile = opts.manifest ?? cfg.manifestFile;
      if (manifestFile) {
        const r = await agent.apply(readFileSync(manifestFile));
        applied ||= r.applied;
        rejected = !r.applied;
        if (!r.applied) {
          for (const reason of r.verdict.reasons) process.stderr.write(`manifest rejected: ${reason.check}: ${reason.message}\n`);
          if (r.failure) process.stderr.write(`${failureLine(r.failure)}\n`);
        }
      }
      const poll = async () => {
        if (!cloud) return;
        try {
          const r = await syncDeployment(agent, cloud);
          if (r.applied) log.info({ version: r.version }, "applied the cloud's deployment");
          if (r.refused) rejected = true;
          await queue?.flush();
        } catch (e) {
          log.warn({ reason: (e as Error).message }, "cloud unreachable; running what the device has");
        }
      };
      await poll();
      const summary = { applied, rejected, version: agent.current()?.version ?? null, modules: agent.status() };
      if (opts.once) {
        emit(Boolean(opts.json), summary, () =>
          [`deployment version ${summary.version ?? "none"}`, ...summary.modules.map((m) => `  ${m.name}: ${m.state}${m.reason ? ` (${m.reason})` : ""}`)].join("\n"));
        if (rejected) process.exitCode = 1;
        await store?.close();
        return;
      }
      agent.supervise(cfg.superviseIntervalMs);
      const pollTimer = cloud ? setInterval(() => void poll(), cfg.pollIntervalMs) : undefined;
      await new Promise<void>((resolve) => {
        const stop = () => resolve();
        process.once("SIGTERM", stop);
        process.once("SIGINT", stop);
      });
      log.info("stopping: modules keep running; the next start reconciles them");
      if (pollTimer) clearInterval(pollTimer);
      await agent.stop();
      await store?.close();
    }));
}

/** The sections of edgetrust.yaml these commands read (the command tree hands in a reader of the whole file). */
type AgentCliConfig = { hsm: HsmConfig; agent: AgentConfig };

interface RunOptions {
  config?: string;
  manifest?: string;
  deviceId?: string;
  once?: boolean;
  json?: boolean;
}

export function agentCommand(readConfig: ConfigReader<AgentCliConfig>): Command {
  const cmd = new Command("agent").description("Edge agent: verify the deployment manifest, start attested modules, supervise them");
  cmd.addCommand(runCommand(readConfig));
  return cmd;
}
