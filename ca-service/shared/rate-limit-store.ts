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
  const counters = new FleetCounters(db);
  class FleetStore implements FastifyRateLimitStore {
    constructor(_options?: unknown, private readonly namespace = "global") {}

    incr(key: string, cb: Callback, timeWindow: number): void {
      counters.incr(`rl:${this.namespace}:${key}`, timeWindow).then(
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
