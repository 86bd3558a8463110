import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createHmac } from "node:crypto";
import { csrPem, ecKeys, factoryCa, spkiPem, startEnrollmentCa, type EnrollmentCa, type FactoryCa } from "./test-fixtures.js";
import { deriveDeviceKey } from "./credentials.js";

/**
 * Issue 17: a presented credential that fails is never ignored because another one (the CSR, a token) suffices.
 * Each test is the attack, over real HTTPS: the request is refused (401) and the refusal is in the audit log.
 */
let e: EnrollmentCa;
let lineToken: string;
let factory: FactoryCa;
let groupKey: string;

const SCOPE = "0ne00ATTACK";
const soon = (): number => Math.floor(Date.now() / 1000) + 600;
function sas(sr: string, keyB64: string, se = soon()): string {
  const srEnc = encodeURIComponent(sr);
  const sig = createHmac("sha256", Buffer.from(keyB64, "base64")).update(`${srEnc}\n${se}`).digest("base64");
  return `SharedAccessSignature sr=${srEnc}&sig=${encodeURIComponent(sig)}&se=${se}&skn=registration`;
}

async function refusals(target: string): Promise<{ actor: string; details: string }[]> {
  return e.ts.store.db.query<{ actor: string; details: string }>("SELECT actor, details FROM audit_log WHERE action = 'registration.refused' AND target = ?", [target]);
}

async function issuedTo(deviceId: string): Promise<number> {
  const rows = await e.ts.store.db.query<{ n: number | string }>("SELECT COUNT(*) AS n FROM certificates WHERE device_id = ?", [deviceId]);
  return Number(rows[0]?.n ?? 0);
}

/** A publicKey enrollment for `id` and a CSR signed by the enrolled key (the credential that does verify). */
async function publicKeyDevice(id: string): Promise<{ csr: string }> {
  const keys = await ecKeys();
  const r = await e.call("PUT", `/v1/enrollments/${id}`, { token: lineToken, body: { attestation: "publicKey", credential: await spkiPem(keys.publicKey), edgeCa: false } });
  expect(r.status, r.body.toString()).toBe(201);
  return { csr: await csrPem(keys, id) };
}

beforeAll(async () => {
  e = await startEnrollmentCa();
  lineToken = String((await e.call("POST", "/v1/lines", { token: e.t.init.adminToken, body: { name: "attack line" } })).json().token);
  factory = await factoryCa("Attack Factory CA");
  groupKey = String((await e.call("PUT", "/v1/enrollment-groups/attack-sym", { token: lineToken, body: { attestation: "symmetricKey", edgeCa: false } })).json().groupKey);
});

afterAll(async () => {
  await e?.close();
});

describe("a presented credential is verified or the request refused", () => {
  it("DPS route: a publicKey enrollment with a forged SAS token is 401 (was 202 assigning: the CSR alone authenticated), audited, nothing issued", async () => {
    const { csr } = await publicKeyDevice("pk-forged-sas");
    const forged = sas(`${SCOPE}/registrations/pk-forged-sas`, Buffer.alloc(32, 7).toString("base64"));
    const r = await e.call("PUT", `/${SCOPE}/registrations/pk-forged-sas/register?api-version=2019-03-31`, { authorization: forged, body: { registrationId: "pk-forged-sas", payload: { csr } } });
    expect(r.status, r.body.toString()).toBe(401);
    expect(r.json()).toMatchObject({ code: "UNAUTHENTICATED", errorCode: 401001 });
    expect(String(r.json().message)).toMatch(/SAS token was presented.*enrolled public key/);
    expect(await issuedTo("pk-forged-sas")).toBe(0);
    const audit = await refusals("pk-forged-sas");
    expect(audit).toHaveLength(1);
    expect(JSON.parse(audit[0]?.details ?? "{}")).toMatchObject({ code: "UNAUTHENTICATED", status: 401, credential: "sas" });
    // A forged SAS that happens to be the right one for a symmetric group would still be verified — and the CSR-only
    // request for the same device is what a publicKey device sends; it still works (on the JSON API).
    const ok = await e.call("PUT", "/v1/registrations/pk-forged-sas", { headers: { "idempotency-key": "pk-forged-sas-1" }, body: { csr } });
    expect(ok.status, ok.body.toString()).toBe(201);
  });

  it("JSON route: a publicKey enrollment with a wrong Basic password, or with a SAS, is 401", async () => {
    const { csr } = await publicKeyDevice("pk-basic");
    const basic = `Basic ${Buffer.from("pk-basic:not-the-key").toString("base64")}`;
    const r = await e.call("PUT", "/v1/registrations/pk-basic", { authorization: basic, headers: { "idempotency-key": "pk-basic-1" }, body: { csr } });
    expect(r.status, r.body.toString()).toBe(401);
    expect(String(r.json().detail)).toMatch(/Basic password was presented/);
    const s = await e.call("PUT", "/v1/registrations/pk-basic", { authorization: sas(`${SCOPE}/registrations/pk-basic`, groupKey), headers: { "idempotency-key": "pk-basic-2" }, body: { csr } });
    expect(s.status).toBe(401);
    expect(await issuedTo("pk-basic")).toBe(0);
    expect(await refusals("pk-basic")).toHaveLength(2);
  });

  it("JSON route: a publicKey enrollment with an unrelated TLS client certificate is 401", async () => {
    const { csr } = await publicKeyDevice("pk-cert");
    const stranger = await factory.issue("someone-else");
    const r = await e.call("PUT", "/v1/registrations/pk-cert", { cert: stranger.certPem, key: stranger.keyPem, headers: { "idempotency-key": "pk-cert-1" }, body: { csr } });
    expect(r.status, r.body.toString()).toBe(401);
    expect(String(r.json().detail)).toMatch(/TLS client certificate was presented/);
    expect(await issuedTo("pk-cert")).toBe(0);
  });

  it("a right SAS beside a wrong client certificate (or the reverse) is 401: one credential, the one that authenticates", async () => {
    const id = "sym-two-creds";
    const good = sas(`${SCOPE}/registrations/${id}`, deriveDeviceKey(groupKey, id));
    const stranger = await factory.issue(id);
    const r = await e.call("PUT", `/${SCOPE}/registrations/${id}/register`, { authorization: good, cert: stranger.certPem, key: stranger.keyPem, body: { registrationId: id, payload: { csr: await csrPem(await ecKeys()) } } });
    expect(r.status, r.body.toString()).toBe(401);
    expect(String(r.json().message)).toMatch(/one bootstrap credential/);
    expect(await issuedTo(id)).toBe(0);
    // The same SAS alone registers: the refusal above was the second credential, not the first.
    const ok = await e.call("PUT", `/${SCOPE}/registrations/${id}/register`, { authorization: good, body: { registrationId: id, payload: { csr: await csrPem(await ecKeys()) } } });
    expect(ok.status, ok.body.toString()).toBe(202);
  });

  it("EST simpleenroll: Basic credentials beside a client certificate are 401", async () => {
    const id = "est-two-creds";
    const stranger = await factory.issue(id);
    const basic = `Basic ${Buffer.from(`${id}:${deriveDeviceKey(groupKey, id)}`).toString("base64")}`;
    const csr = await csrPem(await ecKeys(), id);
    const r = await e.call("POST", "/.well-known/est/simpleenroll", { authorization: basic, cert: stranger.certPem, key: stranger.keyPem, raw: csr, contentType: "application/pkcs10" });
    expect(r.status, r.body.toString()).toBe(401);
    expect(await issuedTo(id)).toBe(0);
  });

  it("admin and line routes: a valid token beside an unregistered client certificate is 401", async () => {
    const stranger = await factory.issue("not-an-admin");
    const admin = await e.call("GET", "/v1/certificates", { token: e.t.init.adminToken, cert: stranger.certPem, key: stranger.keyPem });
    expect(admin.status, admin.body.toString()).toBe(401);
    expect(String(admin.json().detail)).toMatch(/one credential/);
    const line = await e.call("GET", "/v1/enrollments", { token: lineToken, cert: stranger.certPem, key: stranger.keyPem });
    expect(line.status, line.body.toString()).toBe(401);
    // Each credential alone is answered as before.
    expect((await e.call("GET", "/v1/certificates", { token: e.t.init.adminToken })).status).toBe(200);
    expect((await e.call("GET", "/v1/enrollments", { token: lineToken })).status).toBe(200);
  });
});
