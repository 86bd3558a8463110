import type { FastifyError, FastifyRequest } from "fastify";
import { toProblemError, type EdgeTrustError } from "../../common/index.js";
import { peerCertificate } from "../http.js";
import type { CaStore } from "../store.js";

/**
 * Audit entries for refused enrollment-API requests (bad or revoked credentials, disabled enrollments, malformed ids,
 * wrong CSR keys, replays, rate limits): `registration.refused` for device registration (JSON API, EST, DPS, TPM
 * challenge), `enrollment.refused` for the line/admin enrollment API. Actor, target, code, status and reason only —
 * never a token, key, password or SAS (the reason is the problem detail we answer with, which never carries them).
 *
 * An unauthenticated flood must not grow the audit log without bound, so entries are budgeted per fixed window
 * (default one minute): at most `perSource` entries per client address and `total` entries overall are written one by
 * one; everything beyond is counted and written as ONE `refusals.suppressed` summary per window (counts by action,
 * code and source, top sources). The log grows by at most `total + 1` entries per window, whatever the request rate.
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

export interface RefusalAuditOptions {
  /** Individually written refusals per client address per window (default 60). */
  perSource?: number;
  /** Individually written refusals per window, all sources (default 600). */
  total?: number;
  /** Window length in ms (default 60,000). */
  windowMs?: number;
  /** Clock (tests drive windows with it). */
  now?: () => number;
}

interface Window {
  start: number;
  perSource: Map<string, number>;
  written: number;
  suppressed: number;
  byAction: Record<string, number>;
  byCode: Record<string, number>;
  /** Suppressed count per source, at most 1,000 sources tracked (the rest only counted in `suppressed`). */
  suppressedBySource: Map<string, number>;
}

const MAX_TRACKED_SOURCES = 1000;

/** Printable ASCII only (ids may carry NUL, newlines or look-alikes), bounded length. */
export function safeText(s: string, max = 200): string {
  const t = s.replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
  return t.length > max ? `${t.slice(0, max)}…` : t;
}

export class RefusalAudit {
  readonly perSource: number;
  readonly total: number;
  readonly windowMs: number;
  private readonly now: () => number;
  private win: Window;
  private timer: NodeJS.Timeout | undefined;
  private pending: Promise<unknown> = Promise.resolve();

  constructor(private readonly store: CaStore, opts: RefusalAuditOptions = {}) {
    this.perSource = opts.perSource ?? 60;
    this.total = opts.total ?? 600;
    this.windowMs = opts.windowMs ?? 60_000;
    this.now = opts.now ?? Date.now;
    this.win = this.fresh(this.now());
  }

  private fresh(start: number): Window {
    return { start, perSource: new Map(), written: 0, suppressed: 0, byAction: {}, byCode: {}, suppressedBySource: new Map() };
  }

  /** Flush the summary of a finished window every window even when no refusal comes to roll it. */
  startTimer(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.roll().catch(() => undefined), this.windowMs);
    this.timer.unref();
  }

  /** Write one refusal, or count it towards the window's summary. Returns what happened. */
  async record(r: Refusal): Promise<"written" | "suppressed"> {
    await this.roll();
    const w = this.win;
    const n = w.perSource.get(r.source) ?? 0;
    if (n < this.perSource && w.written < this.total) {
      if (w.perSource.size < 100_000 || w.perSource.has(r.source)) w.perSource.set(r.source, n + 1);
      w.written++;
      await this.track(this.store.audit({
        actor: r.actor, action: r.action, target: r.target,
        details: { code: r.code, status: r.status, reason: r.reason, source: r.source, ...(r.details ?? {}) },
      }));
      return "written";
    }
    w.suppressed++;
    w.byAction[r.action] = (w.byAction[r.action] ?? 0) + 1;
    w.byCode[r.code] = (w.byCode[r.code] ?? 0) + 1;
    const s = w.suppressedBySource.get(r.source);
    if (s !== undefined || w.suppressedBySource.size < MAX_TRACKED_SOURCES) w.suppressedBySource.set(r.source, (s ?? 0) + 1);
    return "suppressed";
  }

  /** Start a new window when the current one is over, writing its summary if anything was suppressed. */
  async roll(force = false): Promise<void> {
    const t = this.now();
    if (!force && t < this.win.start + this.windowMs) return;
    const done = this.win;
    this.win = this.fresh(force ? t : done.start + Math.floor((t - done.start) / this.windowMs) * this.windowMs);
    if (done.suppressed === 0) return;
    const top = [...done.suppressedBySource.entries()].sort((a, b) => b[1] - a[1]).slice(0, 10).map(([source, count]) => ({ source, count }));
    await this.track(this.store.audit({
      actor: "ca-service", action: "refusals.suppressed", target: `window:${new Date(done.start).toISOString()}`,
      details: {
        windowStart: new Date(done.start).toISOString(), windowEnd: new Date(Math.min(t, done.start + this.windowMs)).toISOString(),
        written: done.written, suppressed: done.suppressed, byAction: done.byAction, byCode: done.byCode,
        sources: done.suppressedBySource.size, topSources: top,
        limits: { perSource: this.perSource, total: this.total, windowMs: this.windowMs },
      },
    }));
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.pending = Promise.all([this.pending, p.catch(() => undefined)]);
    return p;
  }

  /** Flush the current window's summary (server close) and stop the timer. */
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
