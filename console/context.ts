import type { CaConfig, CaStore, CertificateAuthority } from "../ca-service/index.js";
import type { FleetQueries } from "../ca-service/index.js";
import type { ConsoleConfig } from "./config.js";
import type { Session } from "./session.js";

/** What the console is registered with by `ca serve`. */
export interface ConsoleDeps {
  ca: CertificateAuthority;
  store: CaStore;
  /** The CA's configuration (the attestation policy file the Policy and Deployments pages read). */
  caConfig: CaConfig;
  console: ConsoleConfig;
  /** The clock sessions start and expire by (default Date.now; a test moves it instead of waiting out a lifetime). */
  now?: () => number;
}

/** What a page handler gets: the dependencies, the read queries and the signed-in session. */
export interface PageContext {
  deps: ConsoleDeps;
  queries: FleetQueries;
  session: Session;
  now: number;
}

export const isAdmin = (s: Session): boolean => s.principal.role === "admin";
