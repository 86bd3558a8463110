import type { TLSSocket } from "node:tls";
import type { X509Certificate as NodeX509 } from "node:crypto";
import type { FastifyInstance, FastifyRequest } from "fastify";
import { Type, type TObject, type TSchema } from "@sinclair/typebox";
import { EdgeTrustError, installProblemHandler } from "../common/index.js";
import type { CaStore, Principal, Role } from "./store.js";
import { authHook, type AuthHook } from "./route-auth.js";

/** RFC 9457 problem+json, the only error shape the service sends. */
const ProblemSchema = Type.Object(
  {
    type: Type.String(),
    title: Type.String(),
    status: Type.Integer(),
    detail: Type.String(),
    code: Type.String(),
    hint: Type.Optional(Type.String()),
    instance: Type.Optional(Type.String()),
    errors: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
  },
  { $id: "Problem", description: "RFC 9457 problem details" },
);

export const problemResponses = (...statuses: number[]): Record<number, TSchema> =>
  Object.fromEntries(statuses.map((s) => [s, Type.Ref("Problem")]));

const BEARER_REALM = "edgetrust-ca";

/** Map anything a route throws to problem+json (common/http.ts), with the CA's Bearer challenge on 401s. */
export function installProblemHandlers(app: FastifyInstance): void {
  app.addSchema(ProblemSchema);
  installProblemHandler(app, { bearerRealm: BEARER_REALM });
}

// ---- authentication -----------------------------------------------------------------------------------------

declare module "fastify" {
  interface FastifyRequest {
    principal?: Principal;
  }
}

/** The TLS client certificate of a request, if one was presented. */
export function peerCertificate(req: FastifyRequest): NodeX509 | undefined {
  const sock = req.raw.socket as Partial<TLSSocket>;
  if (typeof sock.getPeerX509Certificate !== "function") return undefined;
  return sock.getPeerX509Certificate() ?? undefined;
}

/**
 * Admin/auditor authentication: `Authorization: Bearer <token>` (looked up by its sha256; only hashes are stored),
 * or a TLS client certificate whose SHA-256 fingerprint is registered as a principal (the handshake proved the key).
 * A credential that is presented but unknown is a 401, never a fall-through to anonymous.
 */
export async function authenticate(store: CaStore, req: FastifyRequest): Promise<Principal | undefined> {
  const auth = req.headers.authorization;
  refuseTwoCredentials(req);
  if (auth !== undefined) {
    const m = /^Bearer ([A-Za-z0-9._~+/=-]{16,256})$/.exec(auth);
    if (!m?.[1]) throw new EdgeTrustError("UNAUTHENTICATED", "malformed Authorization header", { hint: "send Authorization: Bearer <token>" });
    const p = await lookupPrincipal(store, "token", m[1]);
    if (!p) throw new EdgeTrustError("UNAUTHENTICATED", "unknown or revoked API token");
    return p;
  }
  const cert = peerCertificate(req);
  if (cert) {
    const now = Date.now();
    if (Date.parse(cert.validFrom) > now || Date.parse(cert.validTo) < now) return undefined;
    const fp = cert.fingerprint256.replace(/:/g, "").toLowerCase();
    return lookupPrincipal(store, "certificate", fp);
  }
  return undefined;
}

/** Credential lookups queued on a PostgreSQL store and not yet sent, by kind and credential. */
const queuedLookups = new WeakMap<CaStore, Map<string, Promise<Principal | undefined>>>();

/**
 * On PostgreSQL a lookup is a round trip per request, and under load most requests carry the same few credentials (a
 * provisioning system's token): requests for one credential that arrive in the same turn of the event loop share one
 * query, sent after the last of them arrived — no request gets an answer read before it came, so a revoked
 * credential stops working exactly as before. SQLite reads in-process, synchronously: each request reads its own.
 */
function lookupPrincipal(store: CaStore, kind: "token" | "certificate", credential: string): Promise<Principal | undefined> {
  const read = () => kind === "token" ? store.principalForToken(credential) : store.principalForCertificate(credential);
  if (store.dialect !== "postgres") return read();
  let queued = queuedLookups.get(store);
  if (!queued) queuedLookups.set(store, (queued = new Map()));
  const k = `${kind}\u0000${credential}`;
  let p = queued.get(k);
  if (!p) {
    const q = queued;
    p = new Promise<void>((resolve) => setImmediate(resolve)).then(() => {
      // From here on a request for this credential waits for a query of its own.
      q.delete(k);
      return read();
    });
    q.set(k, p);
  }
  return p;
}

/**
 * A route's answer of string properties only, written with the native JSON.stringify: fast-json-stringify escapes
 * strings one character at a time in JavaScript, which for the PEM of a certificate and its chain was ~2% of a
 * worker's CPU per issuance. Like fastify's serializer it writes exactly the schema's properties (nothing the
 * handler adds beyond them leaves the service), and refuses a required one that is missing or not a string.
 */
export function stringPropertiesSerializer(schema: TObject): (payload: unknown) => string {
  const props = Object.entries(schema.properties).map(([name, s]) => {
    if ((s as TSchema).type !== "string") throw new Error(`stringPropertiesSerializer: property ${name} is not a string`);
    return { name, key: JSON.stringify(name), required: (schema.required ?? []).includes(name) };
  });
  return (payload: unknown): string => {
    const o = payload as Record<string, unknown>;
    let out = "";
    for (const p of props) {
      const v = o[p.name];
      if (v === undefined && !p.required) continue;
      if (typeof v !== "string") throw new EdgeTrustError("INTERNAL", `answer property ${p.name} is ${v === undefined ? "missing" : "not a string"}`);
      out += `${out ? "," : "{"}${p.key}:${JSON.stringify(v)}`;
    }
    return out ? `${out}}` : "{}";
  };
}

/**
 * A caller presents one credential. With a token AND a client certificate only one would be consulted and the other
 * ignored — a presented credential is verified or the request refused — so both together are a 401.
 */
export function refuseTwoCredentials(req: FastifyRequest): void {
  if (req.headers.authorization !== undefined && peerCertificate(req)) {
    throw new EdgeTrustError("UNAUTHENTICATED", "present one credential: an Authorization header or a TLS client certificate, not both", { hint: "a credential that is presented must be the one that authenticates the caller" });
  }
}

/** onRequest (before the body is read): the request must carry a credential of one of `roles`. */
export function requireRole(store: CaStore, ...roles: Role[]): AuthHook {
  return authHook(async (req: FastifyRequest): Promise<void> => {
    const p = await authenticate(store, req);
    if (!p) throw new EdgeTrustError("UNAUTHENTICATED", "this route needs an admin or auditor credential", { hint: "send Authorization: Bearer <token> (edgetrust ca token create)" });
    if (!roles.includes(p.role)) throw new EdgeTrustError("FORBIDDEN", `role ${p.role} may not ${req.method} ${req.routeOptions.url ?? req.url}`, { hint: `needs role ${roles.join(" or ")}` });
    req.principal = p;
  }, `role ${roles.join("|")}`);
}

export function actorOf(req: FastifyRequest): string {
  return req.principal ? `${req.principal.kind}:${req.principal.name}(${req.principal.id})` : "anonymous";
}

export const SecurityBearer = [{ bearer: [] as string[] }];
