import { afterAll, beforeAll, describe, expect, it } from "vitest";
import * as x509 from "@peculiar/x509";
import type { FastifyInstance } from "fastify";
import { createCaServer, type CaServer } from "../server.js";
import { normalizeSerial } from "../store.js";
import { makeTestCa, quietLogger, softHsm, sqliteStore, testConfig, type SoftHsm, type TestCa, type TestStore } from "../test-helpers.js";

/**
 * The CRL route is the revocation signal edge hubs poll every few seconds: conditional GET with the ETag they hold is
 * an empty 304 until a revocation changes the CRL, then the new CRL (with the revoked serial) under a new ETag.
 */
let hsm: SoftHsm;
let ts: TestStore;
let t: TestCa;
let server: CaServer;
let app: FastifyInstance;

beforeAll(async () => {
  hsm = softHsm("et-ca-crl-etag");
  ts = await sqliteStore();
  const config = testConfig({ revocationPort: -1 });
  t = await makeTestCa(ts.store, await hsm.open(), config);
  server = await createCaServer(config, { ca: t.ca, store: ts.store, logger: quietLogger(), plainHttp: true });
  app = server.app;
  await app.ready();
  await ts.store.upsertEnrollment({ deviceId: "leaf-etag", kind: "device", commonName: "leaf-etag", dnsNames: [] }, "test");
});

afterAll(async () => {
  await server?.close();
  await ts?.cleanup();
  await t?.keys.close();
  hsm?.cleanup();
});

describe("GET /v1/crl/<issuer>.crl as a change signal", () => {
  it("answers 304 to the current ETag, and a new CRL with a new ETag after a revocation", async () => {
    const url = `/v1/crl/${t.ca.current().record.id}.crl`;
    const first = await app.inject({ method: "GET", url });
    expect(first.statusCode).toBe(200);
    const etag = String(first.headers.etag);
    expect(etag).toMatch(/^"[A-Za-z0-9_-]{32}"$/);
    expect(first.headers["cache-control"]).toBe("no-cache");

    const same = await app.inject({ method: "GET", url, headers: { "if-none-match": etag } });
    expect(same.statusCode).toBe(304);
    expect(same.body).toBe("");
    expect(same.headers.etag).toBe(etag);
    // A weak form and a list holding it match too (RFC 9110); another tag does not.
    expect((await app.inject({ method: "GET", url, headers: { "if-none-match": `"x", W/${etag}` } })).statusCode).toBe(304);
    expect((await app.inject({ method: "GET", url, headers: { "if-none-match": `"other"` } })).statusCode).toBe(200);

    const keys = (await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"])) as CryptoKeyPair;
    const csr = (await x509.Pkcs10CertificateRequestGenerator.create({ name: "CN=leaf-etag", keys, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } })).toString("pem");
    const issued = await app.inject({ method: "POST", url: "/v1/certificates", payload: { csr, profile: "device-identity", deviceId: "leaf-etag" }, headers: { authorization: `Bearer ${t.init.adminToken}` } });
    expect(issued.statusCode, issued.body).toBe(201);
    const serial = String((JSON.parse(issued.body) as { serial: string }).serial);
    const rev = await app.inject({ method: "POST", url: `/v1/certificates/${serial}/revoke`, payload: { reason: "keyCompromise" }, headers: { authorization: `Bearer ${t.init.adminToken}` } });
    expect(rev.statusCode, rev.body).toBe(200);

    const changed = await app.inject({ method: "GET", url, headers: { "if-none-match": etag } });
    expect(changed.statusCode).toBe(200);
    expect(changed.headers.etag).not.toBe(etag);
    const crl = new x509.X509Crl(new Uint8Array(changed.rawPayload));
    // The API answers the store's canonical serial (no leading zeros); the CRL holds the DER INTEGER's octets.
    expect(crl.entries.map((e) => normalizeSerial(e.serialNumber))).toContain(normalizeSerial(serial));
    expect((await app.inject({ method: "GET", url, headers: { "if-none-match": String(changed.headers.etag) } })).statusCode).toBe(304);
  });
});
