import { readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { EdgeTrustError, createLogger, isEdgeTrustError, unixSocketPathProblem, writeFileAtomic, type Logger } from "../common/index.js";
import { WORKLOAD_SOCKET_NAME } from "../identity-api/index.js";
import { DEFAULT_ENGINE, readPin, tlsKeyOptions, type HsmConfig, type KeyStore } from "../hsm/index.js";
import { ContainerWatch, DockerClient, LABELS } from "../engine/index.js";
import { loadPolicy } from "../policy/index.js";
import type { ApiServer } from "./api-server.js";
import { AttestedModules, type AttestedModule } from "./attested-modules.js";
import type { CaClient } from "./ca-client.js";
import type { DeviceConfig } from "./config.js";
import { containerChecker, containerPid, type ContainerVerdict } from "./container-check.js";
import { checkCaller } from "./peer.js";
import { ModuleEventLog, LocalAttestationSource } from "./events.js";
import { sha256File, signEvidence, type Measurements } from "./evidence.js";
import { HsmGuard } from "./hsm-guard.js";
import { DeviceIdentity, type IdentityOptions } from "./identity.js";
import { startManagementApi } from "./management-api.js";
import { issueModuleCertificate } from "./module-issuer.js";
import { WorkloadSockets } from "./workload-api.js";
import { SasKeys, sasSigner } from "./sas.js";

/** `30d`, `12h`, `90m` → seconds (policy durations). */
/**
 * The config's socket paths, before the HSM is opened or anything written: loadConfig checks them too, but a daemon
 * started from code (tests, embedding) gets its config without it.
 */
function assertSocketPaths(cfg: DeviceConfig): void {
  const checks: Array<[string, string]> = [
    ["device.managementSocket", cfg.managementSocket],
    ["device.dockerSocket", cfg.dockerSocket],
    ["device.workloadDir", join(cfg.workloadDir, "m", WORKLOAD_SOCKET_NAME)],
  ];
  for (const [key, path] of checks) {
    const problem = unixSocketPathProblem(path);
    if (problem) throw new EdgeTrustError("INVALID_CONFIG", `${key}: ${problem}`, { hint: "choose a shorter path" });
  }
}

function seconds(d: string): number {
  const m = /^([1-9][0-9]*)(m|h|d)$/.exec(d);
  if (!m) throw new EdgeTrustError("INVALID_CONFIG", `duration ${JSON.stringify(d)} must be <n>m, <n>h or <n>d`);
  return Number(m[1]) * (m[2] === "m" ? 60 : m[2] === "h" ? 3600 : 86400);
}

/** Renewal thresholds and module lifetime: the policy's `certificates` section when a policy file is given. */
function certificateSettings(cfg: DeviceConfig): { renewAtPercent: IdentityOptions["renewAtPercent"]; moduleLifetimeSeconds: number } {
  const out = { renewAtPercent: { device: cfg.renewAtPercent, edgeCa: cfg.renewAtPercent, hub: cfg.renewAtPercent }, moduleLifetimeSeconds: cfg.moduleLifetimeSeconds };
  if (!cfg.policyFile) return out;
  const c = loadPolicy(cfg.policyFile).policy.certificates;
  if (c?.device) out.renewAtPercent.device = c.device.renewAt;
  if (c?.edgeCa) out.renewAtPercent.edgeCa = c.edgeCa.renewAt;
  if (c?.hub) out.renewAtPercent.hub = c.hub.renewAt;
  if (c?.module) out.moduleLifetimeSeconds = seconds(c.module.lifetime);
  return out;
}

interface IdentityFromConfigOptions {
  keys: KeyStore;
  log: Logger;
  now?: () => Date;
  attestationForRenewal?: (ca: CaClient) => Promise<string>;
  hsmProblem?: () => string | undefined;
  /** Called whenever a renewal is about to do TLS with a token key (the OpenSSL engine then holds token sessions). */
  onTlsKey?: () => void;
}

/** A DeviceIdentity from the `device` and `hsm` config sections. */
export function identityFromConfig(cfg: DeviceConfig, hsm: HsmConfig, o: IdentityFromConfigOptions): DeviceIdentity {
  if (!cfg.deviceId) throw new EdgeTrustError("INVALID_CONFIG", "device.deviceId is not set", { hint: "set device.deviceId (or EDGETRUST_DEVICE_DEVICEID)" });
  const settings = certificateSettings(cfg);
  let pin: string | undefined;
  return new DeviceIdentity({
    deviceId: cfg.deviceId,
    trustDomain: cfg.trustDomain,
    ...(cfg.hostName ? { hostName: cfg.hostName } : {}),
    stateDir: cfg.stateDir,
    keys: o.keys,
    keyAlgorithm: cfg.keyAlgorithm,
    hubKeyLabel: cfg.hubKeyLabel,
    tlsKey: async (label) => {
      o.onTlsKey?.();
      if (o.keys.kind === "pkcs11") pin ??= readPin({ pinFile: hsm.pinFile, pinEnv: hsm.pinEnv });
      // The configured .so path backs one TLS context per process; let the key source pick the registered engine id.
      return tlsKeyOptions(o.keys, { label }, { ...(hsm.engine !== DEFAULT_ENGINE ? { engine: hsm.engine } : {}), module: hsm.module, tokenLabel: hsm.tokenLabel, ...(pin ? { pin } : {}) });
    },
    caUrl: cfg.caUrl,
    caTrust: cfg.caTrustFile ? [readFileSync(cfg.caTrustFile, "utf8")] : [],
    renewAtPercent: settings.renewAtPercent,
    hubLifetimeSeconds: cfg.hubLifetimeSeconds,
    rotateKeys: cfg.rotateKeys,
    retryInitialMs: cfg.retryInitialSeconds * 1000,
    retryMaxMs: cfg.retryMaxSeconds * 1000,
    log: o.log,
    ...(o.now ? { now: o.now } : {}),
    ...(o.attestationForRenewal ? { attestationForRenewal: o.attestationForRenewal } : {}),
    ...(o.hsmProblem ? { hsmProblem: o.hsmProblem } : {}),
  });
}

/**
 * The file that holds the code running this daemon: its bundle (`dist/daemons/device.mjs`, where the whole daemon is)
 * when it runs from one — `process.argv[1]` is then only the `bin/edgetrust.js` launcher — else the entry script.
 */
export function runningCodeFile(moduleUrl: string, entry: string | undefined): string {
  const self = fileURLToPath(moduleUrl);
  return /[\\/]daemons[\\/][a-z]+\.mjs$/.test(self) ? self : (entry ?? "");
}

/** Measurements for attestation evidence, from the configured files and the attested-module registry. */
function collectMeasurements(cfg: DeviceConfig, modules: AttestedModules): Measurements {
  const m = cfg.measurements;
  let version = 0;
  if (existsSync(m.manifestFile)) {
    try {
      let doc = JSON.parse(readFileSync(m.manifestFile, "utf8")) as { version?: number; payload?: string };
      if (typeof doc.payload === "string") doc = JSON.parse(Buffer.from(doc.payload, "base64url").toString("utf8")) as typeof doc;
      version = typeof doc.version === "number" ? doc.version : 0;
    } catch {
      version = 0;
    }
  }
  return {
    agent: sha256File(m.agentFile || runningCodeFile(import.meta.url, process.argv[1])),
    policy: sha256File(m.policyFile),
    trustRoot: sha256File(m.trustRootFile),
    manifest: { digest: sha256File(m.manifestFile), version },
    modules: Object.fromEntries(modules.list().map((x) => [x.name, { imageDigest: x.imageDigest, manifestVersion: x.manifestVersion }])),
  };
}

interface DaemonOptions {
  config: DeviceConfig;
  hsm: HsmConfig;
  log?: Logger;
  /** Use this key store (tests, embedding) instead of opening the one `hsm` describes; the daemon does not close it. */
  keys?: KeyStore;
  now?: () => Date;
  /** Override the container check (default: the Docker Engine API on config.dockerSocket). */
  checkContainer?: (m: AttestedModule, opts: { allowCreated?: boolean }) => Promise<ContainerVerdict>;
  attestationForRenewal?: (ca: CaClient) => Promise<string>;
  /** Stop waiting for an HSM that is unavailable at start (SIGTERM). */
  signal?: AbortSignal;
}

/**
 * `edgetrust device run`: one process holding the HSM session, the identity (renewed on schedule, offline-tolerant),
 * the management socket for the agent, one workload socket per attested module, and the hub server certificate file.
 */
export class DeviceDaemon {
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private checking: Promise<void> = Promise.resolve();
  /** Set after an HSM outage when the OpenSSL engine still holds sessions from before it (see `restart`). */
  engineStale = false;
  private restartWith: ((reason: string) => void) | undefined;
  /**
   * Resolves with a reason when this process must be replaced: after an HSM outage the module was finalised and
   * initialised again (SoftHSM sees a returned token no other way), which module certificates survive (pkcs11js
   * reopened its sessions) but the OpenSSL pkcs11 engine does not — libp11 keeps its old session handles. So the next
   * renewal, which needs mTLS with a token key, is done by a fresh process: `device run` stops cleanly and exits 75,
   * and the supervisor (systemd Restart=on-failure) starts it again.
   */
  readonly restart = new Promise<string>((resolve) => { this.restartWith = resolve; });

  private constructor(
    readonly config: DeviceConfig,
    readonly identity: DeviceIdentity,
    readonly modules: AttestedModules,
    readonly events: ModuleEventLog,
    readonly sockets: WorkloadSockets,
    readonly management: ApiServer,
    readonly hsm: HsmGuard,
    readonly log: Logger,
    /** The engine's container state in memory (absent when the container check is overridden). */
    readonly containers: ContainerWatch | undefined,
  ) {}

  /** The hub's AttestationSource when the hub runs in this process. */
  attestationSource(): LocalAttestationSource {
    return new LocalAttestationSource(this.modules, this.events, this.config.deviceId);
  }

  static async start(o: DaemonOptions): Promise<DeviceDaemon> {
    const cfg = o.config;
    assertSocketPaths(cfg);
    const log = o.log ?? createLogger("device-identity");
    // HSM unavailable at start (module, token, PIN): one doctor line, then wait for it with backoff; nothing is served
    // (no management or workload socket) until it opens. A refused PIN is never tried twice.
    const hsm = await HsmGuard.open({ hsm: o.hsm, log, retryMs: cfg.hsmRetrySeconds * 1000, maxRetryMs: cfg.hsmRetryMaxSeconds * 1000, ...(o.keys ? { keys: o.keys } : {}), ...(o.signal ? { signal: o.signal } : {}) });
    const keys = hsm.keys;
    let watch: ContainerWatch | undefined;
    try {
      const daemonRef: { d?: DeviceDaemon } = {};
      // With the CA's attestation gate on: nonce → evidence signed by the device key → EAR result sent with the renewal.
      const attest = o.attestationForRenewal ?? (cfg.requireAttestationForRenewal ? async (ca: CaClient): Promise<string> => {
        const { body: n } = await ca.json<{ nonce: string }>("POST", "/v1/attestation/nonce", {});
        const evidence = await daemonRef.d!.evidence(n.nonce);
        const { body: r } = await ca.json<{ status: string; result: string }>("POST", "/v1/attestation/verify", { evidence });
        if (r.status !== "affirming") log.warn({ status: r.status }, "attestation result is not affirming; the CA may refuse the renewal");
        return r.result;
      } : undefined);
      let engineUsed = false;
      const identity = identityFromConfig(cfg, o.hsm, { keys, log, hsmProblem: () => hsm.problem(), onTlsKey: () => { engineUsed = true; }, ...(o.now ? { now: o.now } : {}), ...(attest ? { attestationForRenewal: attest } : {}) });
      await identity.load();
      // Mid-run, the HSM is judged by signing with the key module certificates need.
      hsm.probeKey = () => ({ label: identity.current().keys.edgeCa, algorithm: cfg.keyAlgorithm });
      const docker = new DockerClient({ socketPath: cfg.dockerSocket });
      // Container state from the engine's event stream: a module certificate costs no engine call while it is followed;
      // when it is not (engine restarting, stream lost), each check asks the engine, never stale memory.
      watch = o.checkContainer ? undefined : new ContainerWatch(docker, { labels: { [LABELS.module]: true, [LABELS.device]: cfg.deviceId }, log });
      await watch?.start();
      const pidOf = containerPid(docker, watch);
      const check = o.checkContainer ?? containerChecker(docker, watch);
      const settings = certificateSettings(cfg);
      const modules = new AttestedModules(join(cfg.stateDir, "attested-modules.json"));
      const events = new ModuleEventLog(modules);
      // Modules granted `auth: sas` get an HMAC key in the HSM at registration (erased at deregistration).
      const sas = keys.mac ? new SasKeys({ deviceId: cfg.deviceId, mac: keys.mac, modules, log }) : undefined;
      await sas?.sweep();
      const sockets = new WorkloadSockets(cfg.workloadDir, modules, {
        issueModuleCertificate: async (m, csr) => {
          identity.assertCanIssue(m);
          if (hsm.problem()) throw hsm.unavailable(`no certificate for module ${m.name} now: the HSM is unavailable`);
          return issueModuleCertificate({
            trustDomain: cfg.trustDomain, deviceId: cfg.deviceId, lifetimeSeconds: settings.moduleLifetimeSeconds,
            edgeCa: () => edgeCa, checkContainer: (x) => check(x, {}),
          }, m, csr);
        },
        trustBundle: () => identity.trustBundle(),
        checkCaller: (m, socket) => checkCaller(docker, m, socket, pidOf),
        ...(sas ? { sasSign: sasSigner(sas, (x) => check(x, {}), () => (hsm.problem() ? hsm.unavailable("no SAS signature now: the HSM is unavailable") : undefined)) } : {}),
      }, log);
      let edgeCa = await identity.edgeCa();
      const writeHubCert = (): void => {
        const s = identity.current();
        writeFileAtomic(cfg.hubServerCertFile, [s.hub.cert, s.edgeCa.cert, ...s.edgeCa.chain].join(""), 0o644);
      };
      identity.onChange(async () => {
        edgeCa = await identity.edgeCa();
        writeHubCert();
      });
      writeHubCert();
      const management = await startManagementApi({
        path: cfg.managementSocket, modules, sockets, events, log, ...(sas ? { sas } : {}),
        backend: {
          checkContainer: (m) => check(m, { allowCreated: true }),
          status: () => ({ ...identity.status(), hsm: hsm.status(), modules: modules.list().length, managementSocket: cfg.managementSocket, ...(watch ? { engineEvents: { followed: watch.live, ...watch.stats } } : {}) }),
          renew: async (kind, rekey) => {
            if (hsm.problem()) throw hsm.unavailable(`cannot renew the ${kind} certificate now: the HSM is unavailable`);
            await identity.renew(kind, rekey);
            return identity.status();
          },
          evidence: async (nonce) => daemonRef.d!.evidence(nonce),
        },
      });
      const d = new DeviceDaemon(cfg, identity, modules, events, sockets, management, hsm, log, watch);
      daemonRef.d = d;
      // The HSM is back: renewals that waited for it go now (issuance resumes by itself: the guard lets calls through).
      hsm.onRecovered(() => {
        if (engineUsed && !o.keys && o.hsm.backend === "pkcs11") d.engineStale = true;
        identity.hsmRecovered();
        void d.runCheck();
      });
      // Modules registered before a restart get their sockets back; issuance re-checks their containers every time.
      // One module whose socket path no longer fits (device.workloadDir made longer) must not keep the others' off.
      for (const m of modules.list()) {
        try {
          await sockets.open(m);
        } catch (e) {
          if (!isEdgeTrustError(e) || e.code !== "INVALID_INPUT") throw e;
          log.error({ module: m.name, err: e.message }, "workload socket not opened");
        }
      }
      await d.runCheck();
      log.info({ deviceId: cfg.deviceId, managementSocket: cfg.managementSocket, modules: modules.list().length }, "device identity daemon running");
      return d;
    } catch (e) {
      watch?.stop();
      await hsm.close();
      throw e;
    }
  }

  /** Evidence for a verifier's nonce, signed by the device key in the HSM. */
  async evidence(nonce: string): Promise<string> {
    const s = this.identity.current();
    return signEvidence({
      store: this.hsm.keys, keyLabel: s.keys.device, deviceUri: this.identity.deviceUri(), chainPem: [s.device.cert, ...s.device.chain],
      nonce, measurements: collectMeasurements(this.config, this.modules), now: this.identity.now(),
    });
  }

  /** One renewal pass now, then the next one scheduled (never more than checkIntervalSeconds away: clock jumps). */
  runCheck(): Promise<void> {
    this.checking = this.checking.then(async () => {
      if (this.stopped) return;
      if (this.timer) clearTimeout(this.timer);
      let wait = this.config.checkIntervalSeconds * 1000;
      if (this.engineStale) {
        const due = Object.entries(this.identity.assess()).filter(([k, a]) => k !== "hub" && (a.status === "due" || a.status === "expired")).map(([k]) => k);
        if (due.length > 0) {
          const reason = `renewal of ${due.join(", ")} is due and the OpenSSL pkcs11 engine still holds token sessions from before the HSM outage: a fresh process renews`;
          this.log.error({ due }, `restarting: ${reason}`);
          this.restartWith?.(reason);
          return;
        }
      }
      try {
        wait = await this.identity.check(wait);
      } catch (e) {
        this.log.error({ err: (e as Error).message }, "renewal check failed");
      }
      if (!this.stopped) {
        this.timer = setTimeout(() => void this.runCheck(), Math.max(1000, wait));
        this.timer.unref();
      }
    });
    return this.checking;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.checking;
    this.events.close();
    this.containers?.stop();
    await this.management.close();
    await this.sockets.closeAll();
    await this.hsm.close();
    this.log.info("device identity daemon stopped");
  }
}
