import { hostname } from "node:os";
import { Counter } from "prom-client";
import type { FastifyRateLimitStoreCtor } from "@fastify/rate-limit";
import type { Logger } from "../../common/index.js";
import type { CertificateAuthority } from "../ca.js";
import type { CaConfig } from "../config.js";
import type { CaMetrics } from "../metrics.js";
import type { CaStore } from "../store.js";
import { FleetEvents } from "./events.js";
import { fleetRateLimitStore } from "./rate-limit-store.js";

/** What one `ca serve` process needs to behave as one member of a fleet on a shared store. */
export interface Fleet {
  /** Sent as `x-edgetrust-instance` on every response, so operators (and the fleet simulator) see which process answered. */
  instanceId: string;
  /** The rate-limit store option: fleet-wide counters on PostgreSQL; on SQLite the primary's (workers) or memory. */
  rateLimitStore: { store?: FastifyRateLimitStoreCtor };
  start(): Promise<void>;
  close(): Promise<void>;
}

export function instanceIdOf(config: CaConfig): string {
  return config.instanceId || `${hostname()}:${process.pid}`;
}

export function startFleet(config: CaConfig, ca: CertificateAuthority, store: CaStore, logger: Logger, metrics: CaMetrics,
  over: { instanceId?: string; rateLimitStore?: FastifyRateLimitStoreCtor } = {}): Fleet {
  const events = new Counter({ name: "edgetrust_ca_fleet_events_total", help: "Fleet announcements applied by this process (cas, crl, resync)", labelNames: ["kind"], registers: [metrics.registry] });
  const watcher = new FleetEvents({
    db: store.db, ca, databaseUrl: store.dialect === "postgres" ? config.databaseUrl : "", schema: config.databaseSchema, logger,
    onEvent: (e) => events.inc({ kind: e.kind }),
  });
  let started = false;
  return {
    instanceId: over.instanceId ?? instanceIdOf(config),
    // PostgreSQL: in the store, so every process on every host counts into one window. SQLite: the caller's (the
    // `ca serve` primary over IPC for its workers), else this process's memory.
    rateLimitStore: store.dialect === "postgres" ? { store: fleetRateLimitStore(store.db) } : over.rateLimitStore ? { store: over.rateLimitStore } : {},
    async start() {
      if (started) return;
      started = true;
      await watcher.start();
    },
    async close() {
      await watcher.close();
    },
  };
}
