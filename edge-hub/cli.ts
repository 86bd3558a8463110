import { readFileSync, watchFile, unwatchFile } from "node:fs";
import { join } from "node:path";
import type { SecureContextOptions } from "node:tls";
import * as x509 from "@peculiar/x509";
import { Command } from "commander";
import { EdgeTrustError, createLogger, action, emit, type ConfigReader, type LogSection } from "../common/index.js";
import { openKeyStore, tlsCredentialsFromFile, tlsKeyFromSpec, type HsmConfig, type KeyStore } from "../hsm/index.js";
import type { HubConfig } from "./config.js";
import { loadPolicy } from "../policy/index.js";
import { ManagementAttestationSource, ManagementClient, type AttestationSource, type ModuleAttestationState } from "../identity-api/index.js";
import { MemoryAttestationSource } from "./attestation.js";
// The client module only (not device-identity's index): the daemon's side imports nothing of the hub at run time.
import { certificateIdentity } from "../pki/index.js";
import { CrlCache } from "./crl.js";
import { EdgeHub } from "./hub.js";
import { policyGrantsSas } from "./sas-auth.js";
import { HubMetrics, serveMetrics } from "./metrics.js";
import { Redactor, loadOrCreateSecret } from "./privacy.js";
import { parseRoutes, type Route } from "./routes.js";
import { HubStore } from "./store.js";
import { Upstream, type UpstreamTls } from "./upstream.js";
import { ClientVerifier } from "./verify.js";

/** The sections of edgetrust.yaml these commands read (the command tree hands in a reader of the whole file). */
type HubCliConfig = { log: LogSection; hsm: HsmConfig; hub: HubConfig };

function certs(file: string): x509.X509Certificate[] {
  const text = readFileSync(file, "utf8");
  const pems = text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (pems.length === 0) throw new EdgeTrustError("INVALID_CONFIG", `${file} holds no PEM certificate`);
  return pems.map((p) => new x509.X509Certificate(p));
}

/** `edgetrust hub run`. */
function runCommand(readConfig: ConfigReader<HubCliConfig>): Command {
  return new Command("run")
    .description("Run the edge hub until SIGTERM/SIGINT (SIGHUP reloads the server certificate and the CRL)")
    .option("-c, --config <file>", "edgetrust.yaml", "/etc/edgetrust/edgetrust.yaml")
    .action(action(async (opts: { config: string }) => {
      const all = readConfig({ file: opts.config });
      const cfg = all.hub;
      const log = createLogger("edge-hub", { level: all.log.level });
      let store: KeyStore | undefined;
      const hsm = async () => (store ??= await openKeyStore(all.hsm, { logger: log }));
      const serverTls = async (): Promise<SecureContextOptions> => {
        const cert = readFileSync(cfg.serverCertFile);
        return { cert, ...(await tlsKeyFromSpec(cfg.serverKey, hsm, all.hsm, cert)) };
      };

      const policy = loadPolicy(cfg.policyFile).policy;
      const edgeCas = certs(cfg.edgeCaFile);
      const issuingCas = certs(cfg.issuingCaFile);
      const deviceId = certificateIdentity(edgeCas[0] as x509.X509Certificate).deviceId;
      let attestation: AttestationSource;
      let following: ManagementAttestationSource | undefined;
      if (cfg.attestationFile) {
        const memory = new MemoryAttestationSource();
        const m = JSON.parse(readFileSync(cfg.attestationFile, "utf8")) as Record<string, Record<string, ModuleAttestationState>>;
        for (const [d, mods] of Object.entries(m)) for (const [name, st] of Object.entries(mods)) memory.register(d, name, st);
        attestation = memory;
      } else {
        following = new ManagementAttestationSource(new ManagementClient(cfg.managementSocket), deviceId, { log });
        await following.start();
        attestation = following;
      }
      const crl = new CrlCache({ source: cfg.crlSource, cacheDir: join(cfg.stateDir, "crl"), issuers: issuingCas, require: cfg.crlRequired, log });
      await crl.start();
      const hubStore = new HubStore(join(cfg.stateDir, "hub.db"), { maxMessages: cfg.outboxMaxMessages, maxBytes: cfg.outboxMaxBytes });
      const metrics = new HubMetrics(() => hubStore.depth().messages, true);
      let upstream: Upstream | undefined;
      if (cfg.upstreamUrl) {
        // Read before every (re)connect: the device certificate and the key that belongs to it (a rekey renewal
        // moves it between <label> and <label>.1) are what is in force now, not what was at start.
        const upstreamTls = async (): Promise<UpstreamTls> =>
          ({ ...(await tlsCredentialsFromFile(cfg.upstreamKey, () => readFileSync(cfg.upstreamCertFile), hsm, all.hsm)), ca: readFileSync(cfg.upstreamCaFile) }) as UpstreamTls;
        await upstreamTls();
        upstream = new Upstream({
          url: cfg.upstreamUrl, clientId: deviceId,
          tls: upstreamTls,
          store: hubStore, maxInflight: cfg.maxInflight, drainRatePerSecond: cfg.drainRatePerSecond, reconnectMs: 2000,
          persistentSession: cfg.upstreamPersistentSession, log,
        });
      }
      const clientCa = [...certs(cfg.trustBundleFile), ...issuingCas, ...edgeCas].map((c) => c.toString("pem"));
      const verifier = new ClientVerifier({ trustDomain: cfg.trustDomain, edgeCas, issuingCas, crl, attestation });
      const edgeHub = new EdgeHub({
        host: cfg.host, port: cfg.port, serverTls,
        clientCa,
        verifier,
        attestation, policy,
        limits: { maxPayloadBytes: cfg.maxPayloadBytes, maxTopicLevels: cfg.maxTopicLevels, allowRootWildcard: cfg.allowRootWildcard },
        store: hubStore, routes: routesFromFile(cfg.routesFile), routeOptions: cfg.routeOptions,
        defaultRoute: { priority: cfg.routePriority, ttlSeconds: cfg.routeTtlSeconds },
        redactor: new Redactor(policy.privacy?.redact ?? [], loadOrCreateSecret(join(cfg.stateDir, "privacy.key"))),
        ...(upstream ? { upstream } : {}),
        upstreamTopicPrefix: cfg.upstreamTopicPrefix, crl, metrics, log,
        methodConnectWaitMs: cfg.methodConnectWaitSeconds * 1000, c2d: { ttlSeconds: cfg.c2dTtlSeconds, maxMessages: cfg.c2dMaxMessages },
        // Modules granted `auth: sas`: their tokens are checked by the identity daemon, whose HSM holds the keys.
        ...(policyGrantsSas(policy) && !cfg.attestationFile ? { sas: new ManagementClient(cfg.managementSocket) } : {}),
      });
      await edgeHub.start();
      const m = cfg.metricsPort ? await serveMetrics(metrics, "127.0.0.1", cfg.metricsPort) : undefined;
      crl.watch(cfg.crlRefreshSeconds);
      const reload = () => void edgeHub.reloadServerCertificate().catch((e: unknown) => log.error({ err: (e as Error).message }, "server certificate reload failed"));
      watchFile(cfg.serverCertFile, { interval: 5000 }, reload);
      // Edge CA renewal: old and new overlap in the file; accept both, keep every live connection.
      const reloadCas = () => {
        try {
          const fresh = certs(cfg.edgeCaFile);
          const issuers = certs(cfg.issuingCaFile);
          verifier.setCas(fresh, issuers);
          clientCa.splice(0, clientCa.length, ...[...certs(cfg.trustBundleFile), ...issuers, ...fresh].map((c) => c.toString("pem")));
          reload();
          log.info({ edgeCas: fresh.length }, "Edge CA certificates reloaded");
        } catch (e) {
          log.error({ err: (e as Error).message }, "Edge CA reload failed; keeping the previous ones");
        }
      };
      watchFile(cfg.edgeCaFile, { interval: 5000 }, reloadCas);
      process.on("SIGHUP", () => {
        reloadCas();
        void crl.refresh().catch(() => undefined);
      });
      emit(false, {}, () => `edge hub listening on ${cfg.host}:${edgeHub.boundPort}`);
      await new Promise<void>((resolve) => {
        const stop = () => resolve();
        process.once("SIGTERM", stop);
        process.once("SIGINT", stop);
      });
      crl.unwatch();
      unwatchFile(cfg.serverCertFile);
      unwatchFile(cfg.edgeCaFile);
      await following?.stop();
      await edgeHub.stop();
      await new Promise<void>((r) => (m ? m.server.close(() => r()) : r()));
      await store?.close();
    }));
}

/** `edgetrust hub routes`. */
function routesCommand(): Command {
  return new Command("routes")
    .description("Check the routes of a manifest (or {routes} file) and print them parsed")
    .argument("<file>", "manifest payload JSON, JWS General JSON, or {routes: {...}}")
    .option("--json", "print JSON")
    .action(action((file: string, opts: { json?: boolean }) => {
      const routes = routesFromFile(file);
      emit(Boolean(opts.json), { ok: true, routes }, () => routes.map((r) => `${r.name}: ok (${r.sink.kind === "upstream" ? "$upstream" : `module ${r.sink.module} input ${r.sink.input}`})`).join("\n") || "no routes");
    }));
}

/** The `routes` of an accepted manifest: its payload JSON, a JWS General JSON whose payload is the manifest, or {routes}. */
function routesFromFile(file: string): Route[] {
  if (!file) return [];
  let doc = JSON.parse(readFileSync(file, "utf8")) as { routes?: Record<string, string>; payload?: string };
  if (typeof doc.payload === "string") doc = JSON.parse(Buffer.from(doc.payload, "base64url").toString("utf8")) as typeof doc;
  return parseRoutes(doc.routes ?? {});
}


export function hubCommand(readConfig: ConfigReader<HubCliConfig>): Command {
  const hub = new Command("hub").description("Edge hub: mTLS MQTT broker for attested modules and leaf devices");
  hub.addCommand(runCommand(readConfig));
  hub.addCommand(routesCommand());
  return hub;
}
