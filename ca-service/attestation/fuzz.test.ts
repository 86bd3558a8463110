import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { randomBytes } from "node:crypto";
import * as jose from "jose";
import * as x509 from "@peculiar/x509";
import type { FastifyInstance } from "fastify";
import { createCaServer, type CaServer } from "../server.js";
import { makeTestCa, quietLogger, softHsm, sqliteStore, testConfig, type SoftHsm, type TestCa, type TestStore } from "../test-helpers.js";

/**
 * Issue 17: `POST /v1/attestation/verify` answered 500 to evidence whose x5c was garbage base64 or a string. Every
 * malformed evidence — header, x5c, alg, payload — is a 400 problem+json (403 for a revoked device), never a 500.
 */
let hsm: SoftHsm;
let ts: TestStore;
let t: TestCa;
let server: CaServer;
let app: FastifyInstance;
let deviceKey: CryptoKeyPair;
let deviceCertB64: string;

const b64u = (v: unknown): string => jose.base64url.encode(typeof v === "string" ? v : JSON.stringify(v));

beforeAll(async () => {
  hsm = softHsm("et-ca-att-fuzz");
  ts = await sqliteStore();
  const config = testConfig({ revocationPort: -1 });
  t = await makeTestCa(ts.store, await hsm.open(), config);
  server = await createCaServer(config, { ca: t.ca, store: ts.store, logger: quietLogger(), plainHttp: true });
  app = server.app;
  await app.ready();
  await ts.store.upsertEnrollment({ deviceId: "fuzz-dev", kind: "device", commonName: "fuzz-dev", dnsNames: [] }, "test");
  deviceKey = (await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"])) as CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: "CN=fuzz-dev", keys: deviceKey, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } });
  const issued = await t.ca.issue({ csrPem: csr.toString("pem"), profile: "device-identity", deviceId: "fuzz-dev" }, "test");
  deviceCertB64 = Buffer.from(issued.certificate.rawData).toString("base64");
});

afterAll(async () => {
  await server?.close();
  await ts?.cleanup();
  await t?.keys.close();
  hsm?.cleanup();
});

async function verify(evidence: string): Promise<{ status: number; body: Record<string, unknown>; type: string }> {
  const r = await app.inject({ method: "POST", url: "/v1/attestation/verify", payload: { evidence } });
  return { status: r.statusCode, body: JSON.parse(r.body) as Record<string, unknown>, type: String(r.headers["content-type"]) };
}

/** Evidence with any header and payload, signed by the device key (a valid signature over garbage). */
async function signed(header: Record<string, unknown>, payload: unknown): Promise<string> {
  const input = `${b64u(header)}.${b64u(payload)}`;
  const sig = await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, deviceKey.privateKey, new TextEncoder().encode(input));
  return `${input}.${jose.base64url.encode(new Uint8Array(sig))}`;
}

const goodClaims = async (): Promise<Record<string, unknown>> => {
  const n = (await app.inject({ method: "POST", url: "/v1/attestation/nonce" })).json() as { nonce: string };
  const d = `sha256:${"a".repeat(64)}`;
  return { eat_nonce: n.nonce, iat: Math.floor(Date.now() / 1000), eat_profile: "tag:edgetrust.dev,2026:evidence/v1", sub: "edgetrust://test.edgetrust/devices/fuzz-dev", measurements: { agent: d, policy: d, trustRoot: d, manifest: { digest: d, version: 1 }, modules: {} } };
};

function expect400(r: { status: number; body: Record<string, unknown>; type: string }, what: string): void {
  expect(r.status, `${what}: ${JSON.stringify(r.body)}`).toBe(400);
  expect(r.type, what).toContain("application/problem+json");
  expect(["ATTESTATION_EVIDENCE_INVALID", "ATTESTATION_NONCE_INVALID", "INVALID_INPUT"], what).toContain(r.body.code);
}

describe("POST /v1/attestation/verify with malformed evidence", () => {
  it("the reported cases: x5c garbage base64, x5c a string → 400 (were 500)", async () => {
    const hdr = { alg: "ES256", typ: "eat+jwt" };
    const garbage = await verify(await signed({ ...hdr, x5c: ["!!!not base64***"] }, await goodClaims()));
    expect400(garbage, "x5c garbage base64");
    expect(String(garbage.body.detail)).toMatch(/x5c\[0\] is not base64/);
    const str = await verify(await signed({ ...hdr, x5c: deviceCertB64 }, await goodClaims()));
    expect400(str, "x5c a string");
    expect(String(str.body.detail)).toMatch(/must be an array/);
  });

  it("x5c of every wrong shape and type → 400", async () => {
    const claims = await goodClaims();
    const shapes: unknown[] = [
      42, null, true, {}, [], [42], [null], [[deviceCertB64]], [{ a: 1 }], [""], ["===="], ["AAAA"], [deviceCertB64.slice(0, 40)],
      [deviceCertB64.replace(/\+/g, "-").replace(/\//g, "_")], [`${deviceCertB64}\n`], [Buffer.from("not a certificate at all").toString("base64")],
      [randomBytes(600).toString("base64")], Array.from({ length: 11 }, () => deviceCertB64), ["A".repeat(20000)],
    ];
    for (const x5c of shapes) expect400(await verify(await signed({ alg: "ES256", typ: "eat+jwt", x5c }, claims)), `x5c ${JSON.stringify(x5c).slice(0, 60)}`);
  });

  it("headers and payloads of wrong types → 400; random mutations of valid evidence → never 5xx", async () => {
    const x5c = [deviceCertB64];
    const claims = await goodClaims();
    const headers: Record<string, unknown>[] = [
      { alg: 42, typ: "eat+jwt", x5c }, { alg: "none", typ: "eat+jwt", x5c }, { alg: "HS256", typ: "eat+jwt", x5c }, { alg: ["ES256"], typ: "eat+jwt", x5c },
      { alg: "ES256", typ: 7, x5c }, { alg: "ES256", x5c }, { alg: "ES256", typ: "eat+jwt", x5c, crit: ["zzz"] },
    ];
    for (const h of headers) expect400(await verify(await signed(h, claims)), `header ${JSON.stringify({ ...h, x5c: "…" })}`);
    const payloads: unknown[] = ["a string", 42, null, [], { ...claims, eat_nonce: 5 }, { ...claims, measurements: "x" }, { ...claims, measurements: { ...(claims.measurements as object), modules: [1] } }];
    for (const p of payloads) expect400(await verify(await signed({ alg: "ES256", typ: "eat+jwt", x5c }, p)), `payload ${JSON.stringify(p).slice(0, 60)}`);
    for (const raw of ["a.b.c", "....", `${b64u({ x5c: "x" })}..`, `${b64u("[]")}.${b64u("{}")}.AAAA`, `${b64u({ alg: "ES256", typ: "eat+jwt", x5c: {} })}.e30.AA`, "x".repeat(30)]) {
      expect400(await verify(raw), `raw ${raw.slice(0, 40)}`);
    }
    // Byte flips anywhere in a valid evidence: whatever breaks, the answer is a 4xx problem, never a 5xx.
    const valid = await signed({ alg: "ES256", typ: "eat+jwt", x5c }, claims);
    for (let i = 0; i < 300; i++) {
      const chars = [...valid];
      const at = Math.floor(Math.random() * chars.length);
      chars[at] = "A+/_-.=!~\u00e9{}\"0"[Math.floor(Math.random() * 17)] ?? "A";
      const r = await verify(chars.join(""));
      expect(r.status, `flip at ${at}: ${JSON.stringify(r.body)}`).toBeLessThan(500);
      expect(r.type).toContain("json");
    }
  });

  it("the well-formed evidence still verifies (the fuzzed route is the real one)", async () => {
    const r = await verify(await signed({ alg: "ES256", typ: "eat+jwt", x5c: [deviceCertB64] }, await goodClaims()));
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.deviceId).toBe("fuzz-dev");
  });

  it("renewal's attestation-result header with a garbage x5c is a 4xx too (checkResult)", async () => {
    const { AttestationVerifier } = await import("./verifier.js");
    const v = new AttestationVerifier(t.ca, ts.store, testConfig().attestation);
    for (const x5c of ["AAAA", [42], ["***"], {}]) {
      await expect(v.checkResult(`${b64u({ alg: "ES256", typ: "ear+jwt", x5c })}.e30.AA`, undefined)).rejects.toMatchObject({ code: "FORBIDDEN" });
    }
  });
});
