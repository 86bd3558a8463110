import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { deriveDeviceKey } from "./credentials.js";
import { csrPem, ecKeys, factoryCa, run, startEnrollmentCa, type EnrollmentCa, type FactoryCa } from "./test-fixtures.js";

/**
 * The unmodified Azure IoT provisioning device SDK (azure-iot-provisioning-device + -http, X.509 and symmetric-key
 * security clients) registers against the DPS-compatible route. The SDK's HTTP transport always connects to port 443,
 * so the CA listens on 127.0.0.1:443 (tests run as root) and the child trusts the test root via NODE_EXTRA_CA_CERTS.
 */
const CHILD = join(import.meta.dirname, "testdata", "dps-child.ts");
const ID_SCOPE = "0ne00EDGE01";

async function port443Free(): Promise<string | undefined> {
  if (typeof process.getuid === "function" && process.getuid() !== 0) return "not root: cannot listen on 127.0.0.1:443";
  return new Promise((resolve) => {
    const s = createServer();
    s.once("error", (e: NodeJS.ErrnoException) => resolve(`127.0.0.1:443 unavailable (${e.code ?? e.message})`));
    s.listen(443, "127.0.0.1", () => s.close(() => resolve(undefined)));
  });
}

const skipReason = await port443Free();
if (skipReason) process.stderr.write(`ca-service DPS interop: skipped: ${skipReason}\n`);

interface ChildOut {
  ok: boolean;
  result?: { registrationId: string; assignedHub: string; deviceId: string; status: string; payload: { identity: { certificatePem: string }; edgeCa: { certificatePem: string } | null; trustBundlePem: string; enrollment: { kind: string; id: string } } };
  status?: number;
  message?: string;
}

describe.skipIf(Boolean(skipReason))("Azure provisioning SDK against the DPS-compatible route", () => {
  let e: EnrollmentCa;
  let factory: FactoryCa;
  let lineToken: string;

  async function sdk(spec: Record<string, unknown>): Promise<ChildOut> {
    const r = await run(process.execPath, ["--import", "tsx", CHILD], {
      env: { ...process.env, NODE_EXTRA_CA_CERTS: join(e.dir, "root.pem"), DPS_SPEC: JSON.stringify({ host: "127.0.0.1", idScope: ID_SCOPE, ...spec }) },
      timeoutMs: 60_000,
    });
    const line = r.stdout.trim().split("\n").pop() ?? "";
    expect(line, r.stderr).not.toBe("");
    return JSON.parse(line) as ChildOut;
  }

  beforeAll(async () => {
    e = await startEnrollmentCa({ port: 443 });
    const l = await e.call("POST", "/v1/lines", { token: e.t.init.adminToken, body: { name: "dps line" } });
    lineToken = String(l.json().token);
    factory = await factoryCa("DPS Factory CA");
    writeFileSync(join(e.dir, "factory.pem"), factory.pem);
    expect((await e.call("PUT", "/v1/enrollment-groups/dps-x509", { token: lineToken, body: { attestation: "x509CA", caCertPem: factory.pem, labels: { assignedHub: "hub.dps.test" } } })).status).toBe(201);
  });

  afterAll(async () => {
    await e?.close();
  });

  it("X.509 attestation: bootstrap cert as TLS client cert; identity + Edge CA come back in registrationState.payload", async () => {
    const boot = await factory.issue("dps-x509-1");
    const dev = await ecKeys();
    const edge = await ecKeys();
    const out = await sdk({ mode: "x509", registrationId: "dps-x509-1", cert: boot.certPem, key: boot.keyPem, payload: { csr: await csrPem(dev), edgeCaCsr: await csrPem(edge) } });
    expect(out.ok, JSON.stringify(out)).toBe(true);
    const r = out.result;
    expect(r).toMatchObject({ registrationId: "dps-x509-1", deviceId: "dps-x509-1", status: "assigned", assignedHub: "hub.dps.test" });
    const id = new x509.X509Certificate(r?.payload.identity.certificatePem ?? "");
    expect(Buffer.from(id.publicKey.rawData).equals(Buffer.from(await crypto.subtle.exportKey("spki", dev.publicKey)))).toBe(true);
    expect(r?.payload.edgeCa?.certificatePem).toContain("BEGIN CERTIFICATE");
    expect(r?.payload.trustBundlePem).toContain(e.rootPem.trim().split("\n")[1]);
    expect(r?.payload.enrollment).toMatchObject({ kind: "group", id: "dps-x509" });
  });

  it("symmetric-key attestation: SAS from the derived key; a key derived for another registration id is refused", async () => {
    const g = await e.call("PUT", "/v1/enrollment-groups/dps-sym", { token: lineToken, body: { attestation: "symmetricKey", edgeCa: false } });
    const groupKey = String(g.json().groupKey);
    const dev = await ecKeys();
    const out = await sdk({ mode: "symmetricKey", registrationId: "dps-sym-1", symmetricKey: deriveDeviceKey(groupKey, "dps-sym-1"), payload: { csr: await csrPem(dev) } });
    expect(out.ok, JSON.stringify(out)).toBe(true);
    expect(out.result).toMatchObject({ deviceId: "dps-sym-1", status: "assigned", assignedHub: "localhost" });
    expect(out.result?.payload.edgeCa).toBeNull();

    const stolen = await sdk({ mode: "symmetricKey", registrationId: "dps-sym-2", symmetricKey: deriveDeviceKey(groupKey, "dps-sym-1"), payload: { csr: await csrPem(dev) } });
    expect(stolen.ok).toBe(false);
    expect(stolen.status).toBe(401);
  });

  it("an X.509 bootstrap certificate from an unconfigured CA is refused through the SDK", async () => {
    const rogue = await factoryCa("Rogue CA");
    const boot = await rogue.issue("dps-x509-2");
    const out = await sdk({ mode: "x509", registrationId: "dps-x509-2", cert: boot.certPem, key: boot.keyPem, payload: { csr: await csrPem(await ecKeys()), edgeCaCsr: await csrPem(await ecKeys()) } });
    expect(out.ok).toBe(false);
    expect(out.status).toBe(401);
  });
});
