import type { FastifyInstance, FastifyPluginAsync } from "fastify";
import type { CertificateAuthority } from "../ca.js";
import type { CaConfig } from "../config.js";
import type { CaMetrics } from "../metrics.js";
import type { CaStore } from "../store.js";

/** What every route plugin is registered with. */
export interface RouteDeps {
  ca: CertificateAuthority;
  store: CaStore;
  config: CaConfig;
  metrics: CaMetrics;
}

/** A feature plugin's body: its route plugins registered side by side, in this order, each with the service's deps. */
export async function registerRoutes(app: FastifyInstance, deps: RouteDeps, plugins: FastifyPluginAsync<RouteDeps>[]): Promise<void> {
  for (const plugin of plugins) await app.register(plugin, deps);
}
