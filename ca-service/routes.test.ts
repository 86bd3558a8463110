import { afterAll, beforeAll, describe, expect, it } from "vitest";
import * as x509 from "@peculiar/x509";
import type { FastifyInstance } from "fastify";
import { Writable } from "node:stream";
import { Type } from "@sinclair/typebox";
import { createLogger } from "../common/index.js";
import { stringPropertiesSerializer } from "./http.js";
import { createCaServer, type CaServer } from "./server.js";
import { makeTestCa, quietLogger, softHsm, sqliteStore, testConfig, type SoftHsm, type TestCa, type TestStore } from "./test-helpers.js";

/** Parse and auth tests of every route, through fastify's inject (no sockets). */
let hsm: SoftHsm;
let ts: TestStore;
let t: TestCa;
let server: CaServer;
let app: FastifyInstance;
let admin: string;
let auditor: string;

async function csr(cn: string): Promise<string> {
  const keys = (await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"])) as CryptoKeyPair;
  return (await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=${cn}`, keys, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } })).toString("pem");
}

function problem(r: { statusCode: number; headers: Record<string, unknown>; body: string }, status: number, code: string): Record<string, unknown> {
  expect(r.statusCode).toBe(status);
  expect(String(r.headers["content-type"])).toContain("application/problem+json");
  const p = JSON.parse(r.body) as Record<string, unknown>;
  expect(p).toMatchObject({ status, code });
  expect(p.type).toMatch(/^urn:edgetrust:error:/);
  return p;
}

const bearer = (tok: string) => ({ authorization: `Bearer ${tok}` });

beforeAll(async () => {
  hsm = softHsm("et-ca-routes");
  ts = await sqliteStore();
  const config = testConfig({ revocationPort: -1 });
  t = await makeTestCa(ts.store, await hsm.open(), config);
  server = await createCaServer(config, { ca: t.ca, store: ts.store, logger: quietLogger(), plainHttp: true });
  app = server.app;
  await app.ready();
  admin = t.init.adminToken;
  auditor = (await ts.store.createToken("aud", "auditor", "test")).token;
  await ts.store.upsertEnrollment({ deviceId: "r1", kind: "device", commonName: "r1", dnsNames: ["r1.local"] }, "test");
});

afterAll(async () => {
  await server?.close();
  await ts?.cleanup();
  await t?.keys.close();
  hsm?.cleanup();
});

describe("v1-certificates-issue", () => {
  it("auth: none 401, auditor 403, admin 201", async () => {
    const body = { csr: await csr("x"), profile: "device-identity", deviceId: "r1" };
    problem(await app.inject({ method: "POST", url: "/v1/certificates", payload: body }), 401, "UNAUTHENTICATED");
    problem(await app.inject({ method: "POST", url: "/v1/certificates", payload: body, headers: bearer(auditor) }), 403, "FORBIDDEN");
    const ok = await app.inject({ method: "POST", url: "/v1/certificates", payload: body, headers: bearer(admin) });
    expect(ok.statusCode).toBe(201);
    // Written by its own serializer (stringPropertiesSerializer): JSON, exactly the schema's properties, PEM intact.
    expect(ok.headers["content-type"]).toBe("application/json; charset=utf-8");
    const issued = ok.json<{ certificatePem: string; chainPem: string }>();
    expect(Object.keys(issued)).toEqual(["serial", "profile", "notAfter", "certificatePem", "chainPem", "issuerId"]);
    expect(issued.chainPem.startsWith(issued.certificatePem)).toBe(true);
    expect(issued.certificatePem).toMatch(/^-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+-----END CERTIFICATE-----\n?$/);
  });
  it("an answer of string properties: only the schema's properties leave, a missing or non-string one is refused", () => {
    const schema = Type.Object({ a: Type.String(), b: Type.Optional(Type.String()) });
    const write = stringPropertiesSerializer(schema);
    expect(write({ a: "x\n\"y\"", extra: "secret" })).toBe('{"a":"x\\n\\"y\\""}');
    expect(JSON.parse(write({ a: "1", b: "2" }))).toEqual({ a: "1", b: "2" });
    expect(() => write({ b: "2" })).toThrow(/a is missing/);
    expect(() => write({ a: 5 })).toThrow(/a is not a string/);
    expect(() => stringPropertiesSerializer(Type.Object({ n: Type.Integer() }))).toThrow(/not a string/);
  });
  it("parse: missing, wrong type, unknown field, not JSON, too large", async () => {
    expect(problem(await app.inject({ method: "POST", url: "/v1/certificates", payload: { profile: "device-identity", deviceId: "r1" }, headers: bearer(admin) }), 400, "INVALID_INPUT").detail).toBe("body/csr: is required");
    expect(String(problem(await app.inject({ method: "POST", url: "/v1/certificates", payload: { csr: 5, profile: "device-identity", deviceId: "r1" }, headers: bearer(admin) }), 400, "INVALID_INPUT").detail)).toMatch(/^body\/csr/);
    expect(problem(await app.inject({ method: "POST", url: "/v1/certificates", payload: { csr: await csr("y"), profile: "device-identity", deviceId: "r1", subject: "CN=evil" }, headers: bearer(admin) }), 400, "INVALID_INPUT").detail).toBe("body/subject: is not allowed");
    problem(await app.inject({ method: "POST", url: "/v1/certificates", payload: "{not json", headers: { ...bearer(admin), "content-type": "application/json" } }), 400, "INVALID_INPUT");
    problem(await app.inject({ method: "POST", url: "/v1/certificates", payload: JSON.stringify({ csr: "A".repeat(70_000) }), headers: { ...bearer(admin), "content-type": "application/json" } }), 413, "TOO_LARGE");
    expect(String(problem(await app.inject({ method: "POST", url: "/v1/certificates", payload: { csr: await csr("z"), profile: "device-identity", deviceId: "bad id!" }, headers: bearer(admin) }), 400, "INVALID_INPUT").detail)).toMatch(/^body\/deviceId/);
  });
});

describe("request logging", () => {
  it("at info no line per request; at debug one, without the query string", async () => {
    for (const level of ["info", "debug"]) {
      const lines: Record<string, unknown>[] = [];
      const destination = new Writable({ write(chunk: Buffer, _enc, cb) { lines.push(...chunk.toString().trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>)); cb(); } });
      const s = await createCaServer(testConfig({ revocationPort: -1 }), { ca: t.ca, store: ts.store, logger: createLogger("ca-service", { level, destination }), plainHttp: true });
      try {
        await s.app.ready();
        const before = lines.length;
        expect((await s.app.inject({ method: "GET", url: "/healthz?probe=1" })).statusCode).toBe(200);
        expect((await s.app.inject({ method: "GET", url: "/v1/certificates?limit=5", headers: bearer(auditor) })).statusCode).toBe(200);
        const perRequest = lines.slice(before);
        if (level === "info") expect(perRequest).toEqual([]);
        else {
          expect(perRequest.map((l) => [l.msg, l.url, l.status])).toEqual([["request", "/healthz", 200], ["request", "/v1/certificates", 200]]);
          expect(perRequest.every((l) => l.level === "debug" && typeof l.ms === "number")).toBe(true);
        }
      } finally {
        await s.close();
      }
    }
  });
});

describe("v1-certificates-get and revoke", () => {
  it("auth and parse", async () => {
    problem(await app.inject({ method: "GET", url: "/v1/certificates" }), 401, "UNAUTHENTICATED");
    expect((await app.inject({ method: "GET", url: "/v1/certificates?limit=5", headers: bearer(auditor) })).statusCode).toBe(200);
    expect(String(problem(await app.inject({ method: "GET", url: "/v1/certificates?limit=0", headers: bearer(auditor) }), 400, "INVALID_INPUT").detail)).toMatch(/^querystring\/limit/);
    expect(String(problem(await app.inject({ method: "GET", url: "/v1/certificates/not-hex", headers: bearer(auditor) }), 400, "INVALID_INPUT").detail)).toMatch(/^params\/serial/);
    problem(await app.inject({ method: "GET", url: "/v1/certificates/abcdef", headers: bearer(auditor) }), 404, "NOT_FOUND");
    problem(await app.inject({ method: "POST", url: "/v1/certificates/abcdef/revoke", payload: { reason: "keyCompromise" }, headers: bearer(auditor) }), 403, "FORBIDDEN");
    problem(await app.inject({ method: "POST", url: "/v1/certificates/abcdef/revoke", payload: { reason: "keyCompromise" }, headers: bearer(admin) }), 404, "NOT_FOUND");
  });
});

describe("v1-renew", () => {
  it("without a TLS client certificate: 401", async () => {
    problem(await app.inject({ method: "POST", url: "/v1/renew", payload: { csr: await csr("r") } }), 401, "UNAUTHENTICATED");
  });
});

describe("v1-audit", () => {
  it("auditor reads and verifies; bad query is 400", async () => {
    problem(await app.inject({ method: "GET", url: "/v1/audit/verify" }), 401, "UNAUTHENTICATED");
    expect(JSON.parse((await app.inject({ method: "GET", url: "/v1/audit/verify", headers: bearer(auditor) })).body)).toMatchObject({ ok: true });
    expect(String(problem(await app.inject({ method: "GET", url: "/v1/audit?afterSeq=-1", headers: bearer(auditor) }), 400, "INVALID_INPUT").detail)).toMatch(/^querystring\/afterSeq/);
  });
});

describe("v1-admin", () => {
  it("tokens: admin only, role validated; revoked token stops working", async () => {
    problem(await app.inject({ method: "POST", url: "/v1/admin/tokens", payload: { name: "n", role: "root" }, headers: bearer(admin) }), 400, "INVALID_INPUT");
    const r = await app.inject({ method: "POST", url: "/v1/admin/tokens", payload: { name: "temp", role: "auditor" }, headers: bearer(admin) });
    expect(r.statusCode).toBe(201);
    const { id, token } = JSON.parse(r.body) as { id: string; token: string };
    expect((await app.inject({ method: "GET", url: "/v1/audit", headers: bearer(token) })).statusCode).toBe(200);
    expect((await app.inject({ method: "DELETE", url: `/v1/admin/principals/${id}`, headers: bearer(admin) })).statusCode).toBe(204);
    problem(await app.inject({ method: "GET", url: "/v1/audit", headers: bearer(token) }), 401, "UNAUTHENTICATED");
  });
  it("enrollment records: DNS names validated", async () => {
    expect(String(problem(await app.inject({ method: "PUT", url: "/v1/admin/enrollments/r2", payload: { dnsNames: ["Bad_Name"] }, headers: bearer(admin) }), 400, "INVALID_INPUT").detail)).toMatch(/^body\/dnsNames\/0/);
    expect((await app.inject({ method: "PUT", url: "/v1/admin/enrollments/r2", payload: { dnsNames: ["r2.local"] }, headers: bearer(admin) })).statusCode).toBe(200);
  });
});

describe("v1-cas, v1-crl, v1-ocsp, health, metrics, openapi", () => {
  it("public routes answer without credentials", async () => {
    expect(JSON.parse((await app.inject({ method: "GET", url: "/v1/cas" })).body).cas).toHaveLength(2);
    expect((await app.inject({ method: "GET", url: "/v1/cas/bundle.pem" })).body).toContain("BEGIN CERTIFICATE");
    const id = t.ca.current().record.id;
    const crl = await app.inject({ method: "GET", url: `/v1/crl/${id}.crl` });
    expect(crl.headers["content-type"]).toBe("application/pkix-crl");
    expect(String(problem(await app.inject({ method: "GET", url: "/v1/crl/zz.crl" }), 400, "INVALID_INPUT").detail)).toMatch(/^params\/file/);
    problem(await app.inject({ method: "GET", url: `/v1/crl/${"ab".repeat(20)}.crl` }), 404, "NOT_FOUND");
    const o = await app.inject({ method: "POST", url: "/v1/ocsp", payload: Buffer.from("junk"), headers: { "content-type": "application/ocsp-request" } });
    expect(o.statusCode).toBe(200);
    expect(o.headers["content-type"]).toBe("application/ocsp-response");
    expect((await app.inject({ method: "GET", url: "/healthz" })).statusCode).toBe(200);
    expect((await app.inject({ method: "GET", url: "/metrics" })).body).toContain("edgetrust_ca_http_requests_total");
    expect(JSON.parse((await app.inject({ method: "GET", url: "/openapi.json" })).body).info.title).toBe("edgetrust CA");
  });
});
