import cluster, { type Worker } from "node:cluster";
import { availableParallelism } from "node:os";
import { AggregatorRegistry, Counter, Gauge, Registry } from "prom-client";

type metric = Awaited<ReturnType<Registry["getMetricsAsJSON"]>>[number];
import { EdgeTrustError, type Logger } from "../common/index.js";
import type { HsmConfig } from "../hsm/index.js";
import type { CertificateAuthority } from "./ca.js";
import type { CaConfig } from "./config.js";
import { SqliteDb } from "./db.js";
import { createCaServer, selfIssuedTls, type CaServer } from "./server.js";
import { openCa } from "./service.js";
import { instanceIdOf } from "./shared/fleet.js";
import { rateLimitStoreOver, type WindowCounters } from "./shared/rate-limit-store.js";
import type { CaStore } from "./store.js";

/**
 * `ca serve --workers N`: one primary and N worker processes (node:cluster) on the same HTTPS and revocation ports.
 *
 * The primary runs the start-up ceremony once — migrations, the store-identity check, loading the CA, issuing the
 * listener's TLS certificate — then forks the workers and hands each the TLS material over IPC (the key never
 * touches the disk). It serves no request itself: it accepts connections and passes them round-robin (Node's
 * default scheduling on Linux), replaces a worker that dies, aggregates /metrics and keeps the SQLite rate-limit
 * counters. Each worker is a whole `ca serve` (TLS, CSR checks, signing with its own HSM session, its own store
 * connection — SQLite in WAL with BEGIN IMMEDIATE, or its own PostgreSQL pool and LISTEN connection), because
 * certificate work is CPU and only separate processes use more than one core. What must stay one across workers
 * already lives in the store: the audit chain head, CRL numbers (under a lock), serials (primary key), refusal
 * budgets, single-use tokens. README "ca serve --workers" says why.
 */

/** Write transactions one worker may run back to back on one grant of the SQLite write gate. */
const GATE_REUSE = 8;

/** Messages between the primary and its workers (JSON over the cluster IPC channel). */
type ToWorker =
  | { et: "start"; tls?: { cert: string; key: string } }
  | { et: "shutdown" }
  | { et: "rl-res"; id: number; count: number; ttlMs: number }
  | { et: "metrics-collect"; id: number }
  | { et: "metrics-res"; id: number; text?: string; error?: string }
  | { et: "wl-ok"; id: number };
type ToPrimary =
  | { et: "hello" }
  | { et: "listening"; url: string; revocationUrl?: string }
  | { et: "rl"; id: number; op: "incr" | "read"; key: string; windowMs: number; n?: number }
  | { et: "metrics"; id: number }
  | { et: "metrics-part"; id: number; json: metric[] }
  | { et: "wl"; id: number }
  | { et: "wl-release"; id: number };

function isMessage<T extends { et: string }>(m: unknown): m is T {
  return typeof m === "object" && m !== null && typeof (m as { et?: unknown }).et === "string";
}

/** `--workers` (a flag value), else `ca.workers`; 0 means one per core. */
export function resolveWorkers(flag: string | undefined, config: CaConfig): number {
  let n = config.workers;
  if (flag !== undefined) {
    if (!/^\d{1,3}$/.test(flag) || Number(flag) > 256) {
      throw new EdgeTrustError("INVALID_INPUT", `--workers ${JSON.stringify(flag)} is not a number of processes (0..256; 0 = one per core)`);
    }
    n = Number(flag);
  }
  return n === 0 ? availableParallelism() : n;
}

export function isServeWorker(): boolean {
  return cluster.isWorker;
}

/** Fixed windows in the primary's memory: the SQLite service's rate-limit counters, shared by its workers. */
class MemoryCounters {
  private readonly windows = new Map<string, { start: number; count: number; end: number }>();
  private lastSweep = 0;

  count(op: "incr" | "read", key: string, windowMs: number, n = 1): { count: number; ttlMs: number } {
    const t = Date.now();
    const start = Math.floor(t / windowMs) * windowMs;
    let w = this.windows.get(key);
    if (!w || w.start !== start) {
      if (op === "read") return { count: 0, ttlMs: start + windowMs - t };
      w = { start, count: 0, end: start + windowMs };
      this.windows.set(key, w);
    }
    if (op === "incr") w.count += n;
    if (t - this.lastSweep > 60_000) {
      this.lastSweep = t;
      for (const [k, v] of this.windows) if (v.end < t) this.windows.delete(k);
    }
    return { count: w.count, ttlMs: w.end - t };
  }
}

/** How a worker is started when this process has no script to re-run (node -e): node flags minus the code. */
function workerExecArgv(execArgv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < execArgv.length; i++) {
    const a = execArgv[i] ?? "";
    if (a === "-e" || a === "--eval" || a === "-p" || a === "--print" || a === "--input-type") { i++; continue; }
    if (/^(--eval|--print|--input-type)=/.test(a)) continue;
    out.push(a);
  }
  return out;
}

interface ServeOptions<X> {
  config: CaConfig;
  hsm: HsmConfig;
  logger: Logger;
  configFile?: string;
  workers: number;
  /** What the command tree adds to every worker's app before it listens (the console). */
  extend: (server: CaServer, deps: { ca: CertificateAuthority; store: CaStore }) => Promise<X>;
}

/** Primary: the ceremony once, then N workers; resolves when the service has stopped (exit code to use). */
export async function servePrimary(opts: ServeOptions<unknown> & { worker: { args: string[]; entry?: string } }): Promise<number> {
  const { config, logger } = opts;
  const opened = await openCa(config, opts.hsm, { logger, ...(opts.configFile ? { configFile: opts.configFile } : {}) });
  let tls: { cert: string; key: string } | undefined;
  try {
    // Files named in the config are read by each worker; a self-issued certificate is issued (and recorded) once.
    if (!(config.tlsCert && config.tlsKey)) tls = await selfIssuedTls(opened.ca, config);
  } finally {
    await opened.close();
  }

  // Workers re-run this process's script with its arguments (node:cluster's default). A process started from code on
  // the command line has none: its workers run the command tree's script with `ca serve` arguments instead.
  if (!process.argv[1]) {
    if (!opts.worker.entry) throw new EdgeTrustError("INVALID_INPUT", "ca serve --workers needs a script entry to fork workers from", { hint: "run edgetrust from its script, or use --workers 1" });
    cluster.setupPrimary({ exec: opts.worker.entry, args: opts.worker.args, execArgv: workerExecArgv(process.execArgv) });
  }

  const registry = new Registry();
  const workersGauge = new Gauge({ name: "edgetrust_ca_workers", help: "ca serve worker processes: configured, and running now", labelNames: ["state"], registers: [registry] });
  const restarts = new Counter({ name: "edgetrust_ca_worker_restarts_total", help: "Workers that died and were replaced", registers: [registry] });
  workersGauge.set({ state: "configured" }, opts.workers);
  const counters = new MemoryCounters();
  const pendingMetrics = new Map<number, { parts: metric[][]; waiting: Set<number>; done: () => void }>();
  let metricsSeq = 0;

  let stopping = false;
  let started = false;
  const deaths: number[] = [];
  const listening = new Map<number, { url: string; revocationUrl?: string }>();
  let onAllListening: (() => void) | undefined;
  let onStartFailure: ((e: Error) => void) | undefined;
  let onAllExited: (() => void) | undefined;

  // A worker that has just exited can still look connected: its failed send is answered in the callback (without
  // one it is an 'error' event on the worker, which nothing handles, and the primary would crash).
  const send = (w: Worker, m: ToWorker) => {
    if (w.isConnected() && !w.isDead()) w.send(m, (e) => { if (e) logger.debug({ worker: w.id, et: m.et, err: e.message }, "message to a worker that is gone"); });
  };
  // node:cluster keeps an exited worker in cluster.workers until its IPC channel also closes ('exit' can come first):
  // counted as running, the last one to exit would leave a stop waiting for good.
  const running = () => Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && !w.isDead());

  const collectMetrics = async (): Promise<string> => {
    const id = ++metricsSeq;
    const targets = running().filter((w) => listening.has(w.id));
    const entry = { parts: [] as metric[][], waiting: new Set(targets.map((w) => w.id)), done: () => undefined as void };
    const all = new Promise<void>((resolve) => { entry.done = resolve; });
    pendingMetrics.set(id, entry);
    for (const w of targets) send(w, { et: "metrics-collect", id });
    // A worker that does not answer in time (busy, dying) is left out of this scrape rather than stalling it.
    const timer = setTimeout(entry.done, 2_000);
    if (targets.length > 0) await all;
    clearTimeout(timer);
    pendingMetrics.delete(id);
    workersGauge.set({ state: "running" }, listening.size);
    const own = await registry.getMetricsAsJSON();
    return AggregatorRegistry.aggregate([...entry.parts, own]).metrics();
  };

  // The SQLite write gate: one worker at a time holds it, the others queue (FIFO) without blocking their event loops.
  let gateHolder: { worker: number; id: number } | undefined;
  const gateQueue: { worker: Worker; id: number }[] = [];
  const grantNext = () => {
    while (!gateHolder && gateQueue.length > 0) {
      const next = gateQueue.shift();
      if (!next || next.worker.isDead() || !next.worker.isConnected()) continue;
      gateHolder = { worker: next.worker.id, id: next.id };
      send(next.worker, { et: "wl-ok", id: next.id });
    }
  };
  const releaseGateOf = (workerId: number) => {
    for (let i = gateQueue.length - 1; i >= 0; i--) if (gateQueue[i]?.worker.id === workerId) gateQueue.splice(i, 1);
    if (gateHolder?.worker === workerId) gateHolder = undefined;
    grantNext();
  };

  const onMessage = (w: Worker, m: unknown) => {
    if (!isMessage<ToPrimary>(m)) return;
    switch (m.et) {
      // A message sent before the worker has loaded its code would be lost: the worker asks when it listens for it.
      // A worker still loading its code when the service was told to stop never got the shutdown: it gets it now.
      case "hello":
        send(w, stopping ? { et: "shutdown" } : { et: "start", ...(tls ? { tls } : {}) });
        break;
      case "listening":
        listening.set(w.id, { url: m.url, ...(m.revocationUrl ? { revocationUrl: m.revocationUrl } : {}) });
        if (!started && listening.size >= opts.workers) onAllListening?.();
        else if (started) logger.info({ worker: w.id, pid: w.process.pid }, "replacement worker listening");
        break;
      case "wl":
        gateQueue.push({ worker: w, id: m.id });
        grantNext();
        break;
      case "wl-release":
        if (gateHolder?.worker === w.id && gateHolder.id === m.id) {
          gateHolder = undefined;
          grantNext();
        }
        break;
      case "rl": {
        const r = counters.count(m.op, m.key, m.windowMs, typeof m.n === "number" && Number.isInteger(m.n) && m.n > 0 ? m.n : 1);
        send(w, { et: "rl-res", id: m.id, count: r.count, ttlMs: r.ttlMs });
        break;
      }
      case "metrics":
        collectMetrics().then(
          (text) => send(w, { et: "metrics-res", id: m.id, text }),
          (e: unknown) => send(w, { et: "metrics-res", id: m.id, error: (e as Error).message }),
        );
        break;
      case "metrics-part": {
        const p = pendingMetrics.get(m.id);
        if (!p) break;
        p.parts.push(m.json);
        p.waiting.delete(w.id);
        if (p.waiting.size === 0) p.done();
        break;
      }
    }
  };

  const fork = (): Worker => {
    const w = cluster.fork({ EDGETRUST_CA_WORKER: "1" });
    w.on("message", (m: unknown) => onMessage(w, m));
    return w;
  };

  cluster.on("exit", (w, code, signal) => {
    const was = listening.delete(w.id);
    releaseGateOf(w.id);
    for (const p of pendingMetrics.values()) if (p.waiting.delete(w.id) && p.waiting.size === 0) p.done();
    if (stopping) {
      if (running().length === 0) onAllExited?.();
      return;
    }
    if (!started) {
      onStartFailure?.(new EdgeTrustError("UNAVAILABLE", `ca serve worker ${w.id} (pid ${w.process.pid}) exited with ${signal ?? `code ${code}`} before it listened`, { hint: "its error is printed above" }));
      return;
    }
    const now = Date.now();
    deaths.push(now);
    while (deaths.length > 0 && (deaths[0] ?? now) < now - 60_000) deaths.shift();
    restarts.inc();
    if (deaths.length > Math.max(5, opts.workers * 3)) {
      logger.fatal({ worker: w.id, pid: w.process.pid, code, signal, deathsInLastMinute: deaths.length }, "ca serve workers keep dying; stopping the service");
      void stop("crash-loop", 1);
      return;
    }
    logger.error({ worker: w.id, pid: w.process.pid, code, signal, wasListening: was }, "ca serve worker died; starting a replacement");
    fork();
  });

  let exitCode = 0;
  let resolveDone!: (code: number) => void;
  const done = new Promise<number>((r) => { resolveDone = r; });
  const stop = async (why: string, code = 0): Promise<void> => {
    if (stopping) return;
    stopping = true;
    exitCode = code;
    logger.info({ reason: why, workers: running().length }, "shutting down every worker");
    const allExited = new Promise<void>((r) => { onAllExited = r; });
    // Each worker finishes its in-flight requests (it cuts them off itself after 10 s); one that hangs past that is killed.
    const killer = setTimeout(() => {
      logger.error("graceful shutdown timed out; killing the remaining workers");
      exitCode = 1;
      for (const w of running()) w.process.kill("SIGKILL");
    }, 15_000);
    killer.unref();
    for (const w of running()) send(w, { et: "shutdown" });
    if (running().length > 0) await allExited;
    clearTimeout(killer);
    resolveDone(exitCode);
  };

  // Workers that exit non-zero on SIGTERM make the service's exit non-zero too.
  cluster.on("exit", (_w, code, signal) => {
    if (stopping && (code !== 0 || signal) && exitCode === 0 && signal !== "SIGKILL") exitCode = 1;
  });

  process.once("SIGTERM", () => void stop("SIGTERM"));
  process.once("SIGINT", () => void stop("SIGINT"));

  const ready = new Promise<void>((resolve, reject) => { onAllListening = resolve; onStartFailure = reject; });
  for (let i = 0; i < opts.workers; i++) fork();
  try {
    // `done`: SIGTERM/SIGINT before every worker listened — the start is over, nothing to announce.
    await Promise.race([ready, done]);
  } catch (e) {
    await stop("a worker failed to start", 1);
    throw e;
  }
  if (stopping) return done;
  started = true;
  workersGauge.set({ state: "running" }, listening.size);
  const first = [...listening.values()][0];
  logger.info({ url: first?.url, workers: opts.workers, database: config.databaseUrl ? "postgres" : "sqlite" }, "ca-service listening");
  process.stdout.write(JSON.stringify({ listening: first?.url, revocation: first?.revocationUrl ?? null, workers: opts.workers, pid: process.pid }) + "\n");
  return done;
}

/** Worker: wait for the primary's start message, serve, stop on its shutdown message, SIGTERM, or when it is gone. */
export async function serveWorker(opts: Omit<ServeOptions<unknown>, "workers">): Promise<void> {
  const { config, logger } = opts;
  const worker = cluster.worker;
  if (!worker) throw new EdgeTrustError("INTERNAL", "serveWorker outside a cluster worker");
  let nextId = 0;
  const waiting = new Map<number, (m: ToWorker) => void>();
  // Set once the server exists; the primary may ask for metrics of a worker still starting.
  const current: { server?: CaServer } = {};
  let stopRequested: ((why: string) => void) | undefined;
  const start = new Promise<{ tls?: { cert: string; key: string } }>((resolve) => {
    process.on("message", (m: unknown) => {
      if (!isMessage<ToWorker>(m)) return;
      if (m.et === "start") resolve(m);
      // Asked to stop before it serves anything: nothing is in flight, so just go.
      else if (m.et === "shutdown") {
        if (stopRequested) stopRequested("primary asked");
        else process.exit(0);
      }
      else if (m.et === "metrics-collect") {
        void (current.server?.metrics.registry.getMetricsAsJSON() ?? Promise.resolve([])).then((json) => process.send?.({ et: "metrics-part", id: m.id, json } satisfies ToPrimary));
      } else if ("id" in m) {
        const cb = waiting.get(m.id);
        waiting.delete(m.id);
        if (cb) cb(m);
        else if (m.et === "wl-ok" && abandoned.delete(m.id)) process.send?.({ et: "wl-release", id: m.id } satisfies ToPrimary);
      }
    });
    process.send?.({ et: "hello" } satisfies ToPrimary);
  });
  const ask = <R extends ToWorker>(m: ToPrimary): Promise<R> => new Promise((resolve, reject) => {
    if (!process.connected || !process.send) return reject(new EdgeTrustError("UNAVAILABLE", "the ca serve primary is gone"));
    waiting.set((m as { id: number }).id, resolve as (m: ToWorker) => void);
    process.send(m);
  });
  const ipcCounters: WindowCounters = {
    incr: async (key, windowMs, n = 1) => ask<Extract<ToWorker, { et: "rl-res" }>>({ et: "rl", id: ++nextId, op: "incr", key, windowMs, n }),
    read: async (key, windowMs) => ask<Extract<ToWorker, { et: "rl-res" }>>({ et: "rl", id: ++nextId, op: "read", key, windowMs }),
  };

  /** Gate requests given up on (the primary was slow): their late grant is handed straight back. */
  const abandoned = new Set<number>();
  /**
   * A grant kept for the transaction queued right behind the one that ends (this process's transactions run one at a
   * time, the next one starts within the same turn of the event loop): back-to-back transactions under load take the
   * gate once, not once each — at most GATE_REUSE in a row, then the other workers get their turn.
   */
  let kept: { id: number; uses: number; handBack?: NodeJS.Immediate } | undefined;
  const handBack = (grant: { id: number }) => {
    if (kept === grant) kept = undefined;
    if (process.connected) process.send?.({ et: "wl-release", id: grant.id } satisfies ToPrimary);
  };
  const releaseOf = (grant: NonNullable<typeof kept>) => () => {
    if (kept !== grant) return;
    if (grant.uses >= GATE_REUSE) handBack(grant);
    else grant.handBack = setImmediate(() => handBack(grant));
  };
  const writeGate = async (): Promise<() => void> => {
    if (kept) {
      if (kept.handBack) clearImmediate(kept.handBack);
      kept.handBack = undefined;
      kept.uses++;
      return releaseOf(kept);
    }
    if (!process.connected || !process.send) return () => undefined;
    const id = ++nextId;
    const granted = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => { waiting.delete(id); abandoned.add(id); resolve(false); }, 10_000);
      waiting.set(id, () => { clearTimeout(timer); resolve(true); });
      process.send?.({ et: "wl", id } satisfies ToPrimary);
    });
    // Not granted in 10 s: go ahead and let SQLite's own lock (busy_timeout) decide, as without the gate.
    if (!granted) return () => undefined;
    kept = { id, uses: 1 };
    return releaseOf(kept);
  };

  const msg = await start;
  // The primary migrated and checked the store's identity; a worker only opens it.
  const opened = await openCa(config, opts.hsm, { logger, startupChecks: false, ...(opts.configFile ? { configFile: opts.configFile } : {}) });
  // <hostname>:<pid> already differs per worker; a configured name gets the worker's number.
  if (opened.store.db instanceof SqliteDb) opened.store.db.writeGate = writeGate;
  const instanceId = config.instanceId ? `${config.instanceId}/w${worker.id}` : instanceIdOf(config);
  const server = await createCaServer(config, {
    ca: opened.ca, store: opened.store, logger: logger.child({ worker: worker.id }), instanceId,
    ...(msg.tls ? { tls: msg.tls } : {}),
    ...(opened.store.dialect === "sqlite" ? { rateLimitStore: rateLimitStoreOver(ipcCounters) } : {}),
  });
  server.metrics.exposition = async () => {
    const r = await ask<Extract<ToWorker, { et: "metrics-res" }>>({ et: "metrics", id: ++nextId });
    if (r.text === undefined) throw new EdgeTrustError("UNAVAILABLE", `metrics could not be aggregated: ${r.error ?? "no answer"}`);
    return r.text;
  };
  current.server = server;
  await opts.extend(server, { ca: opened.ca, store: opened.store });
  const addr = await server.listen();
  process.send?.({ et: "listening", url: addr.url, ...(addr.revocationUrl ? { revocationUrl: addr.revocationUrl } : {}) } satisfies ToPrimary);

  await new Promise<void>((resolve) => {
    let stopping = false;
    stopRequested = (why: string) => {
      if (stopping) return;
      stopping = true;
      logger.info({ worker: worker.id, reason: why }, "worker shutting down");
      setTimeout(() => { logger.error({ worker: worker.id }, "graceful shutdown timed out"); process.exit(1); }, 10_000).unref();
      server.close().then(() => opened.close()).then(resolve, (e: unknown) => { logger.error({ err: e }, "shutdown failed"); process.exitCode = 1; resolve(); });
    };
    process.once("SIGTERM", () => stopRequested?.("SIGTERM"));
    process.once("SIGINT", () => stopRequested?.("SIGINT"));
    // The primary died (kill -9): nothing accepts connections for us any more; finish what is in flight and go.
    process.once("disconnect", () => stopRequested?.("primary gone"));
  });
  if (process.connected) process.disconnect();
}
