import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from "fastify";

/**
 * Authentication runs before the body is parsed or validated, on every route, by construction: a route either has an
 * authentication hook (made by `authHook`) in its `onRequest`, or declares in `config.auth` why it has none. A route
 * that does neither — or puts an authentication hook in a later phase — makes the server refuse to start. So an
 * unauthenticated or wrong-role caller learns "401/403", never which field of the body is wrong.
 */
type DeclaredAuth =
  /** Anyone: health, metrics, OpenAPI, trust bundle, CRL, OCSP, attestation nonce/verify (the evidence is the proof). */
  | "public"
  /** A device's bootstrap credential that can only be checked with the body: the CSR of a publicKey enrollment, a
   * TPM proof, the EK of a TPM challenge (registration, EST simpleenroll, DPS). Verified by the handler. */
  | "bootstrap"
  /** The security console (console/): a session cookie checked by the console plugin; its sign-in pages start one. */
  | "session";

declare module "fastify" {
  interface FastifyContextConfig {
    /** Routes without an `authHook` in onRequest say why here. */
    auth?: DeclaredAuth;
  }
}

export type AuthHook = (req: FastifyRequest, reply: FastifyReply) => Promise<void>;

const AUTH_HOOK = Symbol.for("edgetrust.ca-service.auth-hook");

/** Mark a hook as the route's authentication (only marked hooks count as "authenticated before the body"). */
export function authHook(fn: AuthHook, describe: string): AuthHook {
  return Object.assign(fn, { [AUTH_HOOK]: describe });
}

function authOf(fns: unknown): string | undefined {
  for (const f of [fns].flat()) {
    const d = (f as Record<symbol, unknown> | undefined)?.[AUTH_HOOK];
    if (typeof d === "string") return d;
  }
  return undefined;
}

/** One row per route: what authenticates it. `createCaServer` exposes the table (tests walk it). */
export interface RouteAuthEntry {
  method: string;
  url: string;
  /** `public`, `bootstrap`, or what the onRequest hook checks (e.g. `role admin`). */
  auth: string;
}

/**
 * Install the check on an app before any route is registered; every route registered after it lands in `table`.
 * Routes are checked when the app gets ready (after every onRoute hook, so a plugin may declare its routes' auth in
 * its own onRoute hook); a route that fails the check stops `ready()`/`listen()`.
 */
export function enforceRouteAuth(app: FastifyInstance, table: RouteAuthEntry[]): void {
  const routes: RouteOptions[] = [];
  app.addHook("onRoute", (r: RouteOptions) => {
    routes.push(r);
  });
  app.addHook("onReady", async () => {
    for (const r of routes) table.push(checkRoute(r));
  });
}

function checkRoute(r: RouteOptions): RouteAuthEntry {
  const methods = [r.method].flat().join(",");
  const where = `${methods} ${r.url}`;
  for (const phase of ["preParsing", "preValidation", "preHandler"] as const) {
    if (authOf(r[phase])) throw new Error(`route ${where}: its authentication hook is in ${phase}; put it in onRequest so it runs before the body is parsed and validated`);
  }
  const hooked = authOf(r.onRequest);
  const declared = (r.config as { auth?: DeclaredAuth } | undefined)?.auth;
  if (hooked && declared) throw new Error(`route ${where}: has an authentication hook and also declares config.auth ${declared}`);
  if (!hooked && !declared) {
    throw new Error(`route ${where} declares no authentication: add onRequest: requireRole(...)/requireLine(...)/requireDevice(...), or config: { auth: "public" | "bootstrap" | "session" }`);
  }
  return { method: methods, url: r.url, auth: hooked ?? declared ?? "" };
}
