import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { stringify } from "yaml";
import { join } from "node:path";
import * as jose from "jose";
import { Value } from "@sinclair/typebox/value";
import { HsmConfig, SOFTHSM_MODULE, type KeyStore } from "../hsm/index.js";
import { DeviceConfig } from "./config.js";
import { DeviceDaemon, identityFromConfig } from "./daemon.js";
import { AttestationVerifier, referencesFromPolicy, type AttestationConfig } from "../ca-service/index.js";
import { makeManifest, makeSigner } from "../policy/fixtures.js";
import { signManifest } from "../policy/index.js";
import { signEvidence, signJwsWithKeyStore, type Measurements } from "./evidence.js";
import type { IdentityState } from "./state.js";
import { ManagementClient } from "../identity-api/index.js";
import { cliBundleArgs } from "../test/fixtures/cli-bundle.js";
import { makeTokens, runDaemon, silentLogger, startCa, tmp, TRUST_DOMAIN, type RunningCa, type Tokens } from "./test-helpers.js";

const DEVICE = "dev-att";
const d = (c: string): string => `sha256:${c.repeat(64)}`;
const GOOD: Measurements = {
  agent: d("a"), policy: d("b"), trustRoot: d("c"), manifest: { digest: d("e"), version: 7 },
  modules: { sensor: { imageDigest: d("1"), manifestVersion: 7 }, filter: { imageDigest: d("2"), manifestVersion: 7 } },
};

// Long enough for a spawned CLI or daemon to get a nonce, sign with the HSM and post on a loaded machine: a nonce that
// runs out in the middle of a test fails it by chance. The expiry test makes its nonce already old instead.
const NONCE_TTL_S = 60;

describe("remote attestation: device evidence (SoftHSM key) → ca-service verifier → EAR result", () => {
  let tokens: Tokens;
  let ca: RunningCa;
  let keys: KeyStore;
  let state: IdentityState;
  let cfg: DeviceConfig;
  let refs: string;
  let dir: string;
  let attestation: AttestationConfig;
  const hsm: HsmConfig = { ...(Value.Default(HsmConfig, {}) as HsmConfig), module: SOFTHSM_MODULE, tokenLabel: "device" };

  beforeAll(async () => {
    tokens = await makeTokens();
    dir = tmp("et-att-");
    refs = join(dir, "reference-values.yaml");
    writeFileSync(refs, [
      `agent: ["${d("a")}"]`, `policy: ["${d("b")}"]`, `trustRoot: ["${d("c")}"]`,
      `manifest: { minVersion: 5, digests: ["${d("e")}"] }`,
      `modules: { sensor: ["${d("1")}"], filter: ["${d("2")}"] }`, "",
    ].join("\n"));
    attestation = { policyFile: "", referenceFile: refs, nonceTtlSeconds: NONCE_TTL_S, resultTtlSeconds: 600, requiredForRenewal: true };
    ca = await startCa(tokens, { deviceId: DEVICE, config: { attestation } });
    keys = await tokens.openDevice();
    writeFileSync(join(dir, "ca-trust.pem"), ca.trustPem);
    cfg = {
      ...(Value.Default(DeviceConfig, {}) as DeviceConfig), deviceId: DEVICE, trustDomain: TRUST_DOMAIN, stateDir: join(dir, "identity"), caUrl: ca.url, caTrustFile: join(dir, "ca-trust.pem"),
      managementSocket: join(dir, "mgmt.sock"), workloadDir: join(dir, "modules"), hubServerCertFile: join(dir, "hub", "server.chain.pem"),
      measurements: { agentFile: join(dir, "agent.bin"), policyFile: join(dir, "policy.yaml"), trustRootFile: join(dir, "trust-root.json"), manifestFile: join(dir, "manifest.json") },
    };
    state = await identityFromConfig(cfg, hsm, { keys, log: silentLogger() }).provision(ca.adminToken);
  });

  afterAll(async () => {
    await keys?.close();
    await ca?.close();
    await tokens?.caKeys.close();
    tokens?.hsm.cleanup();
  });

  const nonce = async (): Promise<string> => {
    const r = await ca.server.app.inject({ method: "POST", url: "/v1/attestation/nonce", payload: {} });
    expect(r.statusCode).toBe(200);
    return (r.json() as { nonce: string }).nonce;
  };
  const evidence = async (n: string, measurements: Measurements = GOOD): Promise<string> => signEvidence({
    store: keys, keyLabel: state.keys.device, deviceUri: `edgetrust://${TRUST_DOMAIN}/devices/${DEVICE}`, chainPem: [state.device.cert, ...state.device.chain], nonce: n, measurements,
  });
  const verify = (ev: string) => ca.server.app.inject({ method: "POST", url: "/v1/attestation/verify", payload: { evidence: ev } });

  it("evidence matching the reference values → affirming; the EAR result is a JWT signed by the CA (verified with jose)", async () => {
    const n = await nonce();
    const r = await verify(await evidence(n));
    expect(r.statusCode, r.body).toBe(200);
    const body = r.json() as { status: string; result: string; claims: Record<string, { status: string }> };
    expect(body.status).toBe("affirming");
    expect(Object.values(body.claims).every((c) => c.status === "affirming")).toBe(true);
    const issuing = ca.ca.current().cert.toString("pem");
    const { payload, protectedHeader } = await jose.jwtVerify(body.result, await jose.importX509(issuing, "ES256"), { typ: "ear+jwt" });
    expect(protectedHeader.alg).toBe("ES256");
    expect(payload).toMatchObject({ "ear.status": "affirming", eat_nonce: n, sub: `edgetrust://${TRUST_DOMAIN}/devices/${DEVICE}` });
  });

  it("a wrong module digest → contraindicated, with the reason on that claim", async () => {
    const r = await verify(await evidence(await nonce(), { ...GOOD, modules: { ...GOOD.modules, sensor: { imageDigest: d("9"), manifestVersion: 7 } } }));
    expect(r.statusCode).toBe(200);
    const body = r.json() as { status: string; claims: Record<string, { status: string; reason?: string }> };
    expect(body.status).toBe("contraindicated");
    expect(body.claims["module:sensor"]).toMatchObject({ status: "contraindicated", reason: `module sensor runs image ${d("9")}, not a reference digest`, measured: d("9") });
    expect(body.claims["module:filter"]?.status).toBe("affirming");
  });

  it("a replayed nonce is refused", async () => {
    const ev = await evidence(await nonce());
    expect((await verify(ev)).statusCode).toBe(200);
    const again = await verify(ev);
    expect(again.statusCode).toBe(400);
    expect(again.json()).toMatchObject({ code: "ATTESTATION_NONCE_INVALID" });
  });

  it("a nonce lives nonceTtlSeconds; an expired nonce is refused", async () => {
    const before = Date.now();
    const issued = await ca.server.app.inject({ method: "POST", url: "/v1/attestation/nonce", payload: {} });
    const after = Date.now();
    const expiresAt = Date.parse((issued.json() as { expiresAt: string }).expiresAt);
    expect(expiresAt).toBeGreaterThanOrEqual(before + NONCE_TTL_S * 1000);
    expect(expiresAt).toBeLessThanOrEqual(after + NONCE_TTL_S * 1000);
    // Nonces live in the store: one issued by a verifier whose clock is a lifetime (and a second) behind is already
    // expired for the route's verifier, on the real clock — no sleeping through a lifetime.
    const behind = new AttestationVerifier(ca.ca, ca.store, attestation, undefined, () => Date.now() - (NONCE_TTL_S + 1) * 1000);
    const n = (await behind.nonce()).nonce;
    const r = await verify(await evidence(n));
    expect(r.statusCode).toBe(400);
    expect(r.json()).toMatchObject({ code: "ATTESTATION_NONCE_INVALID", detail: expect.stringMatching(/expired/) });
  });

  it("evidence signed by another key (even in the same HSM) under the device certificate is refused", async () => {
    await keys.generateKey("rogue", "EC-P256");
    const x5c = [state.device.cert].map((p) => p.replace(/-----(BEGIN|END) CERTIFICATE-----/g, "").replace(/\s+/g, ""));
    const n = await nonce();
    const forged = await signJwsWithKeyStore(keys, "rogue", { typ: "eat+jwt", x5c }, {
      eat_nonce: n, iat: Math.floor(Date.now() / 1000), sub: `edgetrust://${TRUST_DOMAIN}/devices/${DEVICE}`, eat_profile: "tag:edgetrust.dev,2026:evidence/v1", measurements: GOOD,
    });
    const r = await verify(forged);
    expect(r.statusCode).toBe(400);
    expect(r.json()).toMatchObject({ code: "ATTESTATION_EVIDENCE_INVALID", detail: expect.stringMatching(/signature/) });
  });

  it("a tampered JWT (payload changed after signing) is refused", async () => {
    const n = await nonce();
    const bad = await evidence(n, { ...GOOD, modules: { sensor: { imageDigest: d("9"), manifestVersion: 7 } } });
    const [h, p, s] = bad.split(".");
    const claims = JSON.parse(new TextDecoder().decode(jose.base64url.decode(p ?? ""))) as { measurements: Measurements };
    claims.measurements.modules = GOOD.modules;
    const r = await verify(`${h}.${jose.base64url.encode(JSON.stringify(claims))}.${s}`);
    expect(r.statusCode).toBe(400);
    expect(r.json()).toMatchObject({ code: "ATTESTATION_EVIDENCE_INVALID" });
  });

  it("`edgetrust device attest` (CLI) gets a nonce, has the running daemon sign evidence of the real files, and prints the CA's verdict", async () => {
    const files: Record<string, string> = { "agent.bin": "agent build 1", "policy.yaml": "version: 1\n", "trust-root.json": "{}", "manifest.json": JSON.stringify({ version: 9, modules: {} }) };
    for (const [f, t] of Object.entries(files)) writeFileSync(join(dir, f), t);
    const originalRefs = readFileSync(refs, "utf8");
    const h = (f: string): string => `sha256:${createHash("sha256").update(readFileSync(join(dir, f))).digest("hex")}`;
    writeFileSync(refs, stringify({ agent: [h("agent.bin")], policy: [h("policy.yaml")], trustRoot: [h("trust-root.json")], manifest: { minVersion: 9, digests: [h("manifest.json")] }, modules: {} }));
    const daemon = await DeviceDaemon.start({ config: cfg, hsm, keys, log: silentLogger() });
    try {
      const configFile = join(dir, "edgetrust.yaml");
      writeFileSync(configFile, stringify({ log: { level: "warn" }, hsm: { ...hsm, pinFile: tokens.pinFile }, device: cfg }));
      const run = (): Promise<{ code: number | null; out: string; err: string }> => new Promise((resolve) => {
        const p = spawn(process.execPath, [...cliBundleArgs(), "device", "attest", "-c", configFile, "--json"], { stdio: ["ignore", "pipe", "pipe"] });
        let out = "";
        let err = "";
        p.stdout.on("data", (b: Buffer) => { out += b.toString(); });
        p.stderr.on("data", (b: Buffer) => { err += b.toString(); });
        p.on("exit", (code) => resolve({ code, out, err }));
      });
      const ok = await run();
      expect(ok.code, ok.err).toBe(0);
      expect(JSON.parse(ok.out)).toMatchObject({ status: "affirming", deviceId: DEVICE });
      // The policy file changes on the device: the next attestation says which claim is wrong, and the CLI fails.
      writeFileSync(join(dir, "policy.yaml"), "version: 1\nmode: audit\n");
      const bad = await run();
      expect(bad.code).toBe(1);
      expect(JSON.parse(bad.out)).toMatchObject({ status: "contraindicated", claims: { policy: { status: "contraindicated" } } });
    } finally {
      await daemon.stop();
      writeFileSync(refs, originalRefs);
    }
  });

  it("with the CA switch on, renewal needs a fresh affirming result — after authentication: without the current certificate (mTLS) every attempt is 401 first", async () => {
    const csr = "-----BEGIN CERTIFICATE REQUEST-----\n" + "A".repeat(80) + "\n-----END CERTIFICATE REQUEST-----\n";
    // inject has no TLS socket, so no client certificate: authentication (onRequest) refuses before the attestation
    // gate and before the body; the gate itself (contraindicated → 403 over real mTLS) is the daemon test below.
    const none = await ca.server.app.inject({ method: "POST", url: "/v1/renew", payload: { csr } });
    expect(none.statusCode).toBe(401);
    const bad = (await verify(await evidence(await nonce(), { ...GOOD, agent: d("f") }))).json() as { result: string };
    expect(bad.result).toBeTypeOf("string");
    const refused = await ca.server.app.inject({ method: "POST", url: "/v1/renew", payload: { csr }, headers: { "x-edgetrust-attestation": bad.result } });
    expect(refused.statusCode).toBe(401);
    const good = (await verify(await evidence(await nonce()))).json() as { result: string };
    const passed = await ca.server.app.inject({ method: "POST", url: "/v1/renew", payload: { csr }, headers: { "x-edgetrust-attestation": good.result } });
    expect(passed.statusCode).toBe(401);
  });

  it("a daemon configured to attest before renewing gets its renewal through the CA's gate; with a contraindicated policy the CA refuses it", async () => {
    const h = (f: string): string => `sha256:${createHash("sha256").update(readFileSync(join(dir, f))).digest("hex")}`;
    writeFileSync(join(dir, "policy.yaml"), "version: 1\n");
    writeFileSync(refs, stringify({ agent: [h("agent.bin")], policy: [h("policy.yaml")], trustRoot: [h("trust-root.json")], manifest: { minVersion: 9, digests: [h("manifest.json")] }, modules: {} }));
    const configFile = join(dir, "renew-attested.yaml");
    writeFileSync(configFile, stringify({ log: { level: "info" }, hsm: { ...hsm, pinFile: tokens.pinFile, engine: "pkcs11" }, device: { ...cfg, requireAttestationForRenewal: true } }));
    const daemon = runDaemon(configFile, { OPENSSL_CONF: tokens.opensslConf, SOFTHSM2_CONF: tokens.hsm.conf });
    try {
      await daemon.waitLog((l) => l.msg === "device identity daemon running", "daemon start");
      const client = new ManagementClient(cfg.managementSocket);
      const st = await client.renew("device", false) as { generation: number };
      expect(st.generation).toBe(state.generation + 1);
      writeFileSync(join(dir, "policy.yaml"), "version: 1\nmode: audit\n");
      await expect(client.renew("device", false)).rejects.toMatchObject({ code: "FORBIDDEN", message: expect.stringMatching(/affirming attestation result, got contraindicated/) });
    } finally {
      daemon.proc.kill("SIGTERM");
      await daemon.exit;
    }
  });
});

describe("reference values from the policy's attestation section (ca.attestation.policyFile)", () => {
  let tokens: Tokens;
  let ca: RunningCa;
  let keys: KeyStore;
  let state: IdentityState;
  let dir: string;
  let policyFile: string;
  let good: Measurements;
  const PINNED = `sha256:${"a".repeat(64)}`;
  const h = (b: string | Buffer): string => `sha256:${createHash("sha256").update(b).digest("hex")}`;
  const POLICY = (attestation: string): string => [
    "version: 1", "mode: enforce", "trust:", "  trustRoot: trust-root.json", "images:", "  registries: [\"127.0.0.1:5000\"]",
    "modules:", "  allow: [\"sensor\", \"mod*\"]", "attestation:", attestation, "",
  ].join("\n");
  const ATTESTATION = [
    `  agent: ["${d("a")}"]`,
    "  policy: self",
    "  trustRoot: policy",
    "  manifest: { minVersion: 2, digests: deployments, absent: affirming }",
    "  modules: manifest",
    "  mismatch: { agent: warning }",
  ].join("\n");

  beforeAll(async () => {
    tokens = await makeTokens();
    dir = tmp("et-att-policy-");
    policyFile = join(dir, "policy.yaml");
    writeFileSync(join(dir, "trust-root.json"), readFileSync(join(import.meta.dirname, "../policy/examples/trust-root.json")));
    writeFileSync(policyFile, POLICY(ATTESTATION));
    ca = await startCa(tokens, { deviceId: DEVICE, config: { attestation: { policyFile, referenceFile: "", nonceTtlSeconds: 60, resultTtlSeconds: 600, requiredForRenewal: false } } });
    keys = await tokens.openDevice();
    writeFileSync(join(dir, "ca-trust.pem"), ca.trustPem);
    const cfg: DeviceConfig = {
      ...(Value.Default(DeviceConfig, {}) as DeviceConfig), deviceId: DEVICE, trustDomain: TRUST_DOMAIN, stateDir: join(dir, "identity"), caUrl: ca.url, caTrustFile: join(dir, "ca-trust.pem"),
      managementSocket: join(dir, "mgmt.sock"), workloadDir: join(dir, "modules"), hubServerCertFile: join(dir, "hub", "server.chain.pem"),
    };
    const hsm: HsmConfig = { ...(Value.Default(HsmConfig, {}) as HsmConfig), module: SOFTHSM_MODULE, tokenLabel: "device" };
    state = await identityFromConfig(cfg, hsm, { keys, log: silentLogger() }).provision(ca.adminToken);
    // The security team uploads a signed v3 deployment; the device's accepted manifest is the JWS the CA serves.
    const jws = await signManifest(makeManifest({ version: 3, targets: [DEVICE] }), await makeSigner("ES256"));
    const up = await ca.server.app.inject({ method: "PUT", url: "/v1/deployments", headers: { authorization: `Bearer ${ca.adminToken}` }, payload: jws });
    expect(up.statusCode, up.body).toBe(201);
    const served = (await ca.store.db.query<{ jws: string }>("SELECT jws FROM deployments WHERE version = 3"))[0]?.jws ?? "";
    good = {
      agent: d("a"), policy: h(readFileSync(policyFile)), trustRoot: h(readFileSync(join(dir, "trust-root.json"))), manifest: { digest: h(served), version: 3 },
      modules: { sensor: { imageDigest: PINNED, manifestVersion: 3 }, mod1: { imageDigest: PINNED, manifestVersion: 3 } },
    };
  });

  afterAll(async () => {
    await keys?.close();
    await ca?.close();
    await tokens?.caKeys.close();
    tokens?.hsm.cleanup();
  });

  type Claims = Record<string, { status: string; reason: string; measured?: string; reference?: string }>;
  const attest = async (m: Measurements): Promise<{ status: string; result: string; claims: Claims }> => {
    const n = ((await ca.server.app.inject({ method: "POST", url: "/v1/attestation/nonce", payload: {} })).json() as { nonce: string }).nonce;
    const ev = await signEvidence({ store: keys, keyLabel: state.keys.device, deviceUri: `edgetrust://${TRUST_DOMAIN}/devices/${DEVICE}`, chainPem: [state.device.cert, ...state.device.chain], nonce: n, measurements: m });
    const r = await ca.server.app.inject({ method: "POST", url: "/v1/attestation/verify", payload: { evidence: ev } });
    expect(r.statusCode, r.body).toBe(200);
    return r.json() as { status: string; result: string; claims: Claims };
  };

  it("matching evidence → affirming; every claim listed with its reason and the policy rule that decided it (also in the signed EAR)", async () => {
    const r = await attest(good);
    expect(r.status).toBe("affirming");
    expect(Object.keys(r.claims).sort()).toEqual(["agent", "manifest", "module:mod1", "module:sensor", "policy", "trustRoot"]);
    for (const c of Object.values(r.claims)) {
      expect(c.status).toBe("affirming");
      expect(c.reason).not.toBe("");
      expect(c.reference).toMatch(new RegExp(`^policy ${policyFile.replace(/[.]/g, "\\.")}: attestation\\.`));
    }
    expect(r.claims.policy?.reference).toMatch(/attestation\.policy: self/);
    expect(r.claims.manifest?.reason).toMatch(/deployment dep-1 v3 as this CA serves it/);
    expect(r.claims["module:sensor"]?.reason).toMatch(/runs the image digest dep-1 v3 pins/);
    const ear = jose.decodeJwt(r.result) as { submods: Record<string, { "ear.edgetrust.appraisal": Claims; "ear.edgetrust.reference": string }> };
    expect(ear.submods[DEVICE]?.["ear.edgetrust.appraisal"]).toEqual(r.claims);
    expect(ear.submods[DEVICE]?.["ear.edgetrust.reference"]).toBe(`policy ${policyFile}`);
  });

  it("a module running a digest the attested manifest does not pin → contraindicated, with the reason", async () => {
    const r = await attest({ ...good, modules: { ...good.modules, sensor: { imageDigest: d("9"), manifestVersion: 3 } } });
    expect(r.status).toBe("contraindicated");
    expect(r.claims["module:sensor"]).toMatchObject({ status: "contraindicated", reason: `module sensor runs image ${d("9").slice(0, 19)}…, the manifest pins ${PINNED.slice(0, 19)}…`, measured: d("9") });
    expect(r.claims["module:mod1"]?.status).toBe("affirming");
  });

  it("an unknown agent build is only a warning (mismatch: {agent: warning}); an unknown manifest or a changed policy file is contraindicated", async () => {
    const w = await attest({ ...good, agent: d("f") });
    expect(w.status).toBe("warning");
    expect(w.claims.agent).toMatchObject({ status: "warning", reason: expect.stringMatching(/agent digest sha256:ffff.* is not a reference value/) });
    const m = await attest({ ...good, manifest: { digest: d("e"), version: 3 } });
    expect(m.status).toBe("contraindicated");
    expect(m.claims.manifest?.reason).toMatch(/is not a deployment this CA serves/);
    expect(m.claims["module:sensor"]?.reason).toMatch(/unknown to this CA/);
    const p = await attest({ ...good, policy: h("version: 1\nmode: audit\n") });
    expect(p.status).toBe("contraindicated");
    expect(p.claims.policy?.reason).toMatch(/policy digest .* is not a reference value/);
    // A device with no deployment yet: `absent: affirming`.
    const fresh = await attest({ ...good, manifest: { digest: "sha256:absent", version: 0 }, modules: {} });
    expect(fresh.status).toBe("affirming");
    expect(fresh.claims.manifest?.reason).toMatch(/no deployment accepted yet/);
  });

  it("a policy with a bad attestation section is refused with file:line:col, at verifier start", () => {
    const bad = join(dir, "bad-policy.yaml");
    writeFileSync(bad, POLICY(["  policy: this-file", "  modules: { sensor: [\"sha256:abc\"] }", "  mismatch: { agent: ignore }"].join("\n")));
    expect(() => referencesFromPolicy(bad)).toThrow(/bad-policy\.yaml:10:11: \/attestation\/policy: /);
    let err: Error | undefined;
    try {
      new AttestationVerifier(ca.ca, ca.store, { policyFile: bad, referenceFile: "", nonceTtlSeconds: 60, resultTtlSeconds: 600, requiredForRenewal: false });
    } catch (e) {
      err = e as Error;
    }
    expect(err).toMatchObject({ code: "POLICY_INVALID" });
    const lines = (err?.message ?? "").split("\n");
    expect(lines.some((l) => /bad-policy\.yaml:11:\d+: \/attestation\/modules\/sensor\/0: does not match pattern/.test(l))).toBe(true);
    expect(lines.some((l) => /bad-policy\.yaml:12:\d+: \/attestation\/mismatch\/agent: /.test(l))).toBe(true);
    // Both policyFile and referenceFile: a configuration error.
    expect(() => new AttestationVerifier(ca.ca, ca.store, { policyFile, referenceFile: policyFile, nonceTtlSeconds: 60, resultTtlSeconds: 600, requiredForRenewal: false })).toThrow(/not both/);
  });
});
