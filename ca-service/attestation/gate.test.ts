import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync, rmSync } from "node:fs";
import { request as httpsRequest } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createCaServer, type CaServer } from "../server.js";
import { makeTestCa, opensslCsr, quietLogger, softHsm, sqliteStore, testConfig, type SoftHsm, type TestCa, type TestStore } from "../test-helpers.js";

/**
 * Hook scoping of the feature plugins (issue 14): the renewal attestation gate is registered by the attestation
 * feature but guards POST /v1/renew, which the ca feature's plugin registers. Over real mTLS (the renewal's own
 * authentication passes), a renewal without an attestation result is refused when `requiredForRenewal` is on and
 * goes through when it is off — so a gate that stops reaching the route (encapsulated by mistake) fails here.
 * Authentication hooks still run on the feature plugins' routes: no token → 401 on an admin route of each feature.
 */
let hsm: SoftHsm;
let ts: TestStore;
let t: TestCa;
let gated: CaServer;
let open: CaServer;
let gatedUrl: string;
let openUrl: string;
let dir: string;

interface Res { status: number; json: Record<string, unknown> }

function call(base: string, method: string, path: string, opts: { token?: string; body?: unknown; cert?: string; key?: string; headers?: Record<string, string> } = {}): Promise<Res> {
  const payload = opts.body !== undefined ? Buffer.from(JSON.stringify(opts.body)) : undefined;
  return new Promise((resolve, reject) => {
    const req = httpsRequest(new URL(path, base), {
      method, ca: t.init.root.certPem, ...(opts.cert ? { cert: opts.cert, key: opts.key } : {}),
      headers: {
        ...opts.headers,
        ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
        ...(payload ? { "content-type": "application/json", "content-length": String(payload.length) } : {}),
      },
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString();
        resolve({ status: res.statusCode ?? 0, json: text ? JSON.parse(text) as Record<string, unknown> : {} });
      });
    });
    req.on("error", reject);
    if (payload) req.write(payload);
    req.end();
  });
}

/** A device with a fresh identity certificate: what it needs to renew over mTLS. */
async function device(id: string): Promise<{ cert: string; key: string; csr: string }> {
  const e = await call(gatedUrl, "PUT", `/v1/admin/enrollments/${id}`, { token: t.init.adminToken, body: { kind: "device", dnsNames: [] } });
  expect(e.status).toBe(200);
  const k = opensslCsr(dir, id);
  const issued = await call(gatedUrl, "POST", "/v1/certificates", { token: t.init.adminToken, body: { csr: k.csr, profile: "device-identity", deviceId: id } });
  expect(issued.status).toBe(201);
  return { cert: String(issued.json.certificatePem), key: k.key, csr: k.csr };
}

beforeAll(async () => {
  hsm = softHsm("et-ca-attestation-gate");
  ts = await sqliteStore();
  dir = mkdtempSync(join(tmpdir(), "et-ca-gate-"));
  const base = testConfig({ revocationPort: -1 });
  t = await makeTestCa(ts.store, await hsm.open(), base);
  gated = await createCaServer({ ...base, attestation: { ...base.attestation, requiredForRenewal: true } }, { ca: t.ca, store: ts.store, logger: quietLogger() });
  open = await createCaServer(base, { ca: t.ca, store: ts.store, logger: quietLogger() });
  gatedUrl = (await gated.listen()).url;
  openUrl = (await open.listen()).url;
});

afterAll(async () => {
  await gated?.close();
  await open?.close();
  await ts?.cleanup();
  await t?.keys.close();
  hsm?.cleanup();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("the renewal attestation gate reaches the ca feature's renewal route", () => {
  it("requiredForRenewal on: an authenticated renewal without an attestation result is 403 with the gate's reason", async () => {
    const d = await device("gate-1");
    const r = await call(gatedUrl, "POST", "/v1/renew", { cert: d.cert, key: d.key, body: { csr: d.csr } });
    expect(r.status, JSON.stringify(r.json)).toBe(403);
    expect(r.json).toMatchObject({ code: "FORBIDDEN", detail: expect.stringMatching(/renewal requires a fresh affirming attestation result/) });
    const forged = await call(gatedUrl, "POST", "/v1/renew", { cert: d.cert, key: d.key, body: { csr: d.csr }, headers: { "x-edgetrust-attestation": "eyJhbGciOiJub25lIn0.e30." } });
    expect(forged.status, JSON.stringify(forged.json)).toBe(403);
  });

  it("requiredForRenewal off: the same renewal goes through (the gate is what refused it above)", async () => {
    const d = await device("gate-2");
    const r = await call(openUrl, "POST", "/v1/renew", { cert: d.cert, key: d.key, body: { csr: d.csr } });
    expect(r.status, JSON.stringify(r.json)).toBe(200);
    expect(r.json).toMatchObject({ rekey: false });
  });

  it("the gate guards only renewal: issuance, reads and attestation nonces need no attestation result", async () => {
    expect((await call(gatedUrl, "GET", "/v1/cas")).status).toBe(200);
    expect((await call(gatedUrl, "POST", "/v1/attestation/nonce")).status).toBe(200);
    expect((await call(gatedUrl, "GET", "/v1/certificates", { token: t.init.adminToken })).status).toBe(200);
  });
});

describe("authentication hooks still apply inside every feature plugin", () => {
  it.each([
    ["ca", "GET", "/v1/certificates"],
    ["ca", "GET", "/v1/audit"],
    ["enrollment", "GET", "/v1/lines"],
    ["deployments", "GET", "/v1/deployments"],
  ])("%s: %s %s without a token → 401", async (_feature, method, path) => {
    for (const url of [gatedUrl, openUrl]) {
      const r = await call(url, method, path);
      expect(r.status, `${url}${path}: ${JSON.stringify(r.json)}`).toBe(401);
      expect(r.json).toMatchObject({ code: "UNAUTHENTICATED" });
    }
  });
});
