import { readFileSync } from "node:fs";
import { Command } from "commander";
import { EdgeTrustError, createLogger, action, emit, faultClockOffsetSeconds, type ConfigReader, type LogSection } from "../common/index.js";
import { openKeyStore, type HsmConfig } from "../hsm/index.js";
import { CaClient } from "./ca-client.js";
import { DeviceDaemon, identityFromConfig } from "./daemon.js";
import type { DeviceConfig } from "./config.js";
import { ManagementClient } from "../identity-api/index.js";

/** The sections of edgetrust.yaml these commands read (the command tree hands in a reader of the whole file). */
type DeviceCliConfig = { log: LogSection; hsm: HsmConfig; device: DeviceConfig };

function optionalToken(cfg: DeviceConfig, explicitFile?: string): string | undefined {
  const file = explicitFile ?? cfg.bootstrapTokenFile;
  const token = file ? readFileSync(file, "utf8").split("\n")[0]?.trim() : process.env[cfg.bootstrapTokenEnv]?.trim();
  return token || undefined;
}

function bootstrapToken(cfg: DeviceConfig, explicitFile?: string): string {
  const token = optionalToken(cfg, explicitFile);
  if (!token) {
    throw new EdgeTrustError("UNAUTHENTICATED", "no bootstrap token for enrollment", { hint: `give --token-file, device.bootstrapTokenFile or ${cfg.bootstrapTokenEnv}` });
  }
  return token;
}

/** `edgetrust device provision`. */
function provisionCommand(readConfig: ConfigReader<DeviceCliConfig>): Command {
  return new Command("provision")
    .description("Generate the device and Edge CA keys in the HSM, enroll with ca-service, store certificates and trust bundle atomically")
    .option("-c, --config <file>", "edgetrust.yaml", "/etc/edgetrust/edgetrust.yaml")
    .option("--token-file <file>", "bootstrap (enrollment) token file")
    .option("--force", "enroll again with new keys even if already provisioned (old keys erased after the new state is stored)")
    .option("--keys-only", "registration: only generate the keys and CSRs (kept for the registration) and print the device public key for the factory line to enroll")
    .option("--json", "machine-readable output")
    .action(action(async (opts: { config: string; tokenFile?: string; force?: boolean; keysOnly?: boolean; json?: boolean }) => {
      const all = readConfig({ file: opts.config });
      const log = createLogger("device-identity", { level: all.log.level });
      const keys = await openKeyStore(all.hsm, { logger: log });
      try {
        const id = identityFromConfig(all.device, all.hsm, { keys, log });
        const force = Boolean(opts.force);
        if (opts.keysOnly) {
          const p = await id.prepareRegistration({ force });
          emit(Boolean(opts.json), { ok: true, deviceId: all.device.deviceId, publicKeyPem: p.devicePublicKeyPem, keys: p.labels }, () => p.devicePublicKeyPem);
          return;
        }
        if (all.device.enrollment === "registration") {
          const secret = optionalToken(all.device, opts.tokenFile);
          await id.register({ force, ...(secret ? { basicSecret: secret } : {}) });
        } else {
          await id.provision(bootstrapToken(all.device, opts.tokenFile), { force });
        }
        const st = id.status();
        emit(Boolean(opts.json), { ok: true, stateDir: all.device.stateDir, ...st }, () =>
          [`device ${st.deviceId} provisioned (generation ${st.generation}) in ${all.device.stateDir}`,
            ...st.certificates.map((c) => `  ${c.kind}: serial ${c.serial}, valid until ${c.notAfter}, renew at ${c.renewAt}`)].join("\n"));
      } finally {
        await keys.close();
      }
    }));
}

/** `edgetrust device run`. */
function runCommand(readConfig: ConfigReader<DeviceCliConfig>): Command {
  return new Command("run")
    .description("Run the daemon until SIGTERM/SIGINT: renew on schedule, serve the management and workload sockets")
    .option("-c, --config <file>", "edgetrust.yaml", "/etc/edgetrust/edgetrust.yaml")
    .action(action(async (opts: { config: string }) => {
      const all = readConfig({ file: opts.config });
      const log = createLogger("device-identity", { level: all.log.level });
      // A fault point for tests (common/faults.ts): a device clock off by this many seconds.
      const offset = faultClockOffsetSeconds();
      const now = offset ? () => new Date(Date.now() + offset * 1000) : undefined;
      if (offset) log.warn({ offsetSeconds: offset }, "fault injection: device clock shifted");
      // SIGTERM while the daemon still waits for its HSM: stop waiting, exit cleanly.
      const early = new AbortController();
      const abort = (): void => early.abort();
      process.once("SIGTERM", abort);
      process.once("SIGINT", abort);
      let d: DeviceDaemon;
      try {
        d = await DeviceDaemon.start({ config: all.device, hsm: all.hsm, log, signal: early.signal, ...(now ? { now } : {}) });
      } catch (e) {
        if (early.signal.aborted) {
          log.info("stopped while waiting for the HSM");
          return;
        }
        throw e;
      } finally {
        process.off("SIGTERM", abort);
        process.off("SIGINT", abort);
      }
      await new Promise<void>((resolve) => {
        const stop = (sig: string): void => {
          log.info({ signal: sig }, "shutting down");
          d.stop().then(resolve, (e: unknown) => {
            log.error({ err: (e as Error).message }, "shutdown failed");
            resolve();
          });
        };
        // After an HSM outage the engine's sessions are stale: stop cleanly, exit 75, the supervisor starts us again.
        void d.restart.then((reason) => {
          process.exitCode = 75;
          stop(`restart: ${reason}`);
        });
        process.once("SIGTERM", () => stop("SIGTERM"));
        process.once("SIGINT", () => stop("SIGINT"));
      });
    }));
}

/** `edgetrust device status`. */
function statusCommand(readConfig: ConfigReader<DeviceCliConfig>): Command {
  return new Command("status")
    .description("Certificates, renewal schedule, clock problems and attested modules (asks the running daemon, else reads the state)")
    .option("-c, --config <file>", "edgetrust.yaml", "/etc/edgetrust/edgetrust.yaml")
    .option("--json", "machine-readable output")
    .action(action(async (opts: { config: string; json?: boolean }) => {
      const all = readConfig({ file: opts.config });
      let st: Record<string, unknown>;
      try {
        st = { running: true, ...(await new ManagementClient(all.device.managementSocket, 5000).status()) };
      } catch (e) {
        if (!(e instanceof EdgeTrustError) || e.code !== "UNAVAILABLE") throw e;
        const log = createLogger("device-identity", { level: "error" });
        const keys = await openKeyStore(all.hsm, { logger: log });
        try {
          const id = identityFromConfig(all.device, all.hsm, { keys, log });
          await id.load();
          st = { running: false, ...id.status() };
        } finally {
          await keys.close();
        }
      }
      emit(Boolean(opts.json), st, () => JSON.stringify(st, null, 2));
    }));
}

/** `edgetrust device attest`. */
function attestCommand(readConfig: ConfigReader<DeviceCliConfig>): Command {
  return new Command("attest")
    .description("Remote attestation: nonce from ca-service, evidence signed by the device key (via the daemon), the CA's EAR result")
    .option("-c, --config <file>", "edgetrust.yaml", "/etc/edgetrust/edgetrust.yaml")
    .option("--json", "machine-readable output")
    .action(action(async (opts: { config: string; json?: boolean }) => {
      const all = readConfig({ file: opts.config });
      const bundle = readFileSync(`${all.device.stateDir}/ca-bundle.pem`, "utf8");
      const ca = new CaClient(all.device.caUrl, [bundle]);
      const { body: n } = await ca.json<{ nonce: string }>("POST", "/v1/attestation/nonce", {});
      const evidence = await new ManagementClient(all.device.managementSocket).evidence(n.nonce);
      const { body: r } = await ca.json<{ status: string; result: string; claims: Record<string, { status: string; reason?: string }> }>("POST", "/v1/attestation/verify", { evidence });
      emit(Boolean(opts.json), r, () => [`attestation: ${r.status}`, ...Object.entries(r.claims).map(([k, v]) => `  ${k}: ${v.status}${v.reason ? ` — ${v.reason}` : ""}`)].join("\n"));
      if (r.status === "contraindicated") process.exitCode = 1;
    }));
}

/** `edgetrust device provision|run|status|attest`. */
export function deviceCommand(readConfig: ConfigReader<DeviceCliConfig>): Command {
  const device = new Command("device").description("Device identity daemon: provisioning, renewal, Edge CA, workload and management sockets, attestation");

  device.addCommand(provisionCommand(readConfig));
  device.addCommand(runCommand(readConfig));
  device.addCommand(statusCommand(readConfig));
  device.addCommand(attestCommand(readConfig));

  return device;
}
