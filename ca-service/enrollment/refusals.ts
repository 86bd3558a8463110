import type { FastifyError, FastifyRequest } from "fastify";
import { toProblemError, type EdgeTrustError } from "../../common/index.js";
import { peerCertificate } from "../http.js";
import type { CaStore } from "../store.js";
import { FleetCounters } from "../shared/counters.js";

/**
 * Audit entries for refused enrollment-API requests (bad or revoked credentials, disabled enrollments, malformed ids,
 * wrong CSR keys, replays, rate limits): `registration.refused` for device registration (JSON API, EST, DPS, TPM
 * challenge), `enrollment.refused` for the line/admin enrollment API. Actor, target, code, status and reason only —
 * never a token, key, password or SAS (the reason is the problem detail we answer with, which never carries them).
 *
 * An unauthenticated flood must not grow the audit log without bound, so entries are budgeted per fixed window
 * (default one minute, aligned to the epoch so every process of a fleet has the same windows): at most `perSource`
 * entries per client address and `total` entries overall are written one by one — counted in the store, so the
 * budget holds fleet-wide however many `ca serve` processes share it; everything beyond is counted (in memory, then
 * added to `refusal_suppressed` when the window ends) and written as ONE `refusals.suppressed` summary per window by
 * whichever process first sees the window `graceMs` past its end (counts by action, code and source, top sources).
 */
export interface Refusal {
  action: "registration.refused" | "enrollment.refused";
  actor: string;
  target: string;
  code: string;
  status: number;
  reason: string;
  source: string;
  details?: Record<string, unknown>;
}

interface RefusalAuditOptions {
  /** Individually written refusals per client address per window, fleet-wide (default 60). */
  perSource?: number;
  /** Individually written refusals per window, all sources, fleet-wide (default 600). */
  total?: number;
  /** Window length in ms (default 60,000). */
  windowMs?: number;
  /** How long after a window ends its summary waits for the other processes' counts (default 5,000 ms). */
  graceMs?: number;
  /** Clock (tests drive windows with it). */
  now?: () => number;
}

/** This process's view of one window: budgets it knows are spent (no need to ask the store again) and what it suppressed. */
interface Window {
  start: number;
  totalSpent: boolean;
  sourcesSpent: Set<string>;
  /** `source \0 action \0 code` → count; at most MAX_TRACKED_SOURCES sources, the rest under OTHER_SOURCES. */
  suppressed: Map<string, number>;
  sources: Set<string>;
}

const MAX_TRACKED_SOURCES = 1000;
const OTHER_SOURCES = "(other sources)";

/** Printable ASCII only (ids may carry NUL, newlines or look-alikes), bounded length. */
export function safeText(s: string, max = 200): string {
  const t = s.replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
  return t.length > max ? `${t.slice(0, max)}…` : t;
}

export class RefusalAudit {
  readonly perSource: number;
  readonly total: number;
  readonly windowMs: number;
  readonly graceMs: number;
  private readonly now: () => number;
  private readonly counters: FleetCounters;
  private readonly windows = new Map<number, Window>();
  private timer: NodeJS.Timeout | undefined;
  private pending: Promise<unknown> = Promise.resolve();

  constructor(private readonly store: CaStore, opts: RefusalAuditOptions = {}) {
    this.perSource = opts.perSource ?? 60;
    this.total = opts.total ?? 600;
    this.windowMs = opts.windowMs ?? 60_000;
    this.graceMs = opts.graceMs ?? 5_000;
    this.now = opts.now ?? Date.now;
    this.counters = new FleetCounters(store.db, this.now);
  }

  private windowStart(t: number): number {
    return Math.floor(t / this.windowMs) * this.windowMs;
  }

  private window(start: number): Window {
    let w = this.windows.get(start);
    if (!w) {
      w = { start, totalSpent: false, sourcesSpent: new Set(), suppressed: new Map(), sources: new Set() };
      this.windows.set(start, w);
    }
    return w;
  }

  /** Flush counts and write summaries of finished windows even when no refusal comes to roll them. */
  startTimer(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.roll().catch(() => undefined), Math.min(this.windowMs, 10_000));
    this.timer.unref();
  }

  /** Write one refusal, or count it towards the window's summary. Returns what happened. */
  async record(r: Refusal): Promise<"written" | "suppressed"> {
    await this.roll();
    const w = this.window(this.windowStart(this.now()));
    if (!w.totalSpent && !w.sourcesSpent.has(r.source)) {
      const n = await this.counters.incr(`refusals:${w.start}:source:${r.source}`, this.windowMs);
      if (n.count <= this.perSource) {
        const t = await this.counters.incr(`refusals:${w.start}:total`, this.windowMs);
        if (t.count <= this.total) {
          await this.track(this.store.audit({
            actor: r.actor, action: r.action, target: r.target,
            details: { code: r.code, status: r.status, reason: r.reason, source: r.source, ...(r.details ?? {}) },
          }));
          return "written";
        }
        w.totalSpent = true;
      } else if (w.sourcesSpent.size < 100_000) {
        w.sourcesSpent.add(r.source);
      }
    }
    const source = w.sources.has(r.source) || w.sources.size < MAX_TRACKED_SOURCES ? r.source : OTHER_SOURCES;
    w.sources.add(source);
    const k = `${source}\0${r.action}\0${r.code}`;
    w.suppressed.set(k, (w.suppressed.get(k) ?? 0) + 1);
    return "suppressed";
  }

  /**
   * Add this process's suppressed counts of finished windows to the store, then summarise every window in the store
   * that ended more than `graceMs` ago — ONE audit entry per window fleet-wide (rows are taken with DELETE … RETURNING
   * under an exclusive lock). `force` (shutdown) flushes and summarises the current window too.
   */
  async roll(force = false): Promise<void> {
    const t = this.now();
    const current = this.windowStart(t);
    for (const [start, w] of [...this.windows]) {
      if (!force && start >= current) continue;
      this.windows.delete(start);
      for (const [k, count] of w.suppressed) {
        const [source = "", action = "", code = ""] = k.split("\0");
        await this.store.db.run(
          `INSERT INTO refusal_suppressed (window_start, source, action, code, count) VALUES (?, ?, ?, ?, ?)
           ON CONFLICT (window_start, source, action, code) DO UPDATE SET count = refusal_suppressed.count + excluded.count`,
          [start, source, action, code, count]);
      }
    }
    const before = force ? Number.MAX_SAFE_INTEGER : t - this.windowMs - this.graceMs + 1;
    const due = await this.store.db.query("SELECT 1 AS x FROM refusal_suppressed WHERE window_start < ? LIMIT 1", [before]);
    if (due.length === 0) return;
    await this.track(this.store.db.exclusive("refusal-summary", async (tx) => {
      const rows = await tx.query<{ window_start: number | string; source: string; action: string; code: string; count: number | string }>(
        "DELETE FROM refusal_suppressed WHERE window_start < ? RETURNING window_start, source, action, code, count", [before]);
      const byWindow = new Map<number, typeof rows>();
      for (const r of rows) {
        const s = Number(r.window_start);
        byWindow.set(s, [...(byWindow.get(s) ?? []), r]);
      }
      for (const [start, list] of [...byWindow].sort((a, b) => a[0] - b[0])) {
        const byAction: Record<string, number> = {};
        const byCode: Record<string, number> = {};
        const bySource = new Map<string, number>();
        let suppressed = 0;
        for (const r of list) {
          const n = Number(r.count);
          suppressed += n;
          byAction[r.action] = (byAction[r.action] ?? 0) + n;
          byCode[r.code] = (byCode[r.code] ?? 0) + n;
          bySource.set(r.source, (bySource.get(r.source) ?? 0) + n);
        }
        const written = Math.min(this.total, Number((await tx.query<{ count: number | string }>("SELECT count FROM fleet_counters WHERE key = ?", [`refusals:${start}:total`]))[0]?.count ?? 0));
        const top = [...bySource.entries()].sort((a, b) => b[1] - a[1]).slice(0, 10).map(([source, count]) => ({ source, count }));
        await this.store.appendAudit(tx, {
          actor: "ca-service", action: "refusals.suppressed", target: `window:${new Date(start).toISOString()}`,
          details: {
            windowStart: new Date(start).toISOString(), windowEnd: new Date(Math.min(t, start + this.windowMs)).toISOString(),
            written, suppressed, byAction, byCode, sources: bySource.size, topSources: top,
            limits: { perSource: this.perSource, total: this.total, windowMs: this.windowMs },
          },
        });
      }
    }));
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.pending = Promise.all([this.pending, p.catch(() => undefined)]);
    return p;
  }

  /** Flush the current window's counts and summary (server close) and stop the timer. */
  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.roll(true);
    await this.pending;
  }
}

const REGISTRATION_ROUTE = /^\/(v1\/registrations|\.well-known\/est|:idScope\/registrations)\b/;

/** What credential a request presented (kind and a public fingerprint only, never the secret). */
function presented(req: FastifyRequest): string {
  const auth = req.headers.authorization ?? "";
  const scheme = /^(\S+)/.exec(auth)?.[1]?.toLowerCase();
  const cert = peerCertificate(req);
  const parts: string[] = [];
  if (scheme) parts.push(scheme === "bearer" ? (auth.slice(7).startsWith("etl_") ? "line-token" : "bearer") : scheme === "sharedaccesssignature" ? "sas" : scheme === "basic" ? "basic" : "other-authorization");
  if (cert) parts.push(`client-certificate sha256:${cert.fingerprint256.replace(/:/g, "").toLowerCase()}`);
  return parts.length ? parts.join(" + ") : "none";
}

/** Without an id in the path (EST): the id the caller claims — the Basic user name, else its client certificate's CN. */
function claimedId(req: FastifyRequest): string | undefined {
  const auth = req.headers.authorization ?? "";
  if (/^Basic /i.test(auth)) return Buffer.from(auth.slice(6), "base64").toString("utf8").split(":")[0] || undefined;
  const cert = peerCertificate(req);
  if (!cert) return undefined;
  for (const line of cert.subject.split("\n")) if (line.startsWith("CN=")) return line.slice(3);
  return undefined;
}

/**
 * The one place enrollment-API refusals are audited: an `onError` hook on the enrollment plugin sees every refusal
 * (schema, credential, quota, rate limit, service) with its final code, so no route records its own. 5xx are not
 * refusals and are left to the service log.
 */
export function refusalFromError(err: FastifyError | EdgeTrustError | Error, req: FastifyRequest, silent: { error: (...a: unknown[]) => void }): Refusal | undefined {
  const e = toProblemError(err, req, silent);
  if (e.status < 400 || e.status >= 500) return undefined;
  const route = req.routeOptions.url ?? req.url.split("?")[0] ?? "";
  const params = (req.params ?? {}) as Record<string, unknown>;
  const id = params.registrationId ?? params.groupId ?? params.id ?? claimedId(req);
  const writer = req.writer;
  return {
    action: REGISTRATION_ROUTE.test(route) ? "registration.refused" : "enrollment.refused",
    actor: writer ? writer.actor : `unauthenticated(${req.ip})`,
    target: typeof id === "string" ? safeText(id, 140) : safeText(route, 140),
    code: e.code, status: e.status, reason: safeText(e.message, 300), source: req.ip,
    details: { method: req.method, route, credential: presented(req) },
  };
}
