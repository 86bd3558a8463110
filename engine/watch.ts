import { EventEmitter } from "node:events";
import { backoffDelay, type Logger } from "../common/index.js";
import type { DockerClient, EngineEvent, EventSubscription } from "./docker.js";

/** What edgetrust needs to know of a container to decide whether it may act for a module. */
interface WatchedContainer {
  id: string;
  status: string;
  running: boolean;
  /** Main process id in the host's pid namespace (0 when not running). */
  pid: number;
  labels: Record<string, string>;
  /** The image ID (config digest) the container was created from; fixed for the container's life. */
  imageId: string;
}

interface WatchedImage {
  id: string;
  repoDigests: string[];
}

/**
 * The engine's answer as far as memory holds it: `undefined` means "memory cannot answer — ask the engine" (stream
 * down or not yet synced, a change announced and not re-read yet, never seen).
 */
type WatchLookup = { exists: false } | { exists: true; container: WatchedContainer; image: WatchedImage | undefined };

interface ContainerWatchOptions {
  /** Only containers carrying these labels (`true`: any value) are followed; events of others are ignored. */
  labels: Record<string, string | true>;
  log?: Logger;
  /** A liveness probe of the engine while the stream is quiet (the stream itself has no heartbeat). */
  pingIntervalMs?: number;
  pingTimeoutMs?: number;
  retryInitialMs?: number;
  retryMaxMs?: number;
}

interface ContainerWatchEvents {
  /** Subscribed and synced: memory answers from now on. */
  live: [];
  /** Memory no longer answers (stream ended, engine unresponsive), with why. */
  down: [string];
  /** The container's state was re-read after an event (or found gone). */
  settled: [string];
  /** Images were re-read after an image event. */
  images: [];
}

/** Container events that may change whether a container may act for a module; every other action is ignored. */
const CONTAINER_ACTIONS = ["create", "start", "restart", "die", "kill", "oom", "stop", "pause", "unpause", "destroy", "rename", "update"];
const IMAGE_ACTIONS = ["tag", "untag", "delete", "import", "load", "pull"];

type Entry = { kind: "ready"; c: WatchedContainer } | { kind: "pending" } | { kind: "gone" };

/** Destroyed containers remembered as gone; beyond this the oldest are forgotten (then asked of the engine). */
const MAX_GONE = 1024;

/**
 * The state of edgetrust's containers held in memory from the engine's event stream (`GET /events`) plus a listing
 * made after subscribing, so that deciding "does this container still run the attested image?" needs no engine call.
 *
 * Fails closed: an event marks its container (or every image) as "re-read pending" the moment it arrives, and memory
 * answers nothing for it until the engine has been asked again. When the stream ends, an engine call fails, or the
 * engine does not answer a ping, everything is forgotten and `lookup` answers `undefined` (the caller then asks the
 * engine directly, or refuses) until a new subscription is open and the state listed again.
 */
export class ContainerWatch extends EventEmitter<ContainerWatchEvents> {
  private readonly containers = new Map<string, Entry>();
  private readonly images = new Map<string, WatchedImage | "pending">();
  /** Bumped by every event for a container: a re-read started before a newer event must not be stored. */
  private readonly versions = new Map<string, number>();
  private imageVersion = 0;
  private gone: string[] = [];
  /** Bumped at every (re)subscription: work of an older subscription is dropped. */
  private epoch = 0;
  private sub: EventSubscription | undefined;
  private isLive = false;
  private stopped = false;
  private attempt = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  private pingTimer: NodeJS.Timeout | undefined;
  private readonly o: Required<Omit<ContainerWatchOptions, "log">> & { log?: Logger };
  /** Counters for status and tests. */
  readonly stats = { syncs: 0, events: 0, rereads: 0, imageRereads: 0, pings: 0, downs: 0 };

  constructor(private readonly docker: DockerClient, opts: ContainerWatchOptions) {
    super();
    this.o = { pingIntervalMs: 5000, pingTimeoutMs: 3000, retryInitialMs: 500, retryMaxMs: 30_000, ...opts };
  }

  get live(): boolean {
    return this.isLive;
  }

  /** Start following the engine. Resolves after the first attempt (live or not: a later one is retried with backoff). */
  async start(): Promise<void> {
    this.stopped = false;
    await this.connect();
    this.pingTimer = setInterval(() => void this.ping(), this.o.pingIntervalMs);
    this.pingTimer.unref();
  }

  stop(): void {
    this.stopped = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.markDown("stopped");
  }

  /** Container `id` as memory knows it, or `undefined`: ask the engine. Never touches the engine. */
  lookup(id: string): WatchLookup | undefined {
    if (!this.isLive) return undefined;
    const e = this.containers.get(id);
    if (!e || e.kind === "pending") return undefined;
    if (e.kind === "gone") return { exists: false };
    const img = this.images.get(e.c.imageId);
    return { exists: true, container: e.c, image: img === "pending" ? undefined : img };
  }

  /** Resolves once memory answers (live), or after `ms` (then `live` is still false). For start-up and tests. */
  waitLive(ms: number): Promise<boolean> {
    if (this.isLive) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = setTimeout(() => { this.off("live", on); resolve(false); }, ms);
      const on = (): void => { clearTimeout(t); resolve(true); };
      this.once("live", on);
    });
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    const epoch = ++this.epoch;
    this.clear();
    try {
      const sub = await this.docker.events(
        { type: ["container", "image"], event: [...CONTAINER_ACTIONS, ...IMAGE_ACTIONS] },
        (e) => this.onEvent(e, epoch),
      );
      if (epoch !== this.epoch || this.stopped) {
        sub.close();
        return;
      }
      this.sub = sub;
      void sub.ended.then((why) => { if (epoch === this.epoch) this.fail(why); });
      // Subscribed first, listed second: an event racing the listing marks its container pending and is re-read.
      const listed = await this.docker.listContainers(this.o.labels);
      await Promise.all(listed.map((c) => this.reread(c.Id, epoch)));
      if (epoch !== this.epoch) return;
      this.isLive = true;
      this.attempt = 0;
      this.stats.syncs++;
      this.o.log?.info({ containers: listed.length }, "engine event stream followed: container checks answered from memory");
      this.emit("live");
    } catch (e) {
      if (epoch === this.epoch) this.fail(`engine sync failed: ${(e as Error).message}`);
    }
  }

  private onEvent(e: EngineEvent, epoch: number): void {
    if (epoch !== this.epoch) return;
    this.stats.events++;
    if (e.Type === "image") {
      this.imageVersion++;
      for (const id of this.images.keys()) this.images.set(id, "pending");
      void this.rereadImages(epoch);
      return;
    }
    if (e.Type !== "container" || !this.followed(e.Actor.Attributes ?? {})) return;
    const id = e.Actor.ID;
    // Before anything else: memory stops answering for this container until the engine has been asked again.
    this.containers.set(id, { kind: "pending" });
    void this.reread(id, epoch);
  }

  private followed(attributes: Record<string, string>): boolean {
    return Object.entries(this.o.labels).every(([k, v]) => (v === true ? attributes[k] !== undefined : attributes[k] === v));
  }

  /** Ask the engine about one container and store the answer, unless a newer event or subscription came meanwhile. */
  private async reread(id: string, epoch: number): Promise<void> {
    const v = (this.versions.get(id) ?? 0) + 1;
    this.versions.set(id, v);
    this.containers.set(id, { kind: "pending" });
    this.stats.rereads++;
    try {
      const c = await this.docker.inspectContainer(id);
      if (epoch !== this.epoch || this.versions.get(id) !== v) return;
      if (!c) {
        this.containers.set(id, { kind: "gone" });
        this.versions.delete(id);
        this.gone.push(id);
        if (this.gone.length > MAX_GONE) for (const old of this.gone.splice(0, this.gone.length - MAX_GONE)) if (this.containers.get(old)?.kind === "gone") this.containers.delete(old);
      } else {
        const w: WatchedContainer = { id: c.Id, status: c.State.Status, running: c.State.Running, pid: c.State.Pid, labels: c.Config.Labels ?? {}, imageId: c.Image };
        if (!this.images.has(w.imageId)) await this.rereadImage(w.imageId, epoch, this.imageVersion);
        if (epoch !== this.epoch || this.versions.get(id) !== v) return;
        this.containers.set(id, { kind: "ready", c: w });
      }
      this.emit("settled", id);
    } catch (e) {
      if (epoch === this.epoch) this.fail(`engine re-read of container ${id.slice(0, 12)} failed: ${(e as Error).message}`);
    }
  }

  private async rereadImage(imageId: string, epoch: number, version: number): Promise<void> {
    this.images.set(imageId, "pending");
    this.stats.imageRereads++;
    const info = await this.docker.inspectImage(imageId);
    if (epoch !== this.epoch || version !== this.imageVersion) return;
    // An image that is gone is remembered as carrying no digest (it no longer pins anything).
    this.images.set(imageId, { id: info?.Id ?? "", repoDigests: info?.RepoDigests ?? [] });
  }

  private async rereadImages(epoch: number): Promise<void> {
    const version = this.imageVersion;
    try {
      await Promise.all([...this.images.keys()].map((id) => this.rereadImage(id, epoch, version)));
      if (epoch === this.epoch && version === this.imageVersion) this.emit("images");
    } catch (e) {
      if (epoch === this.epoch) this.fail(`engine re-read of images failed: ${(e as Error).message}`);
    }
  }

  private async ping(): Promise<void> {
    if (!this.sub || this.stopped) return;
    const epoch = this.epoch;
    this.stats.pings++;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.docker.ping(),
        new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`no answer within ${this.o.pingTimeoutMs} ms`)), this.o.pingTimeoutMs); }),
      ]);
    } catch (e) {
      if (epoch === this.epoch) this.fail(`engine ping failed: ${(e as Error).message}`);
    } finally {
      clearTimeout(timer);
    }
  }

  private clear(): void {
    this.isLive = false;
    this.containers.clear();
    this.images.clear();
    this.versions.clear();
    this.gone = [];
  }

  private markDown(why: string): void {
    const wasLive = this.isLive;
    this.epoch++;
    this.clear();
    this.sub?.close();
    this.sub = undefined;
    if (wasLive) {
      this.stats.downs++;
      this.emit("down", why);
    }
  }

  /** Forget everything and subscribe again after a backoff. */
  private fail(why: string): void {
    const wasLive = this.isLive;
    this.markDown(why);
    if (this.stopped) return;
    if (wasLive) this.o.log?.warn({ reason: why }, "engine event stream lost: container checks ask the engine until it is followed again");
    const delay = backoffDelay(this.attempt++, { initialMs: this.o.retryInitialMs, maxMs: this.o.retryMaxMs, jitter: 0.2 });
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => void this.connect(), delay);
    this.retryTimer.unref();
  }
}
