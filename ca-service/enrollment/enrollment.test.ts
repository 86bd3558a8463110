import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createHmac } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { Pkcs11KeyStore, SOFTHSM_MODULE, keyStoreCrypto, keyStoreKeyPair } from "../../hsm/index.js";
import { TEST_PIN, quietLogger } from "../test-helpers.js";
import { deriveDeviceKey } from "./credentials.js";
import { csrPem, ecKeys, factoryCa, run, spkiPem, startEnrollmentCa, type EnrollmentCa, type FactoryCa, type Res } from "./test-fixtures.js";

let e: EnrollmentCa;
let admin: string;
let lineToken: string;
let lineId: string;
let factory: FactoryCa;
let rogue: FactoryCa;

function expectProblem(r: Res, status: number, code: string, detail?: RegExp): void {
  expect(r.type).toContain("application/problem+json");
  const p = r.json();
  expect({ status: r.status, code: p.code }).toEqual({ status, code });
  if (detail) expect(String(p.detail)).toMatch(detail);
}

interface AuditRow { seq: number; actor: string; action: string; target: string; details: Record<string, unknown> }

/** Refusal entries in the audit log (read from the store: the API pages at 1,000 entries). */
async function refusals(target: string, action: "registration.refused" | "enrollment.refused" = "registration.refused"): Promise<AuditRow[]> {
  const rows = await e.ts.store.db.query("SELECT seq, actor, action, target, details FROM audit_log WHERE action = ? AND target = ? ORDER BY seq", [action, target]);
  return rows.map((r) => ({ seq: Number(r.seq), actor: String(r.actor), action: String(r.action), target: String(r.target), details: JSON.parse(String(r.details)) as Record<string, unknown> }));
}

/** The refusal was audited (code + reason) and the entry carries none of `secrets`; returns the matching entry. */
async function expectRefusalAudited(target: string, code: string, reason: RegExp, opts: { action?: "registration.refused" | "enrollment.refused"; secrets?: string[] } = {}): Promise<AuditRow> {
  const list = await refusals(target, opts.action);
  const hit = list.find((x) => x.details.code === code && reason.test(String(x.details.reason)));
  expect(hit, `no ${opts.action ?? "registration.refused"} ${code} ${String(reason)} for ${target}: ${JSON.stringify(list)}`).toBeDefined();
  const text = JSON.stringify(list);
  for (const secret of opts.secrets ?? []) expect(text).not.toContain(secret);
  return hit as AuditRow;
}

/** Nothing was issued for a device id: no certificate, no device record. */
async function expectNothingIssued(deviceId: string): Promise<void> {
  expect(await e.ts.store.listCertificates({ deviceId })).toHaveLength(0);
  expect(await e.ts.store.db.query("SELECT registration_id FROM registrations WHERE registration_id = ? AND status = 'assigned'", [deviceId])).toEqual([]);
}

async function newLine(body: Record<string, unknown>): Promise<{ token: string; id: string }> {
  const r = await e.call("POST", "/v1/lines", { token: admin, body });
  expect(r.status).toBe(201);
  const j = r.json() as { token: string; line: { id: string } };
  return { token: j.token, id: j.line.id };
}

/** A device with a software key enrolled by public key: returns its keys. */
async function enrollPublicKey(id: string, extra: Record<string, unknown> = {}, token = lineToken): Promise<CryptoKeyPair> {
  const keys = await ecKeys();
  const r = await e.call("PUT", `/v1/enrollments/${id}`, { token, body: { attestation: "publicKey", credential: await spkiPem(keys.publicKey), ...extra } });
  expect(r.status, r.body.toString()).toBe(201);
  return keys;
}

beforeAll(async () => {
  e = await startEnrollmentCa({}, { deviceTokens: ["device-token"] });
  admin = e.t.init.adminToken;
  const l = await newLine({ name: "factory line 1", maxEnrollments: 100000, ratePerMinute: 1000 });
  lineToken = l.token;
  lineId = l.id;
  factory = await factoryCa("Factory Bootstrap CA");
  rogue = await factoryCa("Unconfigured CA");
  writeFileSync(join(e.dir, "factory.pem"), factory.pem);
});

afterAll(async () => {
  await e?.close();
});

describe("provisioning lines", () => {
  it("a line creates, reads and re-puts its enrollment (idempotent); everything it does is audited", async () => {
    const keys = await ecKeys();
    const body = { attestation: "publicKey", credential: await spkiPem(keys.publicKey), labels: { site: "plant-7" }, dnsNames: ["line-dev-1.local"] };
    const a = await e.call("PUT", "/v1/enrollments/line-dev-1", { token: lineToken, body });
    expect(a.status).toBe(201);
    const first = a.json();
    expect(first).toMatchObject({ registrationId: "line-dev-1", attestation: "publicKey", status: "enabled", lineId, labels: { site: "plant-7" }, edgeCa: true });
    const b = await e.call("PUT", "/v1/enrollments/line-dev-1", { token: lineToken, body });
    expect(b.status).toBe(200);
    expect(b.json().updatedAt).toBe(first.updatedAt);
    expect((await e.call("GET", "/v1/enrollments/line-dev-1", { token: lineToken })).status).toBe(200);
    const audit = (await e.call("GET", "/v1/audit?limit=1000", { token: admin })).json().entries as { actor: string; action: string; target: string }[];
    const mine = audit.filter((x) => x.actor.startsWith("line:factory line 1"));
    expect(mine.map((x) => x.action)).toContain("enrollment.put.create");
    expect(mine.filter((x) => x.target === "line-dev-1")).toHaveLength(1); // the unchanged re-put wrote nothing
    expect((await e.call("GET", "/v1/audit/verify", { token: admin })).json().ok).toBe(true);
  });

  it("a line sees only its own enrollments; another line cannot overwrite them", async () => {
    const other = await newLine({ name: "line 2" });
    expect((await e.call("GET", "/v1/enrollments/line-dev-1", { token: other.token })).status).toBe(404);
    const keys = await ecKeys();
    const r = await e.call("PUT", "/v1/enrollments/line-dev-1", { token: other.token, body: { attestation: "publicKey", credential: await spkiPem(keys.publicKey) } });
    expectProblem(r, 403, "FORBIDDEN", /another provisioning line/);
    const list = (await e.call("GET", "/v1/enrollments", { token: other.token })).json().enrollments as unknown[];
    expect(list).toHaveLength(0);
  });

  it("abuse: a wrong or a revoked line credential is 401; an auditor cannot create lines", async () => {
    const keys = await ecKeys();
    const body = { attestation: "publicKey", credential: await spkiPem(keys.publicKey) };
    expectProblem(await e.call("PUT", "/v1/enrollments/x-1", { token: "etl_" + "A".repeat(43), body }), 401, "UNAUTHENTICATED", /unknown or revoked/);
    expectProblem(await e.call("PUT", "/v1/enrollments/x-1", { body }), 401, "UNAUTHENTICATED");
    const doomed = await newLine({ name: "doomed line" });
    expect((await e.call("PUT", "/v1/enrollments/doomed-1", { token: doomed.token, body })).status).toBe(201);
    expect((await e.call("DELETE", `/v1/lines/${doomed.id}`, { token: admin })).status).toBe(200);
    expectProblem(await e.call("PUT", "/v1/enrollments/doomed-2", { token: doomed.token, body }), 401, "UNAUTHENTICATED", /unknown or revoked/);
    // Each refusal is audited (who, what, why; never the token) and wrote nothing.
    const wrong = await expectRefusalAudited("x-1", "UNAUTHENTICATED", /unknown or revoked/, { action: "enrollment.refused", secrets: ["A".repeat(43)] });
    expect(wrong).toMatchObject({ actor: "unauthenticated(127.0.0.1)", details: { status: 401, credential: "line-token", method: "PUT", route: "/v1/enrollments/:registrationId" } });
    await expectRefusalAudited("x-1", "UNAUTHENTICATED", /needs a provisioning line or admin credential/, { action: "enrollment.refused" });
    await expectRefusalAudited("doomed-2", "UNAUTHENTICATED", /unknown or revoked/, { action: "enrollment.refused", secrets: [doomed.token] });
    expect((await e.call("GET", "/v1/enrollments/doomed-2", { token: admin })).status).toBe(404);
    expect((await e.call("GET", "/v1/enrollments/x-1", { token: admin })).status).toBe(404);
    const aud = (await e.call("POST", "/v1/admin/tokens", { token: admin, body: { name: "aud", role: "auditor" } })).json().token as string;
    expectProblem(await e.call("POST", "/v1/lines", { token: aud, body: { name: "x" } }), 403, "FORBIDDEN");
    expectProblem(await e.call("PUT", "/v1/enrollments/x-2", { token: aud, body }), 403, "FORBIDDEN");
    expect((await expectRefusalAudited("x-2", "FORBIDDEN", /may not change enrollments/, { action: "enrollment.refused", secrets: [aud] })).actor).toMatch(/^token:aud\(/);
  });

  it("abuse: quota exceeded is a 429 problem+json and writes nothing", async () => {
    const small = await newLine({ name: "small line", maxEnrollments: 1 });
    await enrollPublicKey("quota-1", {}, small.token);
    const keys = await ecKeys();
    const r = await e.call("PUT", "/v1/enrollments/quota-2", { token: small.token, body: { attestation: "publicKey", credential: await spkiPem(keys.publicKey) } });
    expectProblem(r, 429, "QUOTA_EXCEEDED", /quota/);
    expect((await e.call("GET", "/v1/enrollments/quota-2", { token: admin })).status).toBe(404);
    expect((await expectRefusalAudited("quota-2", "QUOTA_EXCEEDED", /quota/, { action: "enrollment.refused", secrets: [small.token] })).actor).toBe(`line:small line(${small.id})`);
  });

  it("abuse: a line over its rate limit gets 429 problem+json (@fastify/rate-limit, per line)", async () => {
    const slow = await newLine({ name: "slow line", ratePerMinute: 3 });
    const codes: number[] = [];
    for (let i = 0; i < 5; i++) codes.push((await e.call("GET", "/v1/enrollments", { token: slow.token })).status);
    expect(codes.slice(0, 3)).toEqual([200, 200, 200]);
    const before = (await refusals("/v1/enrollments", "enrollment.refused")).length;
    const r = await e.call("GET", "/v1/enrollments", { token: slow.token });
    expectProblem(r, 429, "RATE_LIMITED");
    const limited = (await refusals("/v1/enrollments", "enrollment.refused")).filter((x) => x.details.code === "RATE_LIMITED");
    expect(limited.length).toBeGreaterThan(before === 0 ? 0 : 1);
    expect(limited.at(-1)).toMatchObject({ details: { status: 429, credential: "line-token", reason: "rate limit exceeded" } });
    expect(JSON.stringify(limited)).not.toContain(slow.token);
    // Another line is not affected.
    expect((await e.call("GET", "/v1/enrollments", { token: lineToken })).status).toBe(200);
  });
});

describe("OpenAPI", () => {
  it("documents every enrollment route", async () => {
    const paths = Object.keys((await e.call("GET", "/openapi.json")).json().paths as Record<string, unknown>);
    for (const p of ["/v1/lines", "/v1/enrollments/{registrationId}", "/v1/enrollment-groups/{groupId}", "/v1/enrollments/import", "/v1/registrations/{registrationId}", "/.well-known/est/simpleenroll", "/.well-known/est/cacerts", "/{idScope}/registrations/{registrationId}/register", "/{idScope}/registrations/{registrationId}/operations/{operationId}"]) {
      expect(paths).toContain(p);
    }
  });
});

describe("bulk import over HTTP", () => {
  it("a line imports CSV and JSON; bad rows come back in the report; the same body twice changes nothing", async () => {
    const keys = await Promise.all([ecKeys(), ecKeys()]);
    const spki = await Promise.all(keys.map(async (k) => Buffer.from(await crypto.subtle.exportKey("spki", k.publicKey)).toString("base64")));
    const csv = ["registrationId,attestation,credential,labels", ...Array.from({ length: 1500 }, (_, i) => i === 700 ? "http-bad,publicKey,Zm9v," : `http-${i},publicKey,${spki[i % 2] ?? ""},batch=h`)].join("\n");
    const r = await e.call("POST", "/v1/enrollments/import?batchSize=500", { token: lineToken, raw: csv, contentType: "text/csv" });
    expect(r.status, r.body.toString()).toBe(200);
    expect(r.json()).toMatchObject({ total: 1500, inserted: 1000, notWritten: 500, rejected: [{ row: 702, registrationId: "http-bad" }] });
    const again = await e.call("POST", "/v1/enrollments/import?batchSize=500", { token: lineToken, raw: csv, contentType: "text/csv" });
    expect(again.json()).toMatchObject({ inserted: 0, updated: 0, unchanged: 1000 });
    const j = await e.call("POST", "/v1/enrollments/import", { token: lineToken, body: [{ registrationId: "http-json-1", attestation: "publicKey", credential: spki[0], labels: { a: "b" } }] });
    expect(j.json(), j.body.toString()).toMatchObject({ inserted: 1 });
    expectProblem(await e.call("POST", "/v1/enrollments/import", { token: "etl_" + "B".repeat(43), raw: csv, contentType: "text/csv" }), 401, "UNAUTHENTICATED");
  });
});

describe("registration (JSON API)", () => {
  it("a device enrolled by public key registers: identity + Edge CA + trust bundle, verified by openssl", async () => {
    const keys = await enrollPublicKey("gw-100", { labels: { assignedHub: "hub.example" } });
    const edgeKeys = await ecKeys();
    const r = await e.call("PUT", "/v1/registrations/gw-100", { headers: { "idempotency-key": "boot-0001-gw-100" }, body: { csr: await csrPem(keys, "ignored"), edgeCaCsr: await csrPem(edgeKeys) } });
    expect(r.status, r.body.toString()).toBe(201);
    const j = r.json() as { identity: { certificatePem: string; serial: string }; edgeCa: { certificatePem: string }; trustBundlePem: string; labels: Record<string, string>; status: string };
    expect(j.status).toBe("assigned");
    expect(j.labels).toEqual({ assignedHub: "hub.example" });
    writeFileSync(join(e.dir, "bundle.pem"), j.trustBundlePem);
    writeFileSync(join(e.dir, "gw100.pem"), j.identity.certificatePem);
    writeFileSync(join(e.dir, "gw100-ca.pem"), j.edgeCa.certificatePem);
    const v = await run("openssl", ["verify", "-CAfile", "bundle.pem", "gw100.pem", "gw100-ca.pem"], { cwd: e.dir });
    expect(v.stdout).toContain("gw100.pem: OK");
    expect(v.stdout).toContain("gw100-ca.pem: OK");
    const text = (await run("openssl", ["x509", "-in", "gw100-ca.pem", "-noout", "-text"], { cwd: e.dir })).stdout;
    expect(text).toMatch(/CA:TRUE, pathlen:0/);
    expect(text).toContain("DNS:gw-100");

  });

  it("abuse: a registration replayed with a different idempotency key is refused; same key + different request is 422", async () => {
    const keys = await enrollPublicKey("gw-101");
    const edge = await ecKeys();
    const body = { csr: await csrPem(keys), edgeCaCsr: await csrPem(edge) };
    const first = await e.call("PUT", "/v1/registrations/gw-101", { headers: { "idempotency-key": "key-aaaaaaaa" }, body });
    expect(first.status).toBe(201);
    const replay = await e.call("PUT", "/v1/registrations/gw-101", { headers: { "idempotency-key": "key-aaaaaaaa" }, body });
    expect(replay.status).toBe(200);
    expect((replay.json().identity as { serial: string }).serial).toBe((first.json().identity as { serial: string }).serial);
    expectProblem(await e.call("PUT", "/v1/registrations/gw-101", { headers: { "idempotency-key": "key-bbbbbbbb" }, body }), 409, "REGISTRATION_CONFLICT", /different idempotency key/);
    const edge2 = await ecKeys();
    expectProblem(await e.call("PUT", "/v1/registrations/gw-101", { headers: { "idempotency-key": "key-aaaaaaaa" }, body: { ...body, edgeCaCsr: await csrPem(edge2) } }), 422, "IDEMPOTENCY_KEY_REUSED");
    expectProblem(await e.call("PUT", "/v1/registrations/gw-101", { body }), 400, "INVALID_INPUT", /idempotency-key/);
    const certs = await e.ts.store.listCertificates({ deviceId: "gw-101" });
    expect(certs).toHaveLength(2); // identity + Edge CA, once
    await expectRefusalAudited("gw-101", "REGISTRATION_CONFLICT", /different idempotency key/);
    await expectRefusalAudited("gw-101", "IDEMPOTENCY_KEY_REUSED", /different request/);
    await expectRefusalAudited("gw-101", "INVALID_INPUT", /idempotency-key/);
    // The replay with the same key is not a refusal: nothing new issued, nothing audited as refused.
    expect((await refusals("gw-101")).filter((x) => x.details.status === 200)).toEqual([]);
    // An admin reset lets a wiped device register again.
    expect((await e.call("DELETE", "/v1/registrations/gw-101", { token: admin })).status).toBe(204);
    expect((await e.call("PUT", "/v1/registrations/gw-101", { headers: { "idempotency-key": "key-cccccccc" }, body })).status).toBe(201);
  });

  it("abuse: a CSR whose key differs from the enrolled key is refused", async () => {
    await enrollPublicKey("gw-102", { edgeCa: false, profile: "leaf-device" });
    const thief = await ecKeys();
    const r = await e.call("PUT", "/v1/registrations/gw-102", { headers: { "idempotency-key": "key-thief-01" }, body: { csr: await csrPem(thief) } });
    expectProblem(r, 401, "UNAUTHENTICATED", /not the enrolled public key/);
    await expectNothingIssued("gw-102");
    expect(await expectRefusalAudited("gw-102", "UNAUTHENTICATED", /not the enrolled public key/)).toMatchObject({ actor: "unauthenticated(127.0.0.1)", details: { route: "/v1/registrations/:registrationId", credential: "none" } });
  });

  it("abuse: a disabled enrollment cannot register", async () => {
    const keys = await enrollPublicKey("gw-103", { edgeCa: false });
    expect((await e.call("PATCH", "/v1/enrollments/gw-103", { token: lineToken, body: { status: "disabled" } })).json().status).toBe("disabled");
    const r = await e.call("PUT", "/v1/registrations/gw-103", { headers: { "idempotency-key": "key-disabled" }, body: { csr: await csrPem(keys) } });
    expectProblem(r, 403, "ENROLLMENT_DISABLED");
    // Without the enrolled key nobody learns that the enrollment exists or is disabled.
    const other = await ecKeys();
    expectProblem(await e.call("PUT", "/v1/registrations/gw-103", { headers: { "idempotency-key": "key-disabled" }, body: { csr: await csrPem(other) } }), 401, "UNAUTHENTICATED");
    await expectNothingIssued("gw-103");
    await expectRefusalAudited("gw-103", "ENROLLMENT_DISABLED", /disabled/);
    await expectRefusalAudited("gw-103", "UNAUTHENTICATED", /not the enrolled public key/);
  });

  it("abuse: registration ids with path, SQL and unicode tricks are refused before any lookup", async () => {
    const keys = await ecKeys();
    const csr = await csrPem(keys);
    const body = { attestation: "publicKey", credential: await spkiPem(keys.publicKey) };
    const seqBefore = Number((await e.ts.store.db.query("SELECT MAX(seq) AS s FROM audit_log"))[0]?.s ?? 0);
    let routed = 0;
    const tricks = ["..%2F..%2Fetc%2Fpasswd", "%2E%2E", "a'%3B%20DROP%20TABLE%20individual_enrollments%3B--", "d%C3%A9vice", "%EF%BD%84evice", "dev%00ice", "dev%2Fx", "-leading", "a".repeat(129), "dev%0Aice"];
    for (const t of tricks) {
      for (const [method, path, opts] of [
        ["PUT", `/v1/enrollments/${t}`, { token: lineToken, body }],
        ["PUT", `/v1/registrations/${t}`, { headers: { "idempotency-key": "key-trick-01" }, body: { csr } }],
        ["PUT", `/0ne000/registrations/${t}/register`, { body: { registrationId: t, payload: { csr } } }],
      ] as const) {
        const r = await e.call(method, path, opts);
        expect([400, 404, 414], `${method} ${path} → ${r.status}`).toContain(r.status);
        expect(r.type).toMatch(/application\/(problem\+)?json/);
        expect(r.status).not.toBe(500);
        // A path the router cannot match (`%2E%2E` is resolved to the parent) is a plain 404: no enrollment route ran.
        if (!(r.status === 404 && /^no route/.test(String(r.json().detail)))) routed++;
      }
    }
    // Every trick a route refused left one refusal entry; targets are stored as printable ASCII (NUL, newline escaped).
    const entries = await e.ts.store.db.query("SELECT action, target, details FROM audit_log WHERE seq > ? AND action IN ('registration.refused', 'enrollment.refused')", [seqBefore]);
    expect(routed).toBe(27);
    expect(entries).toHaveLength(routed);
    for (const x of entries) expect(String(x.target)).toMatch(/^[\x20-\x7e]+$/);
    expect(entries.map((x) => String(x.target))).toEqual(expect.arrayContaining(["dev\\u0000ice", "../../etc/passwd", "a'; DROP TABLE individual_enrollments;--"]));
    expect(entries.every((x) => (JSON.parse(String(x.details)) as { code: string }).code === "INVALID_INPUT")).toBe(true);
    expect(await e.ts.store.listCertificates({ limit: 1000 }).then((cs) => cs.filter((c) => /DROP|\.\./.test(c.deviceId ?? "") || (c.deviceId ?? "").includes(String.fromCharCode(0))))).toEqual([]);
    // The tables are intact and nothing was written for any trick.
    expect(await e.ts.store.db.query("SELECT COUNT(*) AS n FROM individual_enrollments WHERE registration_id LIKE '%DROP%' OR registration_id LIKE '%..%'")).toEqual([{ n: 0 }]);
  });

  it("a group x509CA device registers with its bootstrap certificate (mTLS); a bootstrap cert from an unconfigured CA is refused", async () => {
    const g = await e.call("PUT", "/v1/enrollment-groups/factory-a", { token: lineToken, body: { attestation: "x509CA", caCertPem: factory.pem, labels: { batch: "A" } } });
    expect(g.status, g.body.toString()).toBe(201);
    const boot = await factory.issue("gw-200");
    const dev = await ecKeys();
    const edge = await ecKeys();
    const r = await e.call("PUT", "/v1/registrations/gw-200", { cert: boot.certPem, key: boot.keyPem, headers: { "idempotency-key": "boot-gw-200" }, body: { csr: await csrPem(dev), edgeCaCsr: await csrPem(edge) } });
    expect(r.status, r.body.toString()).toBe(201);
    expect(r.json()).toMatchObject({ enrollment: { kind: "group", id: "factory-a", attestation: "x509CA" }, labels: { batch: "A" } });

    const bad = await rogue.issue("gw-201");
    const r2 = await e.call("PUT", "/v1/registrations/gw-201", { cert: bad.certPem, key: bad.keyPem, headers: { "idempotency-key": "boot-gw-201" }, body: { csr: await csrPem(dev), edgeCaCsr: await csrPem(edge) } });
    expectProblem(r2, 401, "UNAUTHENTICATED", /does not chain to a configured/);
    await expectNothingIssued("gw-201");
    const rogueEntry = await expectRefusalAudited("gw-201", "UNAUTHENTICATED", /does not chain to a configured/, { secrets: [bad.keyPem.split("\n")[1] ?? "x"] });
    expect(rogueEntry.details.credential).toMatch(/^client-certificate sha256:[0-9a-f]{64}$/);
    // A factory cert for another id cannot register this one.
    const r3 = await e.call("PUT", "/v1/registrations/gw-202", { cert: boot.certPem, key: boot.keyPem, headers: { "idempotency-key": "boot-gw-202" }, body: { csr: await csrPem(dev), edgeCaCsr: await csrPem(edge) } });
    expectProblem(r3, 401, "UNAUTHENTICATED", /CN is not this registration id/);
    await expectRefusalAudited("gw-202", "UNAUTHENTICATED", /CN is not this registration id/);
    await expectNothingIssued("gw-202");
    // Disabling the group stops it.
    await e.call("PATCH", "/v1/enrollment-groups/factory-a", { token: lineToken, body: { status: "disabled" } });
    const boot2 = await factory.issue("gw-203");
    const r4 = await e.call("PUT", "/v1/registrations/gw-203", { cert: boot2.certPem, key: boot2.keyPem, headers: { "idempotency-key": "boot-gw-203" }, body: { csr: await csrPem(dev), edgeCaCsr: await csrPem(edge) } });
    expectProblem(r4, 403, "ENROLLMENT_DISABLED");
    await expectRefusalAudited("gw-203", "ENROLLMENT_DISABLED", /factory-a/);
    await expectNothingIssued("gw-203");
    await e.call("PATCH", "/v1/enrollment-groups/factory-a", { token: lineToken, body: { status: "enabled" } });
  });

  it("abuse: an expired bootstrap certificate that chains to the configured group CA is refused with the reason", async () => {
    const g = await e.call("PUT", "/v1/enrollment-groups/factory-exp", { token: lineToken, body: { attestation: "x509CA", caCertPem: factory.pem, edgeCa: false } });
    expect(g.status, g.body.toString()).toBe(201);
    const expired = await factory.issue("gw-210", { notAfter: new Date(Date.now() - 60_000) });
    const dev = await ecKeys();
    const r = await e.call("PUT", "/v1/registrations/gw-210", { cert: expired.certPem, key: expired.keyPem, headers: { "idempotency-key": "boot-gw-210" }, body: { csr: await csrPem(dev) } });
    expectProblem(r, 401, "UNAUTHENTICATED", /bootstrap certificate is expired or not yet valid \(valid .* to /);
    await expectNothingIssued("gw-210");
    const entry = await expectRefusalAudited("gw-210", "UNAUTHENTICATED", /expired/, { secrets: [expired.keyPem.split("\n")[1] ?? "x"] });
    expect(entry.details.credential).toMatch(/^client-certificate sha256:[0-9a-f]{64}$/);
    // The same over EST (the bootstrap certificate names the device by its CN).
    writeFileSync(join(e.dir, "expired.pem"), expired.certPem);
    writeFileSync(join(e.dir, "expired.key"), expired.keyPem);
    const est = await run("sh", ["-c", `openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout exp-dev.key -subj /CN=gw-210 -outform DER | base64 > exp-dev.b64 && curl -sS --cacert root.pem -o /dev/null -w '%{http_code}' --cert expired.pem --key expired.key -H 'Content-Type: application/pkcs10' --data-binary @exp-dev.b64 ${e.base}/.well-known/est/simpleenroll`], { cwd: e.dir });
    expect(est.stdout).toBe("401");
    expect((await refusals("gw-210")).filter((x) => /expired/.test(String(x.details.reason))).length).toBe(2);
    await expectNothingIssued("gw-210");
    // An individual x509 enrollment with an expired certificate: the same.
    const old = await rogue.issue("leaf-310", { notAfter: new Date(Date.now() - 60_000) });
    expect((await e.call("PUT", "/v1/enrollments/leaf-310", { token: lineToken, body: { attestation: "x509", credential: old.certPem, profile: "leaf-device" } })).status).toBe(201);
    expectProblem(await e.call("PUT", "/v1/registrations/leaf-310", { cert: old.certPem, key: old.keyPem, headers: { "idempotency-key": "boot-leaf-310" }, body: { csr: await csrPem(dev) } }), 401, "UNAUTHENTICATED", /expired or not yet valid/);
    await expectRefusalAudited("leaf-310", "UNAUTHENTICATED", /expired/);
    await expectNothingIssued("leaf-310");
    await e.call("PATCH", "/v1/enrollment-groups/factory-exp", { token: lineToken, body: { status: "disabled" } });
  });

  it("an individual bootstrap-certificate enrollment accepts only that certificate", async () => {
    const boot = await rogue.issue("leaf-300");
    expect((await e.call("PUT", "/v1/enrollments/leaf-300", { token: lineToken, body: { attestation: "x509", credential: boot.certPem, profile: "leaf-device" } })).status).toBe(201);
    const dev = await ecKeys();
    const noCert = await e.call("PUT", "/v1/registrations/leaf-300", { headers: { "idempotency-key": "boot-leaf-300" }, body: { csr: await csrPem(dev) } });
    expectProblem(noCert, 401, "UNAUTHENTICATED", /bootstrap certificate/);
    const other = await rogue.issue("leaf-300");
    expectProblem(await e.call("PUT", "/v1/registrations/leaf-300", { cert: other.certPem, key: other.keyPem, headers: { "idempotency-key": "boot-leaf-300" }, body: { csr: await csrPem(dev) } }), 401, "UNAUTHENTICATED", /not the enrolled/);
    const ok = await e.call("PUT", "/v1/registrations/leaf-300", { cert: boot.certPem, key: boot.keyPem, headers: { "idempotency-key": "boot-leaf-300" }, body: { csr: await csrPem(dev) } });
    expect(ok.status, ok.body.toString()).toBe(201);
    expect(ok.json().edgeCa).toBeNull();
  });

  it("a symmetric-key group device registers with HTTP Basic (derived key); another device's derived key is refused", async () => {
    const g = await e.call("PUT", "/v1/enrollment-groups/sym-a", { token: lineToken, body: { attestation: "symmetricKey", edgeCa: false } });
    expect(g.status).toBe(201);
    const groupKey = String(g.json().groupKey);
    expect((await e.call("GET", "/v1/enrollment-groups/sym-a", { token: lineToken })).json().groupKey).toBeUndefined();
    const dev = await ecKeys();
    const basic = (id: string, key: string) => `Basic ${Buffer.from(`${id}:${key}`).toString("base64")}`;
    const good = await e.call("PUT", "/v1/registrations/sym-dev-1", { authorization: basic("sym-dev-1", deriveDeviceKey(groupKey, "sym-dev-1")), headers: { "idempotency-key": "sym-dev-1-boot" }, body: { csr: await csrPem(dev) } });
    expect(good.status, good.body.toString()).toBe(201);
    const stolen = await e.call("PUT", "/v1/registrations/sym-dev-2", { authorization: basic("sym-dev-2", deriveDeviceKey(groupKey, "sym-dev-1")), headers: { "idempotency-key": "sym-dev-2-boot" }, body: { csr: await csrPem(dev) } });
    expectProblem(stolen, 401, "UNAUTHENTICATED");
    expect((await expectRefusalAudited("sym-dev-2", "UNAUTHENTICATED", /password|key/, { secrets: [deriveDeviceKey(groupKey, "sym-dev-1"), groupKey, Buffer.from(`sym-dev-2:${deriveDeviceKey(groupKey, "sym-dev-1")}`).toString("base64")] })).details.credential).toBe("basic");
    await expectNothingIssued("sym-dev-2");
  });

  it("a device whose key lives in SoftHSM registers (CSR signed in the token through the WebCrypto shim)", async () => {
    const store = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: "device-token", pin: TEST_PIN, logger: quietLogger() });
    try {
      await store.generateKey("device-identity", "EC-P256");
      await store.generateKey("edge-ca", "EC-P256");
      const pub = await store.getPublicKey({ label: "device-identity" });
      const spki = x509.PemConverter.encode(new Uint8Array(pub.spki).buffer, "PUBLIC KEY");
      expect((await e.call("PUT", "/v1/enrollments/hsm-gw-1", { token: lineToken, body: { attestation: "publicKey", credential: spki } })).status).toBe(201);
      const shim = keyStoreCrypto();
      const mk = async (label: string) => (await x509.Pkcs10CertificateRequestGenerator.create({ name: "CN=hsm-gw-1", keys: await keyStoreKeyPair(store, { label }), signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } }, shim)).toString("pem");
      const r = await e.call("PUT", "/v1/registrations/hsm-gw-1", { headers: { "idempotency-key": "hsm-gw-1-boot" }, body: { csr: await mk("device-identity"), edgeCaCsr: await mk("edge-ca") } });
      expect(r.status, r.body.toString()).toBe(201);
      const cert = new x509.X509Certificate(String((r.json().identity as { certificatePem: string }).certificatePem));
      expect(Buffer.from(cert.publicKey.rawData).equals(pub.spki)).toBe(true);
      expect((await store.getKey({ label: "device-identity" })).extractable).toBe(false);
    } finally {
      await store.close();
    }
  });
});

describe("DPS-compatible route: SAS abuse (raw HTTPS)", () => {
  let groupKey: string;
  const sas = (sr: string, key: string, se: number) => {
    const srEnc = encodeURIComponent(sr);
    const sig = createHmac("sha256", Buffer.from(key, "base64")).update(`${srEnc}\n${se}`).digest("base64");
    return `SharedAccessSignature sr=${srEnc}&sig=${encodeURIComponent(sig)}&se=${se}&skn=registration`;
  };
  const soon = () => Math.floor(Date.now() / 1000) + 600;
  const put = async (id: string, auth: string) => e.call("PUT", `/0ne00ABC/registrations/${id}/register?api-version=2019-03-31`, { authorization: auth, body: { registrationId: id, payload: { csr: await csrPem(await ecKeys()) } } });

  beforeAll(async () => {
    groupKey = String((await e.call("PUT", "/v1/enrollment-groups/sym-dps", { token: lineToken, body: { attestation: "symmetricKey", edgeCa: false } })).json().groupKey);
  });

  it("a correct SAS registers (202 + retry-after, then the operation is assigned)", async () => {
    const auth = sas("0ne00ABC/registrations/sas-dev-1", deriveDeviceKey(groupKey, "sas-dev-1"), soon());
    const r = await put("sas-dev-1", auth);
    expect(r.status, r.body.toString()).toBe(202);
    expect(r.headers["retry-after"]).toBe("1");
    expect(r.type).toContain("application/json");
    const op = String(r.json().operationId);
    const g = await e.call("GET", `/0ne00ABC/registrations/sas-dev-1/operations/${op}?api-version=2019-03-31`, { authorization: auth });
    expect(g.status).toBe(200);
    expect(g.json()).toMatchObject({ status: "assigned", registrationState: { deviceId: "sas-dev-1", status: "assigned", assignedHub: "localhost" } });
  });

  it("abuse: SAS over a different sr, an expired SAS, and another registration's derived key are all 401 (JSON, DPS error shape)", async () => {
    const k = deriveDeviceKey(groupKey, "sas-dev-2");
    const wrongSr = await put("sas-dev-2", sas("0ne00ABC/registrations/sas-dev-9", k, soon()));
    expect(wrongSr.status).toBe(401);
    expect(wrongSr.type).toContain("application/json");
    expect(wrongSr.json()).toMatchObject({ errorCode: 401001, code: "UNAUTHENTICATED" });
    expect(String(wrongSr.json().message)).toMatch(/does not name this registration/);
    const otherScope = await put("sas-dev-2", sas("0ne00XYZ/registrations/sas-dev-2", k, soon()));
    expect(otherScope.status).toBe(401);
    const expired = await put("sas-dev-2", sas("0ne00ABC/registrations/sas-dev-2", k, Math.floor(Date.now() / 1000) - 5));
    expect(expired.status).toBe(401);
    expect(String(expired.json().message)).toMatch(/expired/);
    const borrowed = await put("sas-dev-2", sas("0ne00ABC/registrations/sas-dev-2", deriveDeviceKey(groupKey, "sas-dev-1"), soon()));
    expect(borrowed.status).toBe(401);
    expect(String(borrowed.json().message)).toMatch(/signature does not verify/);
    // sr re-encoded differently (same decoded text) is verified as received: the signature over the canonical form fails.
    const canonical = sas("0ne00ABC/registrations/sas-dev-2", k, soon());
    const reencoded = canonical.replace("sr=0ne00ABC%2Fregistrations", "sr=0ne00ABC%2fregistrations");
    expect((await put("sas-dev-2", reencoded)).status).toBe(401);
    expect((await put("sas-dev-2", canonical)).status).toBe(202);
  });
});

describe("EST (RFC 7030) with openssl and curl", () => {
  const curl = (args: string[]) => run("curl", ["-sS", "--cacert", "root.pem", ...args], { cwd: e.dir });

  it("cacerts and csrattrs: base64 certs-only PKCS#7 and CsrAttrs that openssl parses", async () => {
    const r = await curl(["-D", "h.txt", "-o", "cacerts.b64", `${e.base}/.well-known/est/cacerts`]);
    expect(r.code, r.stderr).toBe(0);
    const headers = (await run("cat", ["h.txt"], { cwd: e.dir })).stdout;
    expect(headers.toLowerCase()).toContain("content-type: application/pkcs7-mime; smime-type=certs-only");
    await run("sh", ["-c", "base64 -d cacerts.b64 > cacerts.p7"], { cwd: e.dir });
    const p7 = await run("openssl", ["pkcs7", "-inform", "DER", "-in", "cacerts.p7", "-print_certs", "-noout"], { cwd: e.dir });
    expect(p7.code, p7.stderr).toBe(0);
    expect(p7.stdout).toContain("edgetrust Root CA");
    const a = await curl(["-o", "attrs.b64", `${e.base}/.well-known/est/csrattrs`]);
    expect(a.code).toBe(0);
    await run("sh", ["-c", "base64 -d attrs.b64 > attrs.der"], { cwd: e.dir });
    expect((await run("openssl", ["asn1parse", "-inform", "DER", "-in", "attrs.der"], { cwd: e.dir })).stdout).toContain("ecdsa-with-SHA256");
  });

  it("simpleenroll with `openssl req` + curl: bootstrap client certificate, then HTTP Basic; simplereenroll with the issued cert", async () => {
    await e.call("PUT", "/v1/enrollment-groups/factory-a", { token: lineToken, body: { attestation: "x509CA", caCertPem: factory.pem } });
    const boot = await factory.issue("est-dev-1");
    writeFileSync(join(e.dir, "boot.pem"), boot.certPem);
    writeFileSync(join(e.dir, "boot.key"), boot.keyPem);
    const sh = (cmd: string) => run("sh", ["-c", cmd], { cwd: e.dir });
    expect((await sh("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out dev.key && openssl req -new -key dev.key -subj /CN=est-dev-1 -outform DER | base64 > dev.b64")).code).toBe(0);
    const r = await curl(["-D", "h2.txt", "-o", "dev.p7.b64", "--cert", "boot.pem", "--key", "boot.key", "-H", "Content-Type: application/pkcs10", "--data-binary", "@dev.b64", `${e.base}/.well-known/est/simpleenroll`]);
    expect(r.code, r.stderr).toBe(0);
    expect((await sh("cat h2.txt")).stdout).toMatch(/HTTP\/1.1 200/);
    expect((await sh("base64 -d dev.p7.b64 | openssl pkcs7 -inform DER -print_certs -out dev.pem")).code).toBe(0);
    writeFileSync(join(e.dir, "issuing.pem"), e.t.ca.current().cert.toString("pem"));
    expect((await sh("openssl verify -CAfile root.pem -untrusted issuing.pem dev.pem")).stdout).toContain("dev.pem: OK");
    expect((await sh("openssl x509 -in dev.pem -noout -ext subjectAltName")).stdout).toContain("edgetrust://test.edgetrust/devices/est-dev-1");
    // The same CSR again (an EST client retrying) returns the same certificate; a new CSR is a conflict.
    expect((await curl(["-o", "dev2.p7.b64", "--cert", "boot.pem", "--key", "boot.key", "-H", "Content-Type: application/pkcs10", "--data-binary", "@dev.b64", `${e.base}/.well-known/est/simpleenroll`])).code).toBe(0);
    expect((await sh("cmp dev.p7.b64 dev2.p7.b64")).code).toBe(0);

    // PEM in, HTTP Basic with the derived key of a symmetric-key group.
    const g = await e.call("PUT", "/v1/enrollment-groups/sym-est", { token: lineToken, body: { attestation: "symmetricKey", edgeCa: false } });
    const key = deriveDeviceKey(String(g.json().groupKey), "est-dev-2");
    expect((await sh("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout dev2.key -subj /CN=est-dev-2 -out dev2.csr")).code).toBe(0);
    const b = await curl(["-o", "b.p7.b64", "-w", "%{http_code}", "-u", `est-dev-2:${key}`, "-H", "Content-Type: application/pkcs10", "--data-binary", "@dev2.csr", `${e.base}/.well-known/est/simpleenroll`]);
    expect(b.stdout).toBe("200");
    expect((await sh("base64 -d b.p7.b64 | openssl pkcs7 -inform DER -print_certs | openssl x509 -noout -subject")).stdout).toMatch(/est-dev-2/);
    const wrong = await curl(["-D", "-", "-o", "/dev/null", "-u", `est-dev-2:${deriveDeviceKey(String(g.json().groupKey), "someone-else")}`, "-H", "Content-Type: application/pkcs10", "--data-binary", "@dev2.csr", `${e.base}/.well-known/est/simpleenroll`]);
    expect(wrong.stdout).toMatch(/HTTP\/1.1 401/);
    expect(wrong.stdout.toLowerCase()).toContain('www-authenticate: basic realm="edgetrust-est"');

    // simplereenroll: the issued certificate authenticates its own renewal (rekey with a new key here).
    expect((await sh("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout dev3.key -subj /CN=x -outform DER -out dev3.der && base64 dev3.der > dev3.b64")).code).toBe(0);
    const rr = await curl(["-o", "re.p7.b64", "-w", "%{http_code}", "--cert", "dev.pem", "--key", "dev.key", "-H", "Content-Type: application/pkcs10", "--data-binary", "@dev3.b64", `${e.base}/.well-known/est/simplereenroll`]);
    expect(rr.stdout).toBe("200");
    const re = await sh("base64 -d re.p7.b64 | openssl pkcs7 -inform DER -print_certs | openssl x509 -noout -subject -ext subjectAltName");
    expect(re.stdout).toContain("est-dev-1");
  });

  it("abuse: simpleenroll without credentials is 401; garbage is 400", async () => {
    const sh = (cmd: string) => run("sh", ["-c", cmd], { cwd: e.dir });
    const r = await curl(["-o", "/dev/null", "-w", "%{http_code}", "-H", "Content-Type: application/pkcs10", "--data-binary", "@dev.b64", `${e.base}/.well-known/est/simpleenroll`]);
    expect(r.stdout).toBe("401");
    await sh("echo bm90IGEgY3Ny > junk.b64");
    const j = await curl(["-o", "/dev/null", "-w", "%{http_code}", "--cert", "boot.pem", "--key", "boot.key", "-H", "Content-Type: application/pkcs10", "--data-binary", "@junk.b64", `${e.base}/.well-known/est/simpleenroll`]);
    expect(j.stdout).toBe("400");
  });
});
