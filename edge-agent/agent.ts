import { existsSync, readFileSync, mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { writeFileAtomic, type Logger, backoffDelay } from "../common/index.js";
import { ManifestStateStore, moduleAuth, verifyManifest, type Manifest, type Policy, type TrustRoot, type Verdict } from "../policy/index.js";
import { ensureImage, imageStillPinned, type DockerClient, type PullProgress } from "../engine/index.js";
import { containerName, createModuleContainer, listManaged, type ManagedContainer } from "./containers.js";
import { containerPlan, modulesInOrder, userIds, type PlannedModule } from "./plan.js";
import { DEFAULT_IOTEDGE, iotEdgeEnvironment, newGenerationId, type IotEdgeSettings } from "./iotedge-env.js";
import { atStep, describeFailure, failureLine, type DeploymentFailure } from "./deployment.js";

/** What the agent asks of the device identity daemon (its management socket). */
export interface IdentityRegistrar {
  /** Host directory the daemon puts this module's workload socket in (mounted into that container only). */
  workloadSocketDir(module: string): string;
  register(m: {
    name: string;
    containerId: string;
    imageRepository: string;
    imageDigest: string;
    manifestVersion: number;
    deploymentId: string;
    uid: number;
    gid: number;
    auth?: "x509" | "sas";
    generationId?: string;
  }): Promise<void>;
  deregister(name: string, reason: string): Promise<void>;
  registered(): Promise<Array<{ name: string; containerId: string }>>;
}

type ModuleState = "running" | "starting" | "restarting" | "exited" | "failed" | "stopped";

export interface ModuleStatus {
  name: string;
  state: ModuleState;
  containerId?: string;
  imageDigest: string;
  restarts: number;
  reason?: string;
}

export interface AgentReport {
  at: string;
  kind: "manifest-accepted" | "manifest-rejected" | "module-status" | "last-known-good" | "deployment-failed";
  deviceId: string;
  deploymentId?: string;
  version?: number;
  reasons?: string[];
  warnings?: string[];
  modules?: ModuleStatus[];
}

interface AgentOptions {
  docker: DockerClient;
  identity: IdentityRegistrar;
  policy: Policy;
  trustRoot: TrustRoot;
  deviceId: string;
  /** Holds current.jws (last-known-good) and manifest-state.json. */
  stateDir: string;
  log: Logger;
  report?: (r: AgentReport) => void;
  onPull?: (module: string, p: PullProgress) => void;
  now?: () => Date;
  /** Restart backoff: first delay and cap (ms). */
  backoff?: { baseMs: number; maxMs: number };
  /** Host names given to modules granted `auth: sas` (IOTEDGE_IOTHUBHOSTNAME, IOTEDGE_GATEWAYHOSTNAME). */
  iotEdge?: IotEdgeSettings;
}

interface Supervised {
  planned: PlannedModule;
  containerId: string;
  imageId: string;
  restarts: number;
  nextRestartAt: number;
  state: ModuleState;
  reason?: string;
}

interface ApplyResult {
  verdict: Verdict;
  /** True when the verified manifest is now what runs. */
  applied: boolean;
  modules: ModuleStatus[];
  /** A manifest that verified but could not be applied: why, and what the device is back on. */
  failure?: DeploymentFailure;
}

/**
 * The attested boot flow (DESIGN.md §3, steps 2–5): verify the manifest before anything runs, pull by digest, create
 * containers within policy, register each as attested with device-identity, start in order, then keep the engine
 * equal to the manifest. A rejected manifest changes nothing.
 */
export class EdgeAgent {
  private readonly store: ManifestStateStore;
  private readonly lkgFile: string;
  /** The manifest being applied: written before anything changes, so a crash mid-apply resumes it at boot. */
  private readonly pendingFile: string;
  /** The last manifest that verified but failed to apply: not retried (and churned) until a new one arrives. */
  private failed: { payloadDigest: string; failure: DeploymentFailure } | undefined;
  private manifest: Manifest | undefined;
  private supervised = new Map<string, Supervised>();
  private timer: NodeJS.Timeout | undefined;
  private busy: Promise<unknown> = Promise.resolve();

  constructor(private readonly o: AgentOptions) {
    mkdirSync(o.stateDir, { recursive: true });
    this.store = new ManifestStateStore(join(o.stateDir, "manifest-state.json"));
    this.lkgFile = join(o.stateDir, "current.jws");
    this.pendingFile = join(o.stateDir, "pending.jws");
  }

  private now(): Date {
    return this.o.now?.() ?? new Date();
  }

  private emit(r: Omit<AgentReport, "at" | "deviceId">): void {
    this.o.report?.({ at: this.now().toISOString(), deviceId: this.o.deviceId, ...r });
  }

  /** One operation at a time: apply, boot and supervision ticks never interleave. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.busy.then(fn, fn);
    this.busy = next.catch(() => undefined);
    return next;
  }

  current(): Manifest | undefined {
    return this.manifest;
  }

  /**
   * Boot from the last-known-good manifest on disk. It is re-verified (signatures, policy, target) as of the time it
   * was accepted, so an expiry that passed while the device was offline does not stop a deployment that was valid.
   * A manifest newer than the state (an update interrupted before it was recorded) is verified as a new one.
   */
  boot(): Promise<ApplyResult | undefined> {
    return this.serial(async () => {
      const resumed = await this.resumePending();
      if (resumed?.applied) return resumed;
      if (!existsSync(this.lkgFile)) return resumed;
      const bytes = readFileSync(this.lkgFile);
      const state = this.store.read();
      const acceptedAt = state ? new Date(state.acceptedAt) : undefined;
      let verdict = await this.verify(bytes, true, acceptedAt);
      if (!verdict.ok && state && verdict.version !== undefined && verdict.version > state.version) verdict = await this.verify(bytes, false);
      if (!verdict.ok || !verdict.manifest) {
        this.emit({ kind: "manifest-rejected", reasons: verdict.reasons.map((r) => `${r.check}: ${r.message}`) });
        return { verdict, applied: false, modules: [] };
      }
      this.store.accept(verdict, this.o.deviceId, acceptedAt ?? this.now());
      const warnings = new Date(verdict.manifest.expiresAt) <= this.now() ? ["last-known-good manifest has expired; waiting for a fresh one"] : [];
      this.emit({ kind: "last-known-good", deploymentId: verdict.manifest.deploymentId, version: verdict.manifest.version, warnings });
      const modules = await this.reconcileTo(verdict.manifest);
      return { verdict, applied: true, modules };
    });
  }

  /** Verify a new manifest and, only if it passes, make it the deployment — all of it, or none of it. */
  apply(bytes: string | Uint8Array): Promise<ApplyResult> {
    return this.serial(async () => {
      // The exact accepted manifest again is harmless (it re-reconciles); any other bytes at that version are a replay.
      const verdict = await this.verify(bytes, true);
      if (!verdict.ok || !verdict.manifest) {
        this.o.log.warn({ reasons: verdict.reasons }, "manifest rejected; keeping last-known-good");
        this.emit({ kind: "manifest-rejected", reasons: verdict.reasons.map((r) => `${r.check}: ${r.message}`), ...(verdict.version !== undefined ? { version: verdict.version } : {}) });
        return { verdict, applied: false, modules: this.status() };
      }
      if (this.failed && this.failed.payloadDigest === verdict.payloadDigest) {
        return { verdict, applied: false, modules: this.status(), failure: this.failed.failure };
      }
      return this.applyVerified(bytes, { ...verdict, manifest: verdict.manifest });
    });
  }

  /**
   * Switch to a verified manifest. pending.jws is written first; the accepted state and current.jws move only once
   * every module is pulled, created, registered and started. Any failing step puts the last-known-good back.
   */
  private async applyVerified(bytes: string | Uint8Array, verdict: Verdict & { manifest: Manifest }): Promise<ApplyResult> {
    const manifest = verdict.manifest;
    const data = typeof bytes === "string" ? bytes : Buffer.from(bytes);
    writeFileAtomic(this.pendingFile, data, 0o600);
    try {
      const modules = await this.reconcileTo(manifest, true);
      // Bytes first, state second: a crash in between leaves a newer current.jws that boot verifies as new.
      writeFileAtomic(this.lkgFile, data, 0o600);
      this.store.accept(verdict, this.o.deviceId, this.now());
      rmSync(this.pendingFile, { force: true });
      this.failed = undefined;
      this.emit({ kind: "manifest-accepted", deploymentId: manifest.deploymentId, version: manifest.version, warnings: verdict.warnings.map((w) => w.message) });
      this.emit({ kind: "module-status", deploymentId: manifest.deploymentId, version: manifest.version, modules });
      return { verdict, applied: true, modules };
    } catch (e) {
      rmSync(this.pendingFile, { force: true });
      const failure = await this.rollBack(e);
      if (verdict.payloadDigest) this.failed = { payloadDigest: verdict.payloadDigest, failure };
      const line = failureLine(failure);
      this.o.log.error({ version: manifest.version, step: failure.step, module: failure.module, reason: failure.reason, restoredVersion: failure.restoredVersion }, "deployment failed; rolled back");
      const modules = this.status();
      this.emit({ kind: "deployment-failed", deploymentId: manifest.deploymentId, version: manifest.version, reasons: [line], modules });
      return { verdict, applied: false, modules, failure };
    }
  }

  /** Put the last-known-good back after a failed apply: its modules from their pinned digests, or nothing at all. */
  private async rollBack(cause: unknown): Promise<DeploymentFailure> {
    const what = describeFailure(cause);
    const lkg = await this.lastKnownGood();
    if (!lkg) {
      await this.removeAll("deployment failed; no last-known-good");
      return { ...what, restoredVersion: 0, notRestored: [] };
    }
    const modules = await this.reconcileTo(lkg, false);
    return { ...what, restoredVersion: lkg.version, notRestored: modules.filter((m) => m.state !== "running").map((m) => m.name) };
  }

  /** The accepted manifest on disk, re-verified as of when it was accepted (as boot does); undefined if none. */
  private async lastKnownGood(): Promise<Manifest | undefined> {
    if (!existsSync(this.lkgFile)) return undefined;
    const state = this.store.read();
    const v = await this.verify(readFileSync(this.lkgFile), true, state ? new Date(state.acceptedAt) : undefined);
    return v.ok ? v.manifest : undefined;
  }

  /**
   * An apply interrupted by a crash left pending.jws: apply it again (all-or-nothing) if it still verifies as newer
   * than what was accepted; otherwise drop it and let boot run the last-known-good.
   */
  private async resumePending(): Promise<ApplyResult | undefined> {
    if (!existsSync(this.pendingFile)) return undefined;
    const bytes = readFileSync(this.pendingFile);
    const verdict = await this.verify(bytes, false);
    if (!verdict.ok || !verdict.manifest) {
      rmSync(this.pendingFile, { force: true });
      return undefined;
    }
    this.o.log.info({ version: verdict.manifest.version }, "resuming the deployment a restart interrupted");
    return this.applyVerified(bytes, { ...verdict, manifest: verdict.manifest });
  }

  private async removeAll(reason: string): Promise<void> {
    for (const c of await listManaged(this.o.docker, this.o.deviceId)) await this.removeModuleContainer(c, reason);
    for (const r of await this.o.identity.registered()) await this.o.identity.deregister(r.name, reason);
    this.manifest = undefined;
    this.supervised = new Map();
  }

  private async verify(bytes: string | Uint8Array, reloadAccepted: boolean, at?: Date): Promise<Verdict> {
    return verifyManifest(bytes, {
      policy: this.o.policy,
      trustRoot: this.o.trustRoot,
      deviceId: this.o.deviceId,
      state: this.store.read(),
      now: at ?? this.now(),
      reloadAccepted,
    });
  }

  /**
   * Make the engine equal to the manifest: remove what is not in it, (re)create what differs, start in order.
   * `strict` (a new deployment): every image is pulled before anything running is touched, and the first failing
   * step throws (the caller rolls back). Otherwise (the last-known-good) a module that fails is reported, the rest run.
   */
  private async reconcileTo(manifest: Manifest, strict = false): Promise<ModuleStatus[]> {
    const { docker, identity, log } = this.o;
    const planned = modulesInOrder(manifest);
    if (strict) for (const p of planned) await atStep("pull", p.name, () => ensureImage(docker, p.image, (pr) => this.o.onPull?.(p.name, pr)));
    const wanted = new Set(planned.map((p) => p.name));
    const registered = new Map((await identity.registered()).map((r) => [r.name, r.containerId]));
    const managed = await listManaged(docker, this.o.deviceId);

    for (const c of managed) {
      const keep = wanted.has(c.module) && registered.get(c.module) === c.id;
      if (!keep) await this.removeModuleContainer(c, wanted.has(c.module) ? "container not created by the agent" : "module not in the manifest");
    }
    for (const [name] of registered) {
      if (!wanted.has(name)) await identity.deregister(name, "module not in the manifest");
    }

    const next = new Map<string, Supervised>();
    for (const p of planned) {
      try {
        next.set(p.name, await this.ensureModule(manifest, p, managed, registered.get(p.name)));
      } catch (e) {
        if (strict) throw e;
        const reason = (e as Error).message;
        log.error({ module: p.name, reason }, "module could not be started");
        next.set(p.name, { planned: p, containerId: "", imageId: "", restarts: 0, nextRestartAt: 0, state: "failed", reason });
      }
    }
    this.manifest = manifest;
    this.supervised = next;
    const modules = this.status();
    if (!strict) this.emit({ kind: "module-status", deploymentId: manifest.deploymentId, version: manifest.version, modules });
    return modules;
  }

  private async ensureModule(manifest: Manifest, p: PlannedModule, managed: ManagedContainer[], registeredId: string | undefined): Promise<Supervised> {
    const { docker } = this.o;
    const resolved = await atStep("pull", p.name, () => ensureImage(docker, p.image, (pr) => this.o.onPull?.(p.name, pr)));
    const existing = managed.find((c) => c.module === p.name && c.id === registeredId);
    if (existing && existing.digest === p.image.digest && existing.manifestVersion === manifest.version && existing.imageId === resolved.imageId) {
      if (!existing.running) await docker.startContainer(existing.id);
      return { planned: p, containerId: existing.id, imageId: resolved.imageId, restarts: 0, nextRestartAt: 0, state: "running" };
    }
    if (existing) await this.removeModuleContainer(existing, "replaced by a new deployment");
    const socketDir = this.o.identity.workloadSocketDir(p.name);
    mkdirSync(socketDir, { recursive: true, mode: 0o700 });
    const plan = containerPlan(this.o.deviceId, manifest, p, resolved, socketDir);
    // Policy grants SAS explicitly: the container gets the IoT Edge environment, the daemon a key for this generation.
    const sas = moduleAuth(this.o.policy, p.name) === "sas" ? { auth: "sas" as const, generationId: newGenerationId() } : undefined;
    if (sas) plan.env = { ...plan.env, ...iotEdgeEnvironment({ ...DEFAULT_IOTEDGE, ...this.o.iotEdge, deviceId: this.o.deviceId, module: p.name, generationId: sas.generationId }) };
    const id = await atStep("create", p.name, () => createModuleContainer(docker, plan));
    try {
      await atStep("register", p.name, () => this.o.identity.register({
        name: p.name,
        containerId: id,
        imageRepository: p.image.repository,
        imageDigest: p.image.digest,
        manifestVersion: manifest.version,
        deploymentId: manifest.deploymentId,
        ...userIds(plan.user),
        ...sas,
      }));
    } catch (e) {
      await docker.removeContainer(id);
      throw e;
    }
    await atStep("start", p.name, () => docker.startContainer(id));
    this.o.log.info({ module: p.name, digest: p.image.digest, container: id.slice(0, 12) }, "module attested and started");
    return { planned: p, containerId: id, imageId: resolved.imageId, restarts: 0, nextRestartAt: 0, state: "running" };
  }

  private async removeModuleContainer(c: { id: string; module: string }, reason: string): Promise<void> {
    this.o.log.warn({ module: c.module, container: c.id.slice(0, 12), reason }, "removing container");
    await this.o.docker.removeContainer(c.id, true);
    const reg = (await this.o.identity.registered()).find((r) => r.name === c.module);
    if (reg && reg.containerId === c.id) await this.o.identity.deregister(c.module, reason);
  }

  status(): ModuleStatus[] {
    return [...this.supervised.values()].map((s) => ({
      name: s.planned.name,
      state: s.state,
      ...(s.containerId ? { containerId: s.containerId } : {}),
      imageDigest: s.planned.image.digest,
      restarts: s.restarts,
      ...(s.reason ? { reason: s.reason } : {}),
    }));
  }

  /**
   * One supervision pass: strangers removed, exited modules restarted per their restart policy with exponential
   * backoff, and a module whose image no longer carries its digest is recreated from the pinned digest.
   */
  tick(): Promise<ModuleStatus[]> {
    return this.serial(async () => {
      const manifest = this.manifest;
      if (!manifest) return [];
      const { docker, log } = this.o;
      const managed = await listManaged(docker, this.o.deviceId);
      const ours = new Set([...this.supervised.values()].map((s) => s.containerId));
      for (const c of managed) if (!ours.has(c.id)) await this.removeModuleContainer(c, "container not created by the agent");
      const byName = new Map(managed.map((c) => [c.id, c]));
      const nowMs = Date.now();
      for (const s of this.supervised.values()) {
        const c = byName.get(s.containerId);
        const pinned = c ? await imageStillPinned(docker, c.imageId, s.planned.image) : false;
        if (!c || !pinned) {
          if (c) await this.removeModuleContainer(c, "image no longer carries the attested digest");
          try {
            const fresh = await this.ensureModule(manifest, s.planned, [], undefined);
            Object.assign(s, fresh, { restarts: s.restarts + 1, reason: c ? "recreated: image digest changed" : "recreated: container disappeared" });
          } catch (e) {
            s.state = "failed";
            s.reason = (e as Error).message;
          }
          continue;
        }
        if (c.running) {
          s.state = "running";
          continue;
        }
        const info = await docker.inspectContainer(c.id);
        const exitCode = info?.State.ExitCode ?? 0;
        const policy = s.planned.spec.restartPolicy;
        const restart = policy === "always" || policy === "on-unhealthy" || (policy === "on-failure" && exitCode !== 0);
        if (!restart) {
          s.state = exitCode === 0 ? "stopped" : "exited";
          continue;
        }
        if (nowMs < s.nextRestartAt) {
          s.state = "restarting";
          continue;
        }
        const { baseMs, maxMs } = this.o.backoff ?? { baseMs: 1000, maxMs: 60_000 };
        s.nextRestartAt = nowMs + backoffDelay(s.restarts, { initialMs: baseMs, maxMs });
        s.restarts += 1;
        try {
          await docker.startContainer(c.id);
          s.state = "running";
          log.info({ module: s.planned.name, restarts: s.restarts }, "module restarted");
        } catch (e) {
          s.state = "failed";
          s.reason = (e as Error).message;
        }
      }
      return this.status();
    });
  }

  /** Supervise until stop(): a tick every `intervalMs`; engine outages are logged and retried, never fatal. */
  supervise(intervalMs = 2000): void {
    if (this.timer) return;
    const loop = () => {
      this.tick().catch((e) => this.o.log.warn({ reason: (e as Error).message }, "supervision pass failed; will retry")).finally(() => {
        if (this.timer) this.timer = setTimeout(loop, intervalMs);
      });
    };
    this.timer = setTimeout(loop, intervalMs);
  }

  async stop(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.busy;
  }

  /** Name of the container a module runs in (for humans and tests). */
  static containerName(module: string): string {
    return containerName(module);
  }
}

