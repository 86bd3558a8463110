import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { request as httpsRequest } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { createCaServer } from "./server.js";
import { makeTestCa, openssl, opensslAsync, opensslCsr, quietLogger, softHsm, sqliteStore, testConfig, type SoftHsm, type TestCa, type TestStore } from "./test-helpers.js";
import { rolloverIssuingCa } from "./init.js";
import type { CaServer } from "./server.js";

let hsm: SoftHsm;
let ts: TestStore;
let t: TestCa;
let server: CaServer;
let base: string;
let revBase: string;
let dir: string;
let rootPem: string;

interface Res { status: number; type: string; body: Buffer; json: () => Record<string, unknown> }

/** HTTPS to the CA (trusting its root), optionally with a client certificate. */
function call(method: string, path: string, opts: { token?: string; body?: unknown; raw?: Buffer; contentType?: string; cert?: string; key?: string; baseUrl?: string } = {}): Promise<Res> {
  const url = new URL(path, opts.baseUrl ?? base);
  const payload = opts.raw ?? (opts.body !== undefined ? Buffer.from(JSON.stringify(opts.body)) : undefined);
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, {
      method, ca: rootPem, ...(opts.cert ? { cert: opts.cert, key: opts.key } : {}),
      headers: {
        ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
        ...(payload ? { "content-type": opts.contentType ?? "application/json", "content-length": String(payload.length) } : {}),
      },
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const body = Buffer.concat(chunks);
        resolve({ status: res.statusCode ?? 0, type: String(res.headers["content-type"] ?? ""), body, json: () => JSON.parse(body.toString()) as Record<string, unknown> });
      });
    });
    req.on("error", reject);
    if (payload) req.write(payload);
    req.end();
  });
}

async function httpGet(url: string): Promise<{ status: number; type: string; body: Buffer }> {
  const r = await fetch(url);
  return { status: r.status, type: r.headers.get("content-type") ?? "", body: Buffer.from(await r.arrayBuffer()) };
}

async function enroll(deviceId: string, dns: string[] = [], kind: "device" | "leaf" = "device"): Promise<void> {
  const r = await call("PUT", `/v1/admin/enrollments/${deviceId}`, { token: t.init.adminToken, body: { kind, dnsNames: dns } });
  expect(r.status).toBe(200);
}

async function issue(deviceId: string, csr: string, profile = "device-identity", hostName?: string): Promise<Res> {
  return call("POST", "/v1/certificates", { token: t.init.adminToken, body: { csr, profile, deviceId, ...(hostName ? { hostName } : {}) } });
}

function expectProblem(r: Res, status: number, code: string, detail?: RegExp): Record<string, unknown> {
  expect(r.type).toContain("application/problem+json");
  const p = r.json();
  expect(p).toMatchObject({ status, code });
  expect(r.status).toBe(status);
  if (detail) expect(String(p.detail)).toMatch(detail);
  return p;
}

beforeAll(async () => {
  hsm = softHsm();
  ts = await sqliteStore();
  dir = mkdtempSync(join(tmpdir(), "et-ca-openssl-"));
  const keys = await hsm.open();
  // publicBaseUrl is fixed before listening: use a placeholder port then point it at the revocation listener.
  const config = testConfig();
  t = await makeTestCa(ts.store, keys, config);
  rootPem = t.init.root.certPem;
  writeFileSync(join(dir, "root.pem"), rootPem);
  server = await createCaServer(config, { ca: t.ca, store: ts.store, logger: quietLogger() });
  const addr = await server.listen();
  base = addr.url;
  revBase = addr.revocationUrl ?? "";
  // Certificates carry CRL/OCSP URLs of the revocation listener.
  Object.assign(t.ca.options, { publicBaseUrl: revBase });
  writeFileSync(join(dir, "issuing.pem"), t.ca.current().cert.toString("pem"));
});

afterAll(async () => {
  await server?.close();
  await ts?.cleanup();
  await t?.keys.close();
  hsm?.cleanup();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("issuance through the HTTPS API, checked by openssl", () => {
  it("device identity: chain verifies with openssl; subject and SAN come from the record, not the CSR", async () => {
    await enroll("dev-1", ["dev-1.local"]);
    const { csr } = opensslCsr(dir, "dev1", { cn: "attacker-chosen-name" });
    const r = await issue("dev-1", csr);
    expect(r.status).toBe(201);
    const body = r.json();
    writeFileSync(join(dir, "dev1.pem"), String(body.certificatePem));
    expect(openssl(dir, ["verify", "-CAfile", "root.pem", "-untrusted", "issuing.pem", "dev1.pem"])).toMatch(/dev1.pem: OK/);
    const text = openssl(dir, ["x509", "-in", "dev1.pem", "-noout", "-text"]);
    expect(text).toContain("URI:edgetrust://test.edgetrust/devices/dev-1");
    expect(text).not.toContain("attacker-chosen-name");
    expect(text).toMatch(/Subject: CN\s?=\s?dev-1/);
    expect(text).toContain("TLS Web Client Authentication");
    expect(text).toMatch(/X509v3 Subject Key Identifier/);
    expect(text).toMatch(/X509v3 Authority Key Identifier/);
    expect(text).toContain(`URI:${revBase}/v1/crl/`);
    expect(text).toContain(`OCSP - URI:${revBase}/v1/ocsp`);
    const serial = openssl(dir, ["x509", "-in", "dev1.pem", "-noout", "-serial"]).trim().split("=")[1] ?? "";
    expect(serial.length).toBeGreaterThanOrEqual(16); // >= 64 bits
    expect(parseInt(serial[0] ?? "8", 16)).toBeLessThan(8); // positive
    const rec = await ts.store.getCertificate(serial);
    expect(rec?.deviceId).toBe("dev-1");
  });

  it("device Edge CA: CA:TRUE, pathlen 0, name constraints to the device", async () => {
    await enroll("gw-1", ["gw-1.local"]);
    const { csr } = opensslCsr(dir, "gw1ca");
    const r = await issue("gw-1", csr, "edge-ca");
    expect(r.status).toBe(201);
    writeFileSync(join(dir, "gw1ca.pem"), String(r.json().certificatePem));
    const text = openssl(dir, ["x509", "-in", "gw1ca.pem", "-noout", "-text"]);
    expect(text).toMatch(/CA:TRUE, pathlen:0/);
    expect(text).toMatch(/Name Constraints: critical/);
    expect(text).toMatch(/Permitted:\s+URI:test\.edgetrust\s+DNS:gw-1\.local/);
    expect(openssl(dir, ["verify", "-CAfile", "root.pem", "-untrusted", "issuing.pem", "gw1ca.pem"])).toMatch(/OK/);
  });

  it("edge hub server and leaf device profiles", async () => {
    const { csr } = opensslCsr(dir, "hub1");
    const r = await issue("gw-1", csr, "edge-hub-server", "gw-1.local");
    expect(r.status).toBe(201);
    writeFileSync(join(dir, "hub1.pem"), String(r.json().certificatePem));
    const text = openssl(dir, ["x509", "-in", "hub1.pem", "-noout", "-text"]);
    expect(text).toMatch(/DNS:edgehub, DNS:localhost, DNS:gw-1\.local/);
    expect(text).toContain("TLS Web Server Authentication");
    expect(openssl(dir, ["verify", "-CAfile", "root.pem", "-untrusted", "issuing.pem", "-purpose", "sslserver", "hub1.pem"])).toMatch(/OK/);
    await enroll("leaf-1", [], "leaf");
    const leaf = await issue("leaf-1", opensslCsr(dir, "leaf1").csr, "leaf-device");
    expect(leaf.status).toBe(201);
    expectProblem(await issue("leaf-1", opensslCsr(dir, "leaf1b").csr, "device-identity"), 400, "PKI_PROFILE_VIOLATION");
  });
});

describe("issuance attacks are refused with problem+json", () => {
  beforeAll(async () => { await enroll("victim", ["victim.local"]); });

  it("CSR asking for CA:TRUE", async () => {
    const { csr } = opensslCsr(dir, "atk-ca", { addext: ["basicConstraints=critical,CA:TRUE"] });
    expectProblem(await issue("victim", csr), 400, "PKI_PROFILE_VIOLATION", /CA/);
  });
  it("CSR asking for extra SANs", async () => {
    const { csr } = opensslCsr(dir, "atk-san", { addext: ["subjectAltName=URI:edgetrust://test.edgetrust/devices/victim,DNS:evil.example.com"] });
    expectProblem(await issue("victim", csr), 400, "PKI_PROFILE_VIOLATION", /evil\.example\.com/);
    const other = opensslCsr(dir, "atk-san2", { addext: ["subjectAltName=URI:edgetrust://test.edgetrust/devices/someone-else"] });
    expectProblem(await issue("victim", other.csr), 400, "PKI_PROFILE_VIOLATION", /someone-else/);
  });
  it("CSR asking only for the SAN the record grants is fine", async () => {
    const { csr } = opensslCsr(dir, "ok-san", { addext: ["subjectAltName=URI:edgetrust://test.edgetrust/devices/victim"] });
    expect((await issue("victim", csr)).status).toBe(201);
  });
  it("wrong key type or size (secp256k1, RSA-1024)", async () => {
    const k1 = opensslCsr(dir, "atk-k1", { keyArgs: ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:secp256k1"] });
    expectProblem(await issue("victim", k1.csr), 400, "PKI_PROFILE_VIOLATION", /curve/);
    const rsa = opensslCsr(dir, "atk-rsa", { keyArgs: ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"] });
    expectProblem(await issue("victim", rsa.csr), 400, "PKI_PROFILE_VIOLATION", /1024/);
  });
  it("bad CSR signature (no proof of possession)", async () => {
    const { csr } = opensslCsr(dir, "atk-sig");
    const der = Buffer.from(x509.PemConverter.decodeFirst(csr));
    der[der.length - 3] = (der[der.length - 3] ?? 0) ^ 0x01; // inside the signature value
    const forged = x509.PemConverter.encode(der, "CERTIFICATE REQUEST");
    expectProblem(await issue("victim", forged), 400, "PKI_INVALID_CSR", /signature/);
  });
  it("unknown critical extension", async () => {
    const { csr } = opensslCsr(dir, "atk-crit", { addext: ["1.2.3.4.5=critical,ASN1:NULL"] });
    expectProblem(await issue("victim", csr), 400, "PKI_INVALID_CSR", /critical/);
  });
  it("garbage CSR, unknown device, unknown profile", async () => {
    expectProblem(await issue("victim", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA" + "A".repeat(80) + "\n-----END CERTIFICATE REQUEST-----"), 400, "PKI_INVALID_CSR");
    expectProblem(await issue("nobody", opensslCsr(dir, "nobody").csr), 404, "NOT_FOUND");
    const p = expectProblem(await issue("victim", opensslCsr(dir, "prof").csr, "root-ca"), 400, "INVALID_INPUT");
    expect(String(p.detail)).toMatch(/^body\/profile/);
  });
});

describe("admin authentication", () => {
  it("no token, malformed token, wrong token → 401; auditor revoking → 403; auditor reading → 200", async () => {
    const noTok = await call("POST", "/v1/certificates/01/revoke", { body: { reason: "keyCompromise" } });
    expectProblem(noTok, 401, "UNAUTHENTICATED");
    expectProblem(await call("GET", "/v1/audit", { token: "x".repeat(20) + "!" }), 401, "UNAUTHENTICATED", /malformed/);
    expectProblem(await call("GET", "/v1/audit", { token: "et_" + "A".repeat(43) }), 401, "UNAUTHENTICATED", /unknown/);
    const aud = await call("POST", "/v1/admin/tokens", { token: t.init.adminToken, body: { name: "auditor-1", role: "auditor" } });
    expect(aud.status).toBe(201);
    const auditor = String(aud.json().token);
    const serial = (await ts.store.listCertificates({ deviceId: "dev-1" }))[0]?.serial ?? "";
    expectProblem(await call("POST", `/v1/certificates/${serial}/revoke`, { token: auditor, body: { reason: "keyCompromise" } }), 403, "FORBIDDEN");
    expectProblem(await call("POST", "/v1/admin/tokens", { token: auditor, body: { name: "escalate", role: "admin" } }), 403, "FORBIDDEN");
    expect((await call("GET", "/v1/audit", { token: auditor })).status).toBe(200);
    expect((await call("GET", `/v1/certificates/${serial}`, { token: auditor })).json().status).toBe("good");
  });

  it("admin client certificates: a pinned auditor certificate reads, cannot revoke; an unpinned one is nobody", async () => {
    openssl(dir, ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "aud.key", "-subj", "/CN=auditor-laptop", "-days", "1", "-out", "aud.pem"]);
    openssl(dir, ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "stranger.key", "-subj", "/CN=stranger", "-days", "1", "-out", "stranger.pem"]);
    const cert = readFileSync(join(dir, "aud.pem"), "utf8");
    const fp = openssl(dir, ["x509", "-in", "aud.pem", "-noout", "-fingerprint", "-sha256"]).split("=")[1]?.trim().replace(/:/g, "").toLowerCase() ?? "";
    await ts.store.addAdminCertificate("auditor-laptop", "auditor", fp, "test");
    const key = readFileSync(join(dir, "aud.key"), "utf8");
    expect((await call("GET", "/v1/audit", { cert, key })).status).toBe(200);
    const serial = (await ts.store.listCertificates({ deviceId: "dev-1" }))[0]?.serial ?? "";
    expectProblem(await call("POST", `/v1/certificates/${serial}/revoke`, { cert, key, body: { reason: "keyCompromise" } }), 403, "FORBIDDEN");
    const stranger = { cert: readFileSync(join(dir, "stranger.pem"), "utf8"), key: readFileSync(join(dir, "stranger.key"), "utf8") };
    expectProblem(await call("GET", "/v1/audit", stranger), 401, "UNAUTHENTICATED");
  });

  it("schema failures name the precise field", async () => {
    const p = expectProblem(await call("POST", "/v1/certificates", { token: t.init.adminToken, body: { profile: "device-identity", deviceId: "dev-1" } }), 400, "INVALID_INPUT");
    expect(p.detail).toBe("body/csr: is required");
    const q = expectProblem(await call("POST", "/v1/certificates/01/revoke", { token: t.init.adminToken, body: { reason: "because" } }), 400, "INVALID_INPUT");
    expect(String(q.detail)).toMatch(/^body\/reason/);
    const u = expectProblem(await call("PUT", "/v1/admin/enrollments/d9", { token: t.init.adminToken, body: { dnsNames: [], extra: 1 } }), 400, "INVALID_INPUT");
    expect(u.detail).toBe("body/extra: is not allowed");
    expectProblem(await call("GET", "/v1/nothing-here"), 404, "NOT_FOUND");
  });
});

describe("revocation: CRL and OCSP with openssl", () => {
  let revoked: string;
  beforeAll(async () => {
    await enroll("dev-g");
    await enroll("dev-r");
    const g = await issue("dev-g", opensslCsr(dir, "devg").csr);
    const r = await issue("dev-r", opensslCsr(dir, "devr").csr);
    writeFileSync(join(dir, "devg.pem"), String(g.json().certificatePem));
    writeFileSync(join(dir, "devr.pem"), String(r.json().certificatePem));
    expect(g.status).toBe(201);
    revoked = String(r.json().serial);
    const rv = await call("POST", `/v1/certificates/${revoked}/revoke`, { token: t.init.adminToken, body: { reason: "keyCompromise" } });
    expect(rv.status).toBe(200);
    expect(rv.json()).toMatchObject({ status: "revoked", revocationReason: "keyCompromise" });
    expectProblem(await call("POST", `/v1/certificates/${revoked}/revoke`, { token: t.init.adminToken, body: { reason: "superseded" } }), 409, "CONFLICT");
    // The same revocation again is a retry (its first answer may have been lost): the revoked record, not a conflict.
    const retry = await call("POST", `/v1/certificates/${revoked}/revoke`, { token: t.init.adminToken, body: { reason: "keyCompromise" } });
    expect(retry.status).toBe(200);
    expect(retry.json()).toMatchObject({ status: "revoked", revocationReason: "keyCompromise" });
  });

  it("the CRL is DER, signed, numbered, has nextUpdate and lists the revoked serial; openssl verify -crl_check rejects it", async () => {
    const id = t.ca.current().record.id;
    const res = await httpGet(`${revBase}/v1/crl/${id}.crl`);
    expect(res.status).toBe(200);
    expect(res.type).toBe("application/pkix-crl");
    writeFileSync(join(dir, "ca.crl"), res.body);
    const text = openssl(dir, ["crl", "-inform", "DER", "-in", "ca.crl", "-noout", "-text", "-CAfile", "issuing.pem"]);
    expect(text).toMatch(/X509v3 CRL Number:\s+\d+/);
    expect(text).toMatch(/Next Update:/);
    expect(text.toLowerCase()).toContain(revoked.toLowerCase().replace(/^0+/, ""));
    expect(text).toMatch(/Key Compromise/);
    openssl(dir, ["crl", "-inform", "DER", "-in", "ca.crl", "-out", "ca-crl.pem"]);
    const sig = openssl(dir, ["crl", "-in", "ca-crl.pem", "-noout", "-CAfile", "issuing.pem"], undefined);
    expect(sig).toBe("");
    writeFileSync(join(dir, "chain-crl.pem"), readFileSync(join(dir, "ca-crl.pem")));
    let out = "";
    try {
      openssl(dir, ["verify", "-crl_check", "-CRLfile", "ca-crl.pem", "-CAfile", "root.pem", "-untrusted", "issuing.pem", "devr.pem"]);
    } catch (e) {
      out = String((e as { stdout?: string; stderr?: string }).stdout) + String((e as { stderr?: string }).stderr);
    }
    expect(out).toMatch(/certificate revoked/);
    expect(openssl(dir, ["verify", "-crl_check", "-CRLfile", "ca-crl.pem", "-CAfile", "root.pem", "-untrusted", "issuing.pem", "devg.pem"])).toMatch(/OK/);
  });

  it("CRL numbers increase on every revocation", async () => {
    const id = t.ca.current().record.id;
    const before = (await ts.store.currentCrl(id))?.crlNumber ?? 0;
    await enroll("dev-r2");
    const r2 = await issue("dev-r2", opensslCsr(dir, "devr2").csr);
    await call("POST", `/v1/certificates/${String(r2.json().serial)}/revoke`, { token: t.init.adminToken, body: { reason: "superseded" } });
    expect((await ts.store.currentCrl(id))?.crlNumber).toBe(before + 1);
  });

  function ocspPost(args: string[]): Promise<string> {
    return opensslAsync(dir, ["ocsp", "-issuer", "issuing.pem", ...args, "-url", `${revBase}/v1/ocsp`, "-CAfile", "root.pem", "-nonce", "-resp_text"]);
  }

  it("openssl ocsp POST with nonce: good, revoked (with reason), unknown", async () => {
    const g = await ocspPost(["-cert", "devg.pem"]);
    expect(g).toMatch(/Response verify OK/);
    expect(g).toMatch(/devg\.pem: good/);
    expect(g).toMatch(/OCSP Nonce:/);
    const r = await ocspPost(["-cert", "devr.pem"]);
    expect(r).toMatch(/devr\.pem: revoked/);
    expect(r).toMatch(/Reason: keyCompromise/);
    const u = await ocspPost(["-serial", "0x7a11ce0fdeadbeef1234"]);
    expect(u).toMatch(/0x7a11ce0fdeadbeef1234: unknown/);
    expect(u).toMatch(/Response verify OK/);
  });

  it("OCSP GET (RFC 6960 A.1): base64 request in the path, verified by openssl with nonce check", async () => {
    openssl(dir, ["ocsp", "-issuer", "issuing.pem", "-cert", "devr.pem", "-nonce", "-reqout", "req.der"]);
    const b64 = readFileSync(join(dir, "req.der")).toString("base64");
    const res = await httpGet(`${revBase}/v1/ocsp/${encodeURIComponent(b64)}`);
    expect(res.type).toBe("application/ocsp-response");
    writeFileSync(join(dir, "resp.der"), res.body);
    // -reqin makes openssl check the response's nonce against the request's
    const out = await opensslAsync(dir, ["ocsp", "-reqin", "req.der", "-respin", "resp.der", "-verify_other", "issuing.pem", "-CAfile", "root.pem", "-resp_text"]);
    expect(out).toMatch(/Response verify OK/);
    expect(out).toMatch(/Cert Status: revoked/);
    expect(out).toMatch(/OCSP Nonce:/);
    // garbage → malformedRequest, still an OCSP response
    const bad = await httpGet(`${revBase}/v1/ocsp/AAAA`);
    writeFileSync(join(dir, "bad.der"), bad.body);
    await expect(opensslAsync(dir, ["ocsp", "-respin", "bad.der", "-resp_text", "-noverify"])).rejects.toMatchObject({ stdout: expect.stringMatching(/malformedrequest/i) });
  });
});

describe("renewal over mTLS", () => {
  it("renew (same key) and rekey (new key) with the current certificate as the TLS client certificate", async () => {
    await enroll("dev-ren");
    const k = opensslCsr(dir, "devren");
    const first = await issue("dev-ren", k.csr);
    const cert = String(first.json().certificatePem);
    const renew = await call("POST", "/v1/renew", { cert, key: k.key, body: { csr: k.csr } });
    expect(renew.status).toBe(200);
    expect(renew.json()).toMatchObject({ rekey: false, replaces: first.json().serial });
    const k2 = opensslCsr(dir, "devren2");
    const rekey = await call("POST", "/v1/renew", { cert: String(renew.json().certificatePem), key: k.key, body: { csr: k2.csr } });
    expect(rekey.status).toBe(200);
    expect(rekey.json()).toMatchObject({ rekey: true });
    writeFileSync(join(dir, "rekey.pem"), String(rekey.json().certificatePem));
    expect(openssl(dir, ["x509", "-in", "rekey.pem", "-noout", "-ext", "subjectAltName"])).toContain("edgetrust://test.edgetrust/devices/dev-ren");
  });

  it("no client certificate → 401; a revoked certificate → 403", async () => {
    expectProblem(await call("POST", "/v1/renew", { body: { csr: opensslCsr(dir, "x1").csr } }), 401, "UNAUTHENTICATED");
    await enroll("dev-rev");
    const k = opensslCsr(dir, "devrev");
    const c = await issue("dev-rev", k.csr);
    await call("POST", `/v1/certificates/${String(c.json().serial)}/revoke`, { token: t.init.adminToken, body: { reason: "keyCompromise" } });
    expectProblem(await call("POST", "/v1/renew", { cert: String(c.json().certificatePem), key: k.key, body: { csr: k.csr } }), 403, "FORBIDDEN", /revoked/);
  });

  it("an expired certificate renews inside the window, and is refused outside it", async () => {
    await enroll("dev-old");
    // A lifetime of 1 s (counted from issuance): wait until it has run out, then renew.
    const shortLived = await t.variant({ profiles: { "device-identity": { lifetimeSeconds: 1 } } });
    const k = opensslCsr(dir, "devold");
    const old = await shortLived.issue({ csrPem: k.csr, profile: "device-identity", deviceId: "dev-old" }, "test");
    await new Promise((r) => setTimeout(r, Math.max(0, old.certificate.notAfter.getTime() - Date.now()) + 100));
    expect(old.certificate.notAfter.getTime()).toBeLessThan(Date.now());
    const ok = await call("POST", "/v1/renew", { cert: old.record.certPem, key: k.key, body: { csr: k.csr } });
    expect(ok.status).toBe(200);
    const strict = await t.variant({ renewAfterExpiryDays: 0 });
    await expect(strict.renew(new Uint8Array(old.certificate.rawData), k.csr)).rejects.toMatchObject({ code: "FORBIDDEN" });
  });
});

describe("issuing-CA rollover", () => {
  it("a new intermediate issues; old and new chains both verify against the same root; old CRL/OCSP still served", async () => {
    const oldId = t.ca.current().record.id;
    await rolloverIssuingCa(ts.store, t.keys, { logger: quietLogger() });
    await t.ca.reload();
    const newId = t.ca.current().record.id;
    expect(newId).not.toBe(oldId);
    const bundle = await call("GET", "/v1/cas/bundle.pem");
    writeFileSync(join(dir, "bundle.pem"), bundle.body);
    await enroll("dev-new");
    const r = await issue("dev-new", opensslCsr(dir, "devnew").csr);
    expect(r.json().issuerId).toBe(newId);
    writeFileSync(join(dir, "devnew.pem"), String(r.json().certificatePem));
    expect(openssl(dir, ["verify", "-CAfile", "root.pem", "-untrusted", "bundle.pem", "devnew.pem"])).toMatch(/OK/);
    expect(openssl(dir, ["verify", "-CAfile", "root.pem", "-untrusted", "bundle.pem", "devg.pem"])).toMatch(/OK/);
    expect((await httpGet(`${revBase}/v1/crl/${oldId}.crl`)).status).toBe(200);
    expect((await httpGet(`${revBase}/v1/crl/${newId}.crl`)).status).toBe(200);
    expect(await opensslAsync(dir, ["ocsp", "-issuer", "issuing.pem", "-cert", "devg.pem", "-url", `${revBase}/v1/ocsp`, "-CAfile", "root.pem"])).toMatch(/devg\.pem: good/);
    const cas = (await call("GET", "/v1/cas")).json().cas as { id: string; current: boolean }[];
    expect(cas.find((c) => c.id === newId)?.current).toBe(true);
    expect(cas.some((c) => c.id === oldId)).toBe(true);
  });
});

describe("operations", () => {
  it("healthz, metrics, openapi", async () => {
    expect((await call("GET", "/healthz")).json()).toMatchObject({ status: "ok", database: "sqlite" });
    const m = (await call("GET", "/metrics")).body.toString();
    expect(m).toMatch(/edgetrust_ca_certificates_issued_total\{profile="device-identity",kind="issue"\} \d+/);
    expect(m).toMatch(/edgetrust_ca_ocsp_responses_total\{outcome="revoked"\}/);
    // Group commit: every certificate recorded so far went through it, in at least one transaction.
    const committed = Number(/^edgetrust_ca_issuance_committed_total (\d+)$/m.exec(m)?.[1]);
    expect(committed).toBeGreaterThan(0);
    expect(committed).toBe(ts.store.issuance.stats.records);
    expect(Number(/^edgetrust_ca_issuance_commits_total (\d+)$/m.exec(m)?.[1])).toBeGreaterThan(0);
    const doc = (await call("GET", "/openapi.json")).json();
    expect(doc.openapi).toBe("3.0.3");
    const paths = Object.keys(doc.paths as object);
    for (const p of ["/v1/certificates", "/v1/certificates/{serial}/revoke", "/v1/renew", "/v1/ocsp", "/v1/audit/verify", "/healthz"]) expect(paths).toContain(p);
  });

  it("every issuance, revocation and admin action is in the audit chain, which verifies", async () => {
    const v = await call("GET", "/v1/audit/verify", { token: t.init.adminToken });
    expect(v.json()).toMatchObject({ ok: true });
    const entries = (await ts.store.listAudit({ limit: 1000 })).map((e) => e.action);
    for (const a of ["ca.root.create", "ca.issuing.create", "principal.token.create", "enrollment.upsert", "cert.issue", "cert.revoke", "cert.renew", "cert.rekey"]) expect(entries).toContain(a);
    const counts = await ts.store.countCertificates();
    expect(entries.filter((a) => a.startsWith("cert.issue") || a === "cert.renew" || a === "cert.rekey").length).toBe(counts.total);
  });
});
