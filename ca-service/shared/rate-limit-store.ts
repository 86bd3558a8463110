import type { FastifyRateLimitStore, FastifyRateLimitStoreCtor } from "@fastify/rate-limit";
import type { Db } from "../db.js";
import { FleetCounters } from "./counters.js";

type Callback = (error: Error | null, result?: { current: number; ttl: number }) => void;

/**
 * A @fastify/rate-limit store whose counters live in the CA store (`fleet_counters`), so every `ca serve` process on
 * one PostgreSQL counts into the same fixed window: a limit is granted once fleet-wide. Route-level limits with a
 * `groupId` (the provisioning-line limit) share one counter across their routes; other route limits are per route.
 */
export function fleetRateLimitStore(db: Db): FastifyRateLimitStoreCtor {
  return rateLimitStoreOver(new FleetCounters(db));
}

/** Fixed-window counters keyed by string, wherever they live (the store, or the `ca serve` primary over IPC). */
export interface WindowCounters {
  /** Add `n` (default 1); the count after it. `max` (the limit the count is checked against) lets a caller lease. */
  incr(key: string, windowMs: number, n?: number, max?: number): Promise<{ count: number; ttlMs: number }>;
  read(key: string, windowMs: number): Promise<{ count: number; ttlMs: number }>;
}

/** The most counts one process takes ahead in one update. */
export const LEASE_MAX = 64;
/** A lease is at most this fraction of what is left of the limit in the window: near the limit it shrinks to nothing. */
const LEASE_SHARE = 16;

/**
 * Counts handed out in this process from ranges the shared counter added in one update, instead of one shared update
 * (a store upsert, or an IPC round trip to the `ca serve` primary) per request.
 *
 * - Increments made while an update of that key is on its way share the next update (n of them, one update).
 * - Far from the limit an update also takes a lease: up to LEASE_MAX more counts, at most 1/LEASE_SHARE of what is
 *   left of the limit as last seen; later requests take their count from the lease without an update. Near the
 *   limit the lease is 0 and every update is exact again.
 *
 * Each caller gets a count of its own, one of the consecutive values an update added, and every value goes to at
 * most one caller: a limit of N is never granted more than N times service-wide. A lease this process does not use
 * up before its window ends is lost, so a window can grant up to (one lease per process) fewer — at most 1/16 of
 * what was left when the lease was taken; with a lone request per key, or limits under 16, nothing is leased.
 */
export function leasingCounters(counters: WindowCounters, now: () => number = Date.now): WindowCounters {
  type Waiter = { resolve: (r: { count: number; ttlMs: number }) => void; reject: (e: unknown) => void };
  interface Slot { key: string; windowMs: number; max?: number; waiters: Waiter[]; inFlight: boolean; window: number; next: number; last: number; seen: number }
  const slots = new Map<string, Slot>();
  let lastSweep = now();
  const take = (s: Slot, t: number): { count: number; ttlMs: number } | undefined => {
    const w = Math.floor(t / s.windowMs) * s.windowMs;
    if (s.window !== w) { s.window = w; s.next = 1; s.last = 0; s.seen = 0; }
    return s.next <= s.last ? { count: s.next++, ttlMs: w + s.windowMs - t } : undefined;
  };
  const send = (s: Slot): void => {
    const waiting = s.waiters.length;
    if (waiting === 0 || s.inFlight) return;
    const t = now();
    const w = Math.floor(t / s.windowMs) * s.windowMs;
    if (s.window !== w) { s.window = w; s.next = 1; s.last = 0; s.seen = 0; }
    const left = s.max === undefined ? 0 : s.max - s.seen - waiting;
    const lease = Math.max(0, Math.min(LEASE_MAX, Math.floor(left / LEASE_SHARE)));
    const n = waiting + lease;
    const waiters = s.waiters.splice(0, waiting);
    s.inFlight = true;
    counters.incr(s.key, s.windowMs, n).then(
      (r) => {
        const first = r.count - n + 1;
        waiters.forEach((x, i) => x.resolve({ count: first + i, ttlMs: r.ttlMs }));
        // The lease belongs to the window the update counted in; a window that ended meanwhile drops it on next use.
        if (s.window === w) { s.next = first + waiting; s.last = r.count; s.seen = Math.max(s.seen, r.count); }
      },
      (e: unknown) => waiters.forEach((x) => x.reject(e)),
    ).finally(() => {
      s.inFlight = false;
      // Waiters that queued while this update was out are served from its lease if it has room, else by the next one.
      const t2 = now();
      while (s.waiters.length > 0) {
        const got = take(s, t2);
        if (!got) break;
        s.waiters.shift()?.resolve(got);
      }
      send(s);
    });
  };
  return {
    incr: (key, windowMs, _n, max) => new Promise((resolve, reject) => {
      const id = `${windowMs}\u0000${key}`;
      const t = now();
      let s = slots.get(id);
      if (!s) {
        s = { key, windowMs, waiters: [], inFlight: false, window: Math.floor(t / windowMs) * windowMs, next: 1, last: 0, seen: 0 };
        slots.set(id, s);
        // Keys of one-off clients: slots without a lease or waiters are dropped now and then.
        if (t - lastSweep > 60_000) {
          lastSweep = t;
          for (const [k, v] of slots) if (v !== s && !v.inFlight && v.waiters.length === 0 && (v.next > v.last || v.window + v.windowMs <= t)) slots.delete(k);
        }
      }
      if (max !== undefined) s.max = max;
      const got = s.waiters.length === 0 ? take(s, t) : undefined;
      if (got) return resolve(got);
      s.waiters.push({ resolve, reject });
      send(s);
    }),
    read: (key, windowMs) => counters.read(key, windowMs),
  };
}

/** A @fastify/rate-limit store over `counters`, namespaced per route (or per groupId) as the plugin expects. */
export function rateLimitStoreOver(windowCounters: WindowCounters): FastifyRateLimitStoreCtor {
  const counters = leasingCounters(windowCounters);
  class FleetStore implements FastifyRateLimitStore {
    constructor(_options?: unknown, private readonly namespace = "global") {}

    incr(key: string, cb: Callback, timeWindow: number, max?: number): void {
      counters.incr(`rl:${this.namespace}:${key}`, timeWindow, 1, max).then(
        (r) => cb(null, { current: r.count, ttl: r.ttlMs }),
        (e: unknown) => cb(e instanceof Error ? e : new Error(String(e))),
      );
    }

    read(key: string, cb: Callback, timeWindow: number): void {
      counters.read(`rl:${this.namespace}:${key}`, timeWindow).then(
        (r) => cb(null, { current: r.count, ttl: r.ttlMs }),
        (e: unknown) => cb(e instanceof Error ? e : new Error(String(e))),
      );
    }

    child(routeOptions: { groupId?: string; method?: string | string[]; url?: string; routeInfo?: { method?: string | string[]; url?: string } }): FastifyRateLimitStore {
      const info = routeOptions.routeInfo ?? routeOptions;
      const ns = routeOptions.groupId ? `group:${routeOptions.groupId}` : `route:${String(info.method ?? "")} ${info.url ?? ""}`;
      return new FleetStore(undefined, ns);
    }
  }
  return FleetStore as unknown as FastifyRateLimitStoreCtor;
}
