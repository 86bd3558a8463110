import { afterAll, beforeAll, describe, expect, it } from "vitest";
import Fastify, { type FastifyInstance } from "fastify";
import { createCaServer, type CaServer } from "./server.js";
import { enforceRouteAuth, type RouteAuthEntry } from "./route-auth.js";
import { requireRole } from "./http.js";
import { makeTestCa, quietLogger, softHsm, sqliteStore, testConfig, type SoftHsm, type TestCa, type TestStore } from "./test-helpers.js";

/**
 * Issue 17: authentication and role come before the body schema on every route. The test walks the server's route
 * table (every route of both listeners, recorded by the start-up check in route-auth.ts) and attacks each route that
 * takes a credential with garbage bodies: no credential, a provisioning-line token where an API token is needed, an
 * auditor where an admin is needed. The answer is always 401/403, never a schema 400.
 */
let hsm: SoftHsm;
let ts: TestStore;
let t: TestCa;
let server: CaServer;
let app: FastifyInstance;
let admin: string;
let auditor: string;
let readLine: string;

const GARBAGE_BODIES: { payload: string; type: string }[] = [
  { payload: JSON.stringify({ garbage: [1, 2, 3], csr: 42 }), type: "application/json" },
  { payload: "{not json", type: "application/json" },
  { payload: "\u0000\u0001binary", type: "application/octet-stream" },
];

function concrete(url: string): string {
  return url.replace(/:registrationId|:deviceId|:groupId|:id/g, "walk-1").replace(/:serial/g, "0a1b").replace(/:file/g, "x.crl").replace(/:idScope/g, "0ne00WALK").replace(/:operationId/g, "00000000-0000-4000-8000-000000000000").replace(/\*/g, "x");
}

function expectAuthProblem(r: { statusCode: number; body: string; headers: Record<string, unknown> }, statuses: number[], what: string): void {
  expect(statuses, `${what}: ${r.statusCode} ${r.body}`).toContain(r.statusCode);
  expect(String(r.headers["content-type"]), what).toContain("json");
  const p = JSON.parse(r.body) as { code?: string };
  expect(["UNAUTHENTICATED", "FORBIDDEN"], what).toContain(p.code);
}

beforeAll(async () => {
  hsm = softHsm("et-ca-auth-order");
  ts = await sqliteStore();
  const config = testConfig();
  t = await makeTestCa(ts.store, await hsm.open(), config);
  server = await createCaServer(config, { ca: t.ca, store: ts.store, logger: quietLogger(), plainHttp: true });
  app = server.app;
  await app.ready();
  await server.revocationApp?.ready();
  admin = t.init.adminToken;
  auditor = (await ts.store.createToken("aud", "auditor", "test")).token;
  const l = await app.inject({ method: "POST", url: "/v1/lines", headers: { authorization: `Bearer ${admin}` }, payload: { name: "read-only line", scopes: ["read"] } });
  expect(l.statusCode, l.body).toBe(201);
  readLine = String((JSON.parse(l.body) as { token: string }).token);
});

afterAll(async () => {
  await server?.close();
  await ts?.cleanup();
  await t?.keys.close();
  hsm?.cleanup();
});

const routes = (): RouteAuthEntry[] => server.routeAuth.filter((r) => r.method !== "HEAD");
const authenticated = (): RouteAuthEntry[] => routes().filter((r) => r.auth !== "public" && r.auth !== "bootstrap");

describe("authentication before the body schema, on every route", () => {
  it("the route table covers every route of the OpenAPI document, and each one says what authenticates it", () => {
    const doc = app.swagger() as { paths: Record<string, Record<string, unknown>> };
    const table = new Set(routes().map((r) => `${r.method} ${r.url}`));
    for (const [path, ops] of Object.entries(doc.paths)) {
      const url = path.replace(/\{\*\}/g, "*").replace(/\{([^}]+)\}/g, ":$1");
      for (const m of Object.keys(ops)) {
        const key = `${m.toUpperCase()} ${url}`;
        expect(table.has(key), `${key} is in the OpenAPI document but not in the route table`).toBe(true);
      }
    }
    expect(authenticated().length).toBeGreaterThan(25);
    for (const r of routes()) expect(r.auth, `${r.method} ${r.url}`).not.toBe("");
    // What is public or bootstrap is a short, reviewed list: a new route lands here only by declaring it.
    expect(routes().filter((r) => r.auth === "bootstrap").map((r) => `${r.method} ${r.url}`).sort()).toEqual([
      "GET /:idScope/registrations/:registrationId/operations/:operationId",
      "POST /.well-known/est/simpleenroll",
      "POST /v1/registrations/:registrationId/tpm-challenge",
      "PUT /:idScope/registrations/:registrationId/register",
      "PUT /v1/registrations/:registrationId",
    ]);
  });

  it("no credential + garbage body → 401 on every authenticated route (never 400)", async () => {
    for (const r of authenticated()) {
      for (const b of GARBAGE_BODIES) {
        const res = await app.inject({ method: r.method as "GET", url: concrete(r.url), ...(r.method === "GET" || r.method === "DELETE" ? {} : { payload: b.payload, headers: { "content-type": b.type } }) });
        expectAuthProblem(res, [401], `${r.method} ${r.url} (${r.auth}) with ${b.type}`);
      }
    }
  });

  it("a provisioning-line token on an admin/auditor route → 401; on a line route lacking the scope → 403; an auditor on an admin route → 403", async () => {
    for (const r of authenticated()) {
      const withBody = r.method === "GET" || r.method === "DELETE" ? {} : { payload: GARBAGE_BODIES[0]?.payload ?? "", headers: { "content-type": "application/json" } };
      const line = await app.inject({ method: r.method as "GET", url: concrete(r.url), ...withBody, headers: { ...(withBody.headers ?? {}), authorization: `Bearer ${readLine}` } });
      if (r.auth.startsWith("role ")) expectAuthProblem(line, [401], `${r.method} ${r.url} with a line token`);
      else if (r.auth === "line scope enroll or admin") expectAuthProblem(line, [403], `${r.method} ${r.url} with a read-only line`);
      else if (!r.auth.startsWith("line scope")) expectAuthProblem(line, [401], `${r.method} ${r.url} (${r.auth}) with a line token`);
      if (r.auth === "role admin" || r.auth === "line scope enroll or admin") {
        const aud = await app.inject({ method: r.method as "GET", url: concrete(r.url), ...withBody, headers: { ...(withBody.headers ?? {}), authorization: `Bearer ${auditor}` } });
        expectAuthProblem(aud, [403], `${r.method} ${r.url} as auditor`);
      }
    }
  });

  it("the issue's case: admin issuance with a line token is 401, with an auditor token 403 — whatever the body", async () => {
    for (const b of GARBAGE_BODIES) {
      const a = await app.inject({ method: "POST", url: "/v1/certificates", payload: b.payload, headers: { "content-type": b.type, authorization: `Bearer ${readLine}` } });
      expectAuthProblem(a, [401], `line token, ${b.type}`);
      const c = await app.inject({ method: "POST", url: "/v1/certificates", payload: b.payload, headers: { "content-type": b.type, authorization: `Bearer ${auditor}` } });
      expectAuthProblem(c, [403], `auditor, ${b.type}`);
    }
    // The admin gets the schema error: authentication passed, then the body was checked.
    const ok = await app.inject({ method: "POST", url: "/v1/certificates", payload: GARBAGE_BODIES[0]?.payload ?? "", headers: { "content-type": "application/json", authorization: `Bearer ${admin}` } });
    expect(ok.statusCode).toBe(400);
  });

  it("device (mTLS) routes refuse an Authorization header: it cannot be verified there", async () => {
    for (const r of authenticated().filter((x) => !x.auth.startsWith("role ") && !x.auth.startsWith("line "))) {
      const res = await app.inject({ method: r.method as "GET", url: concrete(r.url), headers: { authorization: `Bearer ${admin}` } });
      expectAuthProblem(res, [401], `${r.method} ${r.url} with a bearer token`);
    }
  });
});

describe("the start-up check", () => {
  it("a route with no authentication, or with its authentication in preHandler, stops the server from starting", async () => {
    const noAuth = Fastify();
    enforceRouteAuth(noAuth, []);
    await expect(noAuth.register(async (a) => { a.get("/v1/forgotten", async () => "x"); }).ready()).rejects.toThrow(/declares no authentication/);
    const late = Fastify();
    enforceRouteAuth(late, []);
    await expect(late.register(async (a) => { a.post("/v1/late", { preHandler: requireRole(ts.store, "admin") }, async () => "x"); }).ready()).rejects.toThrow(/in preHandler; put it in onRequest/);
  });
});
