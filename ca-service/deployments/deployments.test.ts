import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { signManifest, type JwsSigner, type Manifest } from "../../policy/index.js";
import { makeSigners } from "../../policy/fixtures.js";
import { createCaServer, type CaServer } from "../server.js";
import { makeTestCa, opensslCsr, quietLogger, softHsm, sqliteStore, testConfig, type SoftHsm, type TestCa, type TestStore } from "../test-helpers.js";

const execFileAsync = promisify(execFile);
let hsm: SoftHsm;
let ts: TestStore;
let t: TestCa;
let server: CaServer;
let base: string;
let dir: string;
let signers: JwsSigner[];

/** curl — a client nobody here wrote — against the CA, with the device's certificate when given. */
async function curl(method: string, path: string, opts: { token?: string; body?: unknown; device?: string } = {}): Promise<{ status: number; body: string }> {
  const args = ["-s", "-w", "\n%{http_code}", "--cacert", join(dir, "root.pem"), "-X", method, `${base}${path}`];
  if (opts.token) args.push("-H", `authorization: Bearer ${opts.token}`);
  if (opts.device) args.push("--cert", join(dir, `${opts.device}.pem`), "--key", join(dir, `${opts.device}.key`));
  if (opts.body !== undefined) args.push("-H", "content-type: application/json", "--data-binary", JSON.stringify(opts.body));
  const { stdout } = await execFileAsync("curl", args);
  const nl = stdout.lastIndexOf("\n");
  return { status: Number(stdout.slice(nl + 1)), body: stdout.slice(0, nl) };
}

function manifest(version: number, targets: string[]): Manifest {
  return {
    schemaVersion: 1, deploymentId: "fleet", version, targets,
    issuedAt: new Date(Date.now() - 60_000).toISOString(), expiresAt: new Date(Date.now() + 86_400_000).toISOString(),
    modules: { sensor: { image: `127.0.0.1:5000/edgetrust/sensor@sha256:${"a".repeat(64)}`, options: { user: "1000:1000" }, restartPolicy: "always", startupOrder: 0 } },
  };
}

async function signed(m: Manifest, n = 2): Promise<Record<string, unknown>> {
  let jws = await signManifest(m, signers[0] as JwsSigner);
  for (const s of signers.slice(1, n)) jws = await signManifest(jws, s);
  return jws as unknown as Record<string, unknown>;
}

async function device(id: string): Promise<void> {
  const e = await curl("PUT", `/v1/admin/enrollments/${id}`, { token: t.init.adminToken, body: { kind: "device", dnsNames: [] } });
  expect(e.status).toBe(200);
  const k = opensslCsr(dir, id);
  const r = await curl("POST", "/v1/certificates", { token: t.init.adminToken, body: { csr: k.csr, profile: "device-identity", deviceId: id } });
  expect(r.status).toBe(201);
  writeFileSync(join(dir, `${id}.pem`), String(JSON.parse(r.body).certificatePem));
}

beforeAll(async () => {
  hsm = softHsm("et-deploy-test");
  ts = await sqliteStore();
  dir = mkdtempSync(join(tmpdir(), "et-deploy-"));
  const config = testConfig();
  t = await makeTestCa(ts.store, await hsm.open(), config);
  writeFileSync(join(dir, "root.pem"), t.init.root.certPem);
  server = await createCaServer(config, { ca: t.ca, store: ts.store, logger: quietLogger() });
  base = (await server.listen()).url;
  signers = await makeSigners();
  await device("gw-1");
  await device("gw-2");
});

afterAll(async () => {
  await server?.close();
  await ts?.cleanup();
  await t?.keys.close();
  hsm?.cleanup();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("deployments: uploaded by the security team, fetched by devices over mTLS", () => {
  it("an admin uploads a signed manifest; the targeted device fetches it byte for byte, another device gets nothing", async () => {
    const jws = await signed(manifest(1, ["gw-1"]));
    const up = await curl("PUT", "/v1/deployments", { token: t.init.adminToken, body: jws });
    expect(up.status).toBe(201);
    expect(JSON.parse(up.body)).toMatchObject({ deploymentId: "fleet", version: 1, targets: ["gw-1"] });
    const got = await curl("GET", "/v1/device/deployment", { device: "gw-1" });
    expect(got.status).toBe(200);
    expect(JSON.parse(JSON.parse(got.body).jws as string)).toEqual(jws);
    expect((await curl("GET", "/v1/device/deployment", { device: "gw-2" })).status).toBe(204);
  });

  it("the newest version wins, and globs in targets reach a fleet", async () => {
    expect((await curl("PUT", "/v1/deployments", { token: t.init.adminToken, body: await signed(manifest(2, ["gw-*"])) })).status).toBe(201);
    for (const d of ["gw-1", "gw-2"]) expect(JSON.parse((await curl("GET", "/v1/device/deployment", { device: d })).body).version).toBe(2);
  });

  it("the same version with other content is a conflict; with one more signature it replaces the envelope", async () => {
    const other = await curl("PUT", "/v1/deployments", { token: t.init.adminToken, body: await signed({ ...manifest(2, ["gw-*"]), expiresAt: "2099-01-01T00:00:00Z" }) });
    expect(other.status).toBe(409);
    expect(JSON.parse(other.body).code).toBe("CONFLICT");
  });

  it("refuses anonymous uploads and malformed envelopes, with problem+json", async () => {
    const jws = await signed(manifest(3, ["gw-1"]));
    expect((await curl("PUT", "/v1/deployments", { body: jws })).status).toBe(401);
    const bad = await curl("PUT", "/v1/deployments", { token: t.init.adminToken, body: { payload: "!!", signatures: [{}] } });
    expect(bad.status).toBe(400);
    expect(JSON.parse(bad.body).detail).toMatch(/payload/);
    const notManifest = await curl("PUT", "/v1/deployments", { token: t.init.adminToken, body: { payload: Buffer.from('{"hello":1}').toString("base64url"), signatures: [{ protected: "e30", signature: "AA" }] } });
    expect(notManifest.status).toBe(400);
  });

  it("a device must present its own identity certificate: none → 401, a revoked one → 403", async () => {
    expect((await curl("GET", "/v1/device/deployment")).status).toBe(401);
    await device("gw-3");
    const certs = await ts.store.db.query<{ serial: string }>("SELECT serial FROM certificates WHERE device_id = ? AND profile = 'device-identity'", ["gw-3"]);
    await curl("POST", `/v1/certificates/${certs[0]?.serial}/revoke`, { token: t.init.adminToken, body: { reason: "keyCompromise" } });
    const r = await curl("GET", "/v1/device/deployment", { device: "gw-3" });
    expect(r.status).toBe(403);
    expect(JSON.parse(r.body).detail).toMatch(/revoked/);
  });

  it("a device reports its verdicts; it cannot report for another device", async () => {
    const report = { at: new Date().toISOString(), kind: "manifest-rejected", deviceId: "gw-1", version: 9, reasons: ["signature: bad"] };
    expect((await curl("POST", "/v1/device/reports", { device: "gw-1", body: report })).status).toBe(202);
    const spoof = await curl("POST", "/v1/device/reports", { device: "gw-2", body: report });
    expect(spoof.status).toBe(403);
    const list = JSON.parse((await curl("GET", "/v1/devices/gw-1/reports", { token: t.init.adminToken })).body) as { reports: Array<{ kind: string; body: { reasons: string[] } }> };
    expect(list.reports[0]).toMatchObject({ kind: "manifest-rejected", body: { reasons: ["signature: bad"] } });
  });
});
