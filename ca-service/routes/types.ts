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
