import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { Agent } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import * as jose from "jose";
import { createLogger } from "../common/index.js";
import { Pkcs11KeyStore, SOFTHSM_MODULE, createSoftHsmDir, initToken } from "../hsm/index.js";
import { signManifest, signerFromPrivateKey, type Manifest } from "../policy/index.js";
import { CaStore, initCa } from "../ca-service/index.js";
import { call } from "./http.js";
import { cliBundleArgs } from "../test/fixtures/cli-bundle.js";
import { localFleetUnavailable, runCli, startCaProcess, startHaproxy, startPrivatePostgres, waitHealthy, type Balancer, type CaProcess, type PrivatePostgres } from "./harness.js";
import { simulateFleet, type ReferenceDigests, type SimulationResult } from "./simulate.js";
import { pkcs11EngineEnvironment } from "./keys.js";

/**
 * Issue 13: three `ca serve` processes behind HAProxy on one PostgreSQL (a private cluster this test starts, so it
 * can restart it without disturbing anyone) behave as one CA. FLEET_TEST_DEVICES / FLEET_CHAOS_DEVICES scale it.
 */
const PROCESSES = 3;
const DEVICES = Number(process.env.FLEET_TEST_DEVICES ?? 2000);
const CHAOS_DEVICES = Number(process.env.FLEET_CHAOS_DEVICES ?? 360);
const PIN = "fleet-test-pin-1234";
const d = (c: string) => `sha256:${c.repeat(64)}`;
const REFS: ReferenceDigests = { agent: [d("a")], policy: [d("b")], trustRoot: [d("c")], manifest: { minVersion: 1 }, modules: { sensor: [d("e")] } };

const unavailable = localFleetUnavailable();
if (unavailable) process.stderr.write(`fleet/fleet.test.ts: skipped: ${unavailable}\n`);

describe.skipIf(Boolean(unavailable))(`a CA fleet: ${PROCESSES} \`ca serve\` behind HAProxy on one PostgreSQL`, () => {
  let pg: PrivatePostgres;
  let hsmCleanup: () => void;
  let store: CaStore;
  let dir: string;
  let cfg: string;
  let env: NodeJS.ProcessEnv;
  let rootPem: string;
  let admin: string;
  let procs: CaProcess[] = [];
  let lb: Balancer;
  let newIssuer = "";

  const direct = () => new Agent({ keepAlive: false, ca: rootPem });
  const metricsText = async (url: string): Promise<string> => {
    const { request } = await import("node:https");
    return new Promise((resolve, reject) => {
      request(`${url}/metrics`, { agent: direct() }, (res) => {
        let t = "";
        res.on("data", (c: Buffer) => { t += c.toString(); });
        res.on("end", () => resolve(t));
      }).on("error", reject).end();
    });
  };

  beforeAll(async () => {
    pg = await startPrivatePostgres();
    const h = createSoftHsmDir();
    hsmCleanup = h.cleanup;
    initToken({ module: SOFTHSM_MODULE, label: "et-fleet", soPin: `so-${PIN}`, userPin: PIN });
    store = await CaStore.open({ databaseUrl: pg.url });
    const keys = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: "et-fleet", pin: PIN, logger: createLogger("fleet-test", { level: "error" }) });
    const init = await initCa(store, keys, { logger: createLogger("fleet-test", { level: "error" }) });
    await keys.close();
    rootPem = init.root.certPem;
    admin = init.adminToken;
    dir = mkdtempSync(join(tmpdir(), "et-fleet-test-"));
    writeFileSync(join(dir, "references.yaml"), JSON.stringify(REFS));
    cfg = join(dir, "edgetrust.yaml");
    writeFileSync(cfg, [
      "log:", "  level: warn",
      "hsm:", "  backend: pkcs11", `  module: ${SOFTHSM_MODULE}`, "  tokenLabel: et-fleet", "  pinEnv: FLEET_TEST_PIN",
      "ca:", "  host: 127.0.0.1", "  port: 0", "  revocationPort: -1", `  databaseUrl: ${pg.url}`,
      "  trustDomain: fleet.edgetrust", "  rateLimitPerMinute: 1000000",
      "  attestation:", `    referenceFile: ${join(dir, "references.yaml")}`, "    requiredForRenewal: true", "",
    ].join("\n"));
    env = { SOFTHSM2_CONF: h.conf, FLEET_TEST_PIN: PIN };
    procs = await Promise.all(Array.from({ length: PROCESSES }, () => startCaProcess(cfg, env, [], { cli: cliBundleArgs() })));
    lb = await startHaproxy(procs.map((p) => ({ host: "127.0.0.1", port: p.port })));
    expect(await waitHealthy(lb.url, rootPem, PROCESSES)).toHaveLength(PROCESSES);
    // A deployment for the simulated devices, signed offline (the CA only checks its envelope).
    const { privateKey } = await jose.generateKeyPair("ES256", { extractable: true });
    const signer = await signerFromPrivateKey(JSON.stringify(await jose.exportJWK(privateKey)));
    const manifest: Manifest = {
      schemaVersion: 1, deploymentId: "fleet", version: 1, targets: ["fleet-*"],
      issuedAt: new Date(Date.now() - 60_000).toISOString(), expiresAt: new Date(Date.now() + 86_400_000).toISOString(),
      modules: { sensor: { image: `127.0.0.1:5000/edgetrust/sensor@${d("e")}`, options: { user: "1000:1000" }, restartPolicy: "always", startupOrder: 0 } },
    };
    const up = await call(direct(), "PUT", `${lb.url}/v1/deployments`, { headers: { authorization: `Bearer ${admin}` }, body: await signManifest(manifest, signer) });
    expect(up.status).toBe(201);
  }, 240_000);

  afterAll(async () => {
    await lb?.stop();
    await Promise.all(procs.map((p) => p.stop()));
    await store?.close();
    await pg?.stop();
    hsmCleanup?.();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("a line's rate limit is granted once fleet-wide, not once per process", async () => {
    // The limit counts in fixed windows of the minute, aligned to the epoch on every process (the store's
    // fleet_counters; see ca-service/shared/counters.ts), by this machine's clock. A round whose first request left
    // and whose last answer came back within one minute was counted in one window: only such a round proves the
    // limit. Under heavy load 45 fresh TLS connections can outlast what was left of the minute; then the round is
    // done again, on a fresh line, from the start of the next window.
    const minute = (t: number) => Math.floor(t / 60_000);
    let replies: Array<Awaited<ReturnType<typeof call>>> = [];
    for (let round = 0; ; round++) {
      const line = await call(direct(), "POST", `${lb.url}/v1/lines`, { headers: { authorization: `Bearer ${admin}` }, body: { name: `rate-limited line ${round}`, ratePerMinute: 15 } });
      expect(line.status).toBe(201);
      const msLeft = 60_000 - (Date.now() % 60_000);
      if (round > 0 || msLeft < 20_000) await new Promise((r) => setTimeout(r, msLeft + 200));
      const t0 = Date.now();
      replies = [];
      for (let i = 0; i < 45; i++) {
        // A new connection each time: HAProxy spreads them over the three processes.
        replies.push(await call(direct(), "GET", `${lb.url}/v1/enrollments`, { headers: { authorization: `Bearer ${String(line.json.token)}` } }));
      }
      const t1 = Date.now();
      if (minute(t0) === minute(t1)) break;
      process.stderr.write(`fleet: rate-limit round ${round} took ${t1 - t0} ms and crossed a minute boundary (granted ${replies.filter((r) => r.status === 200).length}); again in the next window\n`);
      if (round >= 2) throw new Error(`three rounds of 45 requests each crossed a minute boundary (the last took ${t1 - t0} ms)`);
    }
    expect(new Set(replies.map((r) => r.instance)).size).toBe(PROCESSES);
    expect(replies.filter((r) => r.status === 200)).toHaveLength(15);
    expect(replies.filter((r) => r.status === 429)).toHaveLength(30);
    expect(replies.find((r) => r.status === 429)?.json).toMatchObject({ code: "RATE_LIMITED" });
  }, 300_000);

  it("a nonce made by one process is checked by another — once: the same evidence replayed on a third is refused", async () => {
    const [p0, p1, p2] = procs as [CaProcess, CaProcess, CaProcess];
    const keys = (await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"])) as CryptoKeyPair;
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: "CN=fleet-nonce", keys, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } });
    expect((await call(direct(), "PUT", `${p0.url}/v1/admin/enrollments/fleet-nonce`, { headers: { authorization: `Bearer ${admin}` }, body: { dnsNames: [] } })).status).toBe(200);
    const issued = await call(direct(), "POST", `${p1.url}/v1/certificates`, { headers: { authorization: `Bearer ${admin}` }, body: { csr: csr.toString("pem"), profile: "device-identity", deviceId: "fleet-nonce" } });
    expect(issued.status).toBe(201);
    const nonce = await call(direct(), "POST", `${p0.url}/v1/attestation/nonce`);
    const cert = new x509.X509Certificate(String(issued.json.certificatePem));
    const evidence = await new jose.CompactSign(new TextEncoder().encode(JSON.stringify({
      eat_nonce: nonce.json.nonce, iat: Math.floor(Date.now() / 1000), sub: "edgetrust://fleet.edgetrust/devices/fleet-nonce",
      eat_profile: "tag:edgetrust.dev,2026:evidence/v1",
      measurements: { agent: d("a"), policy: d("b"), trustRoot: d("c"), manifest: { digest: d("f"), version: 1 }, modules: { sensor: { imageDigest: d("e"), manifestVersion: 1 } } },
    }))).setProtectedHeader({ alg: "ES256", typ: "eat+jwt", x5c: [Buffer.from(cert.rawData).toString("base64")] }).sign(keys.privateKey);
    const verified = await call(direct(), "POST", `${p1.url}/v1/attestation/verify`, { body: { evidence } });
    expect(verified.status).toBe(200);
    expect(verified.instance).not.toBe(nonce.instance);
    const replay = await call(direct(), "POST", `${p2.url}/v1/attestation/verify`, { body: { evidence } });
    expect(replay.instance).not.toBe(verified.instance);
    expect(replay.status).toBe(400);
    expect(replay.json).toMatchObject({ code: "ATTESTATION_NONCE_INVALID", detail: expect.stringMatching(/unknown or was already used/) as unknown });
  });

  it("a rollover made by another process is served by every process within seconds (NOTIFY, not the 30 s poll)", async () => {
    const stdout = await runCli(["ca", "rollover", "-c", cfg, "--json"], env, { cli: cliBundleArgs(), timeoutMs: 90_000 });
    newIssuer = String((JSON.parse(stdout) as { id: string }).id);
    // Counted from the CLI's exit (the rollover committed): its start under load is no part of what is bounded.
    const t0 = Date.now();
    const seen: number[] = [];
    for (const p of procs) {
      for (;;) {
        const cas = await call(direct(), "GET", `${p.url}/v1/cas`);
        const cur = (cas.json.cas as Array<{ id: string; current: boolean }> | undefined)?.find((c) => c.current);
        if (cur?.id === newIssuer) break;
        // A liveness bound, not a timing assertion: the safety-net poll alone would take 30 s.
        if (Date.now() - t0 > 25_000) throw new Error(`${p.url} still serves the old issuing CA`);
        await new Promise((r) => setTimeout(r, 100));
      }
      seen.push(Date.now() - t0);
      const metrics = await metricsText(p.url);
      expect(metrics).toMatch(/edgetrust_ca_fleet_events_total\{kind="cas"\} [1-9]/);
    }
    process.stderr.write(`fleet: rollover (CLI process) seen by all ${PROCESSES} processes after ${seen.map((s) => `${s} ms`).join(", ")} (after the CLI's exit)\n`);
  }, 60_000);

  let result: SimulationResult;
  it(`${DEVICES} simulated devices through HAProxy: every one attests across processes, nothing duplicated or lost, the audit chain verifies`, async () => {
    result = await simulateFleet({
      caUrl: lb.url, rootPem, devices: DEVICES, concurrency: 32, adminToken: admin, prefix: "fleet-a", revokePercent: 5, references: REFS,
      store: { databaseUrl: pg.url },
    });
    process.stderr.write(`fleet: ${JSON.stringify({ seconds: result.seconds, devicesPerSecond: result.devicesPerSecond, steps: result.steps, retries: result.retriesByCode })}\n`);
    if (result.errors > 0) process.stderr.write(`fleet: ${result.errors} device(s) failed: ${JSON.stringify({ errorsByCode: result.errorsByCode, sampleErrors: result.sampleErrors, store: result.store })}\n`);
    expect(result.sampleErrors).toEqual([]);
    expect(result).toMatchObject({
      devices: DEVICES, completed: DEVICES, registered: DEVICES, affirming: DEVICES, crossInstanceAttestations: DEVICES,
      deployments: DEVICES, reported: DEVICES, renewed: DEVICES, revoked: DEVICES / 20, refusedAsExpected: DEVICES / 20, errors: 0,
    });
    expect(result.instances).toHaveLength(PROCESSES);
    expect(result.store).toMatchObject({
      enrollments: DEVICES, registrations: DEVICES, certificates: 2 * DEVICES,
      duplicateCertificates: 0, lostCertificates: 0, undeliveredCertificates: 0, reports: DEVICES, duplicateReports: 0, lostReports: 0, auditChainOk: true,
    });
    // Every process issued from the rolled-over CA (registrations went round robin over all three).
    const issuers = await store.db.query<{ issuer_id: string; n: string }>("SELECT issuer_id, count(*) AS n FROM certificates WHERE device_id LIKE 'fleet-a-%' GROUP BY issuer_id");
    expect(issuers).toEqual([{ issuer_id: newIssuer, n: String(2 * DEVICES) }]);
  }, 1_200_000);

  it("PostgreSQL down: every route answers 503 STORAGE_UNAVAILABLE with Retry-After, never 500, and serves again once it is back", async () => {
    // One device through registration and attestation while the store is up: what it needs to call every route.
    const line = await call(direct(), "POST", `${lb.url}/v1/lines`, { headers: { authorization: `Bearer ${admin}` }, body: { name: "outage line", ratePerMinute: 1_000_000 } });
    expect(line.status).toBe(201);
    const lineAuth = { authorization: `Bearer ${String(line.json.token)}` };
    const keys = (await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"])) as CryptoKeyPair;
    const spki = Buffer.from(await crypto.subtle.exportKey("spki", keys.publicKey)).toString("base64");
    const keyPem = x509.PemConverter.encode(await crypto.subtle.exportKey("pkcs8", keys.privateKey), "PRIVATE KEY");
    const csr = (await x509.Pkcs10CertificateRequestGenerator.create({ name: "CN=fleet-outage", keys, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } })).toString("pem");
    const enroll = (id: string) => call(direct(), "PUT", `${lb.url}/v1/enrollments/${id}`, { headers: lineAuth, body: { attestation: "publicKey", credential: spki, edgeCa: false } });
    const register = (id: string) => call(direct(), "PUT", `${lb.url}/v1/registrations/${id}`, { headers: { "idempotency-key": `outage-${id}` }, body: { csr } });
    expect([200, 201]).toContain((await enroll("fleet-outage-0")).status);
    const reg = await register("fleet-outage-0");
    expect(reg.status).toBe(201);
    const identity = reg.json.identity as { certificatePem: string; chainPem: string };
    const device = () => new Agent({ keepAlive: false, ca: rootPem, cert: identity.chainPem, key: keyPem });
    const evidenceFor = (nonce: string) => new jose.CompactSign(new TextEncoder().encode(JSON.stringify({
      eat_nonce: nonce, iat: Math.floor(Date.now() / 1000), sub: "edgetrust://fleet.edgetrust/devices/fleet-outage-0", eat_profile: "tag:edgetrust.dev,2026:evidence/v1",
      measurements: { agent: d("a"), policy: d("b"), trustRoot: d("c"), manifest: { digest: d("f"), version: 1 }, modules: { sensor: { imageDigest: d("e"), manifestVersion: 1 } } },
    }))).setProtectedHeader({ alg: "ES256", typ: "eat+jwt", x5c: [Buffer.from(new x509.X509Certificate(identity.certificatePem).rawData).toString("base64")] }).sign(keys.privateKey);
    const nonce = await call(device(), "POST", `${lb.url}/v1/attestation/nonce`);
    const verified = await call(device(), "POST", `${lb.url}/v1/attestation/verify`, { body: { evidence: await evidenceFor(String(nonce.json.nonce)) } });
    expect(verified.status).toBe(200);
    const spareNonce = String((await call(device(), "POST", `${lb.url}/v1/attestation/nonce`)).json.nonce);
    const spareEvidence = await evidenceFor(spareNonce);

    await pg.halt();
    try {
      const routes: Array<[string, () => Promise<Awaited<ReturnType<typeof call>>>]> = [
        ["enroll", () => enroll("fleet-outage-1")],
        ["register", () => register("fleet-outage-0")],
        ["attest: nonce", () => call(device(), "POST", `${lb.url}/v1/attestation/nonce`)],
        ["attest: verify", () => call(device(), "POST", `${lb.url}/v1/attestation/verify`, { body: { evidence: spareEvidence } })],
        ["deployment", () => call(device(), "GET", `${lb.url}/v1/device/deployment`)],
        ["report", () => call(device(), "POST", `${lb.url}/v1/device/reports`, { headers: { "idempotency-key": "outage-report" }, body: { at: new Date().toISOString(), kind: "last-known-good", deviceId: "fleet-outage-0" } })],
        ["renew", () => call(device(), "POST", `${lb.url}/v1/renew`, { headers: { "x-edgetrust-attestation": String(verified.json.result) }, body: { csr } })],
        ["deployments (admin)", () => call(direct(), "GET", `${lb.url}/v1/deployments`, { headers: { authorization: `Bearer ${admin}` } })],
        ["lines (admin)", () => call(direct(), "POST", `${lb.url}/v1/lines`, { headers: { authorization: `Bearer ${admin}` }, body: { name: "during the outage" } })],
      ];
      const answers: Record<string, string> = {};
      for (const [name, fn] of routes) {
        const r = await fn();
        answers[name] = `${r.status} ${String(r.json.code)} retry-after=${String(r.retryAfter)}`;
      }
      expect(answers).toEqual(Object.fromEntries(routes.map(([name]) => [name, "503 STORAGE_UNAVAILABLE retry-after=2"])));
    } finally {
      await pg.start();
    }

    // Every route answers again once the store is back (the restart under live devices is the chaos test's).
    const back = await register("fleet-outage-0");
    expect([200, 201]).toContain(back.status);
    expect((back.json.identity as { certificatePem: string }).certificatePem).toBe(identity.certificatePem);
  }, 120_000);

  it("`fleet simulate --hsm`: device keys made in a SoftHSM token of the simulator's own; CSR, evidence and mTLS through the token", async () => {
    writeFileSync(join(dir, "root.pem"), rootPem);
    const stdout = await runCli([
      "fleet", "simulate", "--ca-url", lb.url, "--ca-cert", join(dir, "root.pem"), "--references", join(dir, "references.yaml"), "--database-url", pg.url,
      "--devices", "4", "--concurrency", "4", "--revoke-percent", "25", "--prefix", "fleet-h", "--hsm", "--json", "--no-progress",
    ], { ...env, ...pkcs11EngineEnvironment(), EDGETRUST_ADMIN_TOKEN: admin }, { cli: cliBundleArgs(), timeoutMs: 110_000 });
    const r = JSON.parse(stdout) as SimulationResult;
    expect(r.sampleErrors).toEqual([]);
    expect(r).toMatchObject({ keys: "softhsm", devices: 4, completed: 4, affirming: 4, crossInstanceAttestations: 4, reported: 4, renewed: 4, revoked: 1, refusedAsExpected: 1, errors: 0 });
    expect(r.store).toMatchObject({ certificates: 8, duplicateCertificates: 0, lostCertificates: 0, auditChainOk: true });
  }, 120_000);

  it(`chaos: ${CHAOS_DEVICES} devices while one CA process is killed (-9), PostgreSQL restarts and HAProxy reloads — every device completes`, async () => {
    const events: string[] = [];
    let step = 0;
    const chaos: Promise<void>[] = [];
    // A chaos step that fails (pg_ctl restart timing out) is reported with the rest, not instead of it.
    const chaosFailures: string[] = [];
    const inject = (what: string, p: Promise<void>) => chaos.push(p.catch((e: unknown) => { chaosFailures.push(`${what}: ${(e as Error).message}`); }));
    const victim = procs[PROCESSES - 1] as CaProcess;
    const r = await simulateFleet({
      caUrl: lb.url, rootPem, devices: CHAOS_DEVICES, concurrency: 32, adminToken: admin, prefix: "fleet-b", revokePercent: 5, references: REFS,
      store: { databaseUrl: pg.url },
      onProgress: (done) => {
        const at = done / CHAOS_DEVICES;
        if (step === 0 && at >= 0.15) {
          step = 1;
          events.push(`kill -9 at ${done}`);
          // Out of the fleet the moment it dies, whatever this case's outcome: the SIGTERM case stops the survivors only.
          procs = procs.filter((p) => p !== victim);
          inject("kill -9", victim.kill9());
        }
        else if (step === 1 && at >= 0.35) { step = 2; events.push(`PostgreSQL restart at ${done}`); inject("PostgreSQL restart", pg.restart()); }
        else if (step === 2 && at >= 0.6) { step = 3; events.push(`HAProxy reload at ${done}`); inject("HAProxy reload", lb.reload()); }
      },
    });
    await Promise.all(chaos);
    process.stderr.write(`fleet chaos: ${events.join("; ")}; ${JSON.stringify({ seconds: r.seconds, retries: r.retriesByCode, store: r.store })}\n`);
    try {
      expect(chaosFailures).toEqual([]);
      expect(events).toHaveLength(3);
      expect(r.sampleErrors).toEqual([]);
      expect(r).toMatchObject({ devices: CHAOS_DEVICES, completed: CHAOS_DEVICES, registered: CHAOS_DEVICES, renewed: CHAOS_DEVICES, reported: CHAOS_DEVICES, refusedAsExpected: CHAOS_DEVICES / 20, errors: 0 });
      expect(Object.values(r.retriesByCode).reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
      // Whatever broke, no answer was a bare 500, and every 503 said when to come back.
      expect(Object.keys(r.retriesByCode).filter((k) => /:(INTERNAL|HTTP_500)$/.test(k))).toEqual([]);
      expect(r.unavailableWithoutRetryAfter).toEqual({});
      const s = r.store;
      expect(s).toMatchObject({ lostCertificates: 0, duplicateReports: 0, lostReports: 0, reports: CHAOS_DEVICES, auditChainOk: true, registrations: CHAOS_DEVICES });
      // A certificate beyond one per step can only be one a killed process committed but never delivered.
      expect(s?.duplicateCertificates).toBe(s?.undeliveredCertificates);
      expect(s?.undeliveredCertificates ?? 0).toBeLessThanOrEqual(32);
    } catch (e) {
      // The next CI log must say what failed: the whole result, and what the surviving processes logged (warn and up).
      process.stderr.write(`fleet chaos FAILED: ${JSON.stringify({ events, chaosFailures, result: r })}\n${procs.map((p) => `--- ${p.url} log (last 4 kB):\n${p.log()}`).join("\n")}\n`);
      throw e;
    }
  }, 1_200_000);

  it("SIGTERM stops the surviving processes gracefully (exit 0)", async () => {
    const codes = await Promise.all(procs.map((p) => p.stop()));
    expect(codes, procs.map((p) => p.log()).join("\n---\n")).toEqual(procs.map(() => 0));
  });
});
