import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { execFileSync, execFile } from "node:child_process";
import { promisify } from "node:util";
import { mkdtempSync, writeFileSync, readFileSync, statSync, existsSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { createLogger } from "../common/index.js";
import { DockerClient, ensureImage, type ResolvedImage } from "../engine/index.js";
import { createModuleContainer } from "../edge-agent/index.js";
import { parseModuleAttestation, certificateIdentity } from "../pki/index.js";
import { buildBusyboxImage, DOCKER_SOCKET } from "../test/fixtures/images.js";
import { buildNodeModuleImage } from "../test/fixtures/node-module-image.js";
import { makeEdgeCa } from "../test/fixtures/pki.js";
import { AttestedModules } from "./attested-modules.js";
import { WorkloadSockets } from "./workload-api.js";
import { startManagementApi } from "./management-api.js";
import { checkAttestedContainer } from "./container-check.js";
import { callerLookups, checkCaller } from "./peer.js";
import { issueModuleCertificate, type EdgeCa } from "./module-issuer.js";
import { ModuleEventLog, LocalAttestationSource } from "./events.js";
import { ManagementClient, ManagementAttestationSource, type AttestationEvent } from "../identity-api/index.js";

const docker = new DockerClient({ socketPath: DOCKER_SOCKET });
const log = createLogger("device-identity-test", { level: "silent" });
const TD = "edgetrust.test";
const DEVICE = "dev-wl";
const tag = `${process.pid}`;

const execFileAsync = promisify(execFile);

async function dockerCliAsync(args: string[]): Promise<string> {
  const { stdout } = await execFileAsync("docker", args, { env: { ...process.env, DOCKER_HOST: `unix://${DOCKER_SOCKET}` }, encoding: "utf8" });
  return stdout.trim();
}

/** curl (a real client) over a unix socket; returns status and body. Async: the server runs in this process. */
async function curl(socket: string, method: string, path: string, body?: unknown): Promise<{ status: number; body: string }> {
  const args = ["-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket", socket, "-X", method, `http://localhost${path}`];
  if (body !== undefined) args.push("-H", "content-type: application/json", "--data-binary", JSON.stringify(body));
  const { stdout: out } = await execFileAsync("curl", args, { encoding: "utf8", timeout: 20_000 });
  const nl = out.lastIndexOf("\n");
  return { status: Number(out.slice(nl + 1)), body: out.slice(0, nl) };
}

function moduleCsr(dir: string, cn: string, sanUri?: string): string {
  const key = join(dir, `${cn}.key`);
  const args = ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-subj", `/CN=${cn}`];
  if (sanUri) args.push("-addext", `subjectAltName=URI:${sanUri}`);
  return execFileSync("openssl", args, { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
}

describe("device identity: management + workload sockets (real dockerd, curl, openssl)", () => {
  const dir = mkdtempSync(join(tmpdir(), "et-di-"));
  const mgmtSocket = join(dir, "mgmt.sock");
  let image: ResolvedImage;
  let containerId: string;
  let stoppedId: string;
  let mgmt: Awaited<ReturnType<typeof startManagementApi>>;
  let sockets: WorkloadSockets;
  let chainFile: string;
  let edgeCa: EdgeCa;
  let events: ModuleEventLog;
  let modules: AttestedModules;

  beforeAll(async () => {
    const pki = await makeEdgeCa(TD, DEVICE);
    edgeCa = { certificate: pki.edgeCa.certificate, signingKey: pki.edgeCa.signingKey, chain: [pki.edgeCa.certificate] };
    chainFile = join(dir, "root.pem");
    writeFileSync(chainFile, pki.root.certificate.toString("pem"));
    writeFileSync(join(dir, "edge-ca.pem"), pki.edgeCa.certificate.toString("pem"));

    image = await ensureImage(docker, buildBusyboxImage("wl", `wl-${tag}-${Date.now()}`));
    const base = { deviceId: DEVICE, deploymentId: "dep", manifestVersion: 3, image, user: "1000:1000", capAdd: [], binds: [], devices: [], network: "none" as const, readOnlyRootfs: true, env: {} };
    containerId = await createModuleContainer(docker, { ...base, module: `sensor${tag}`, cmd: ["sleep", "300"] });
    await docker.startContainer(containerId);
    stoppedId = await createModuleContainer(docker, { ...base, module: `idle${tag}`, cmd: ["true"] });
    await docker.startContainer(stoppedId);
    await docker.waitContainer(stoppedId);

    modules = new AttestedModules(join(dir, "attested.json"));
    events = new ModuleEventLog(modules);
    const checkContainer = (m: Parameters<typeof checkAttestedContainer>[1]) => checkAttestedContainer(docker, m);
    const checkRegistration = (m: Parameters<typeof checkAttestedContainer>[1]) => checkAttestedContainer(docker, m, { allowCreated: true });
    sockets = new WorkloadSockets(join(dir, "modules"), modules, {
      issueModuleCertificate: (m, csr) => issueModuleCertificate({ trustDomain: TD, deviceId: DEVICE, lifetimeSeconds: 3600, edgeCa: () => edgeCa, checkContainer }, m, csr),
      trustBundle: () => [readFileSync(chainFile, "utf8")],
      checkCaller: (m, socket) => checkCaller(docker, m, socket),
    }, log);
    mgmt = await startManagementApi({ path: mgmtSocket, modules, sockets, backend: { checkContainer: checkRegistration, status: () => ({ device: DEVICE }) }, events, log });
  });

  afterAll(async () => {
    events?.close();
    await sockets?.closeAll();
    await mgmt?.close();
    await docker.removeContainer(containerId);
    await docker.removeContainer(stoppedId);
  });

  const registration = (over: Record<string, unknown> = {}) => ({
    name: `sensor${tag}`,
    containerId,
    imageRepository: image.repository,
    imageDigest: image.digest,
    manifestVersion: 3,
    deploymentId: "dep",
    uid: 1000,
    gid: 1000,
    ...over,
  });

  it("the management socket is root-only", async () => {
    expect(statSync(mgmtSocket).mode & 0o777).toBe(0o600);
  });

  it("registers a running, correctly pinned container and opens its own socket, owned by the module's uid", async () => {
    const r = await curl(mgmtSocket, "POST", "/v1/modules", registration());
    expect(r.status).toBe(201);
    const socketPath = JSON.parse(r.body).socketPath as string;
    const st = statSync(socketPath);
    expect(st.isSocket()).toBe(true);
    expect([st.uid, st.gid, st.mode & 0o777]).toEqual([1000, 1000, 0o600]);
  });

  it("issues a short-lived module certificate with the module URI and the attested digest; openssl verifies the chain", async () => {
    const socketPath = sockets.socketPath(`sensor${tag}`);
    const r = await curl(socketPath, "POST", "/v1/certificate", { csr: moduleCsr(dir, "sensor") });
    expect(r.status).toBe(200);
    const body = JSON.parse(r.body) as { certificate: string; chain: string[] };
    const cert = new x509.X509Certificate(body.certificate);
    expect(certificateIdentity(cert)).toMatchObject({ trustDomain: TD, deviceId: DEVICE, moduleId: `sensor${tag}` });
    expect(parseModuleAttestation(cert)).toMatchObject({ imageDigest: image.digest, manifestVersion: 3 });
    expect(cert.notAfter.getTime() - Date.now()).toBeLessThanOrEqual(3600_000);
    writeFileSync(join(dir, "module.pem"), body.certificate);
    writeFileSync(join(dir, "untrusted.pem"), body.chain.join(""));
    const out = execFileSync("openssl", ["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile", chainFile, "-untrusted", join(dir, "untrusted.pem"), join(dir, "module.pem")], { encoding: "utf8" });
    expect(out).toContain(": OK");
  });

  it("serves the trust bundle", async () => {
    const r = await curl(sockets.socketPath(`sensor${tag}`), "GET", "/v1/trust-bundle");
    expect(JSON.parse(r.body).certificates[0]).toContain("BEGIN CERTIFICATE");
  });

  it("refuses a CSR asking for another module's identity", async () => {
    const r = await curl(sockets.socketPath(`sensor${tag}`), "POST", "/v1/certificate", { csr: moduleCsr(dir, "x", `edgetrust://${TD}/devices/${DEVICE}/modules/other`) });
    expect(r.status).toBe(400);
    expect(JSON.parse(r.body)).toMatchObject({ code: "PKI_PROFILE_VIOLATION" });
  });

  it("refuses garbage on the workload socket with problem+json, and stays up", async () => {
    const bad = await curl(sockets.socketPath(`sensor${tag}`), "POST", "/v1/certificate", { csr: "nope" });
    expect(bad.status).toBe(400);
    expect(JSON.parse(bad.body).detail).toMatch(/body\/csr/);
    expect((await curl(sockets.socketPath(`sensor${tag}`), "GET", "/v1/trust-bundle")).status).toBe(200);
  });

  it("refuses to attest a container that does not run, or with a digest it was not created for", async () => {
    const notRunning = await curl(mgmtSocket, "POST", "/v1/modules", registration({ name: `idle${tag}`, containerId: stoppedId }));
    expect(notRunning.status).toBe(403);
    expect(JSON.parse(notRunning.body).detail).toMatch(/not running \(exited\)/);
    const wrongDigest = await curl(mgmtSocket, "POST", "/v1/modules", registration({ imageDigest: "sha256:" + "ab".repeat(32) }));
    expect(wrongDigest.status).toBe(403);
    expect(JSON.parse(wrongDigest.body).detail).toMatch(/another image digest/);
  });

  it("refuses a malformed registration with the precise field", async () => {
    const r = await curl(mgmtSocket, "POST", "/v1/modules", registration({ containerId: "../../etc" }));
    expect(r.status).toBe(400);
    expect(JSON.parse(r.body).detail).toMatch(/containerId/);
  });

  it("refuses a module whose workload socket path would pass sun_path (107 bytes) with problem+json, before anything is checked or kept", async () => {
    // A workload directory where this test's module name fits and a 63-character one (the schema's longest) does not.
    const longDir = join(dir, "w".repeat(Math.max(1, 107 - "/workload.sock".length - `/sensor${tag}`.length - dir.length - 1)));
    const longName = "m".repeat(63);
    const longModules = new AttestedModules(join(dir, "attested-long.json"));
    const checked: string[] = [];
    const longSockets = new WorkloadSockets(longDir, longModules, {
      issueModuleCertificate: () => Promise.reject(new Error("not used")), trustBundle: () => [], checkCaller: (m, socket) => checkCaller(docker, m, socket),
    }, log);
    const longMgmt = join(dir, "mgmt-long.sock");
    const api = await startManagementApi({ path: longMgmt, modules: longModules, sockets: longSockets, log, backend: {
      checkContainer: (m) => { checked.push(m.name); return checkAttestedContainer(docker, m, { allowCreated: true }); },
      status: () => ({ device: DEVICE }),
    } });
    try {
      const path = join(longDir, longName, "workload.sock");
      const r = await curl(longMgmt, "POST", "/v1/modules", registration({ name: longName }));
      expect(r.status).toBe(400);
      const problem = JSON.parse(r.body) as { code: string; detail: string };
      expect(problem.code).toBe("INVALID_INPUT");
      expect(problem.detail).toBe(`refused to attest module ${longName}: its workload socket cannot be made: unix socket path ${JSON.stringify(path)} is ${Buffer.byteLength(path)} bytes; the kernel's limit (sun_path) is 107 bytes`);
      // Nothing partial: no container check, no registry entry or file, no socket directory nor (cut short) socket file.
      expect(checked).toEqual([]);
      expect(longModules.list()).toEqual([]);
      expect(existsSync(join(dir, "attested-long.json"))).toBe(false);
      expect(existsSync(longDir)).toBe(false);
      // Still serving, and a module whose path fits registers in the same directory.
      expect((await curl(longMgmt, "GET", "/v1/status")).status).toBe(200);
      const ok = await curl(longMgmt, "POST", "/v1/modules", registration());
      expect(ok.status).toBe(201);
      expect(readdirSync(longDir)).toEqual([`sensor${tag}`]);
      expect(statSync(join(longDir, `sensor${tag}`, "workload.sock")).isSocket()).toBe(true);
    } finally {
      await longSockets.closeAll();
      await api.close();
    }
  });

  it("a container started by hand with a live module's socket mounted is refused: the caller is not in that module's container", async () => {
    const rogueImage = await buildNodeModuleImage("rogue", `rogue-${tag}`);
    const socketDir = sockets.socketDir(`sensor${tag}`);
    const lookups = { ...callerLookups };
    const rogue = await dockerCliAsync(["run", "-d", "--network", "none", "--read-only", "--user", "1000:1000", "-v", `${socketDir}:/run/edgetrust/workload:ro`, rogueImage.ref]);
    try {
      let failure: string | undefined;
      for (let i = 0; i < 150 && !failure; i++) {
        const lines = (await docker.logs(rogue)).split("\n").filter(Boolean).map((l) => JSON.parse(l) as { step: string; message?: string });
        failure = lines.find((l) => l.step === "certificate-failed")?.message;
        expect(lines.map((l) => l.step)).not.toContain("certificate");
        if (!failure) await new Promise((r) => setTimeout(r, 200));
      }
      expect(failure).toMatch(/HTTP 403.*not in module sensor\d+'s container/);
      // Decided by the kernel's name for the connecting process (SO_PEERPIDFD), without `ss`.
      expect(callerLookups.kernel, "callers named by the kernel (needs the koffi package: npm ci)").toBeGreaterThan(lookups.kernel);
      expect(callerLookups.ss).toBe(lookups.ss);
    } finally {
      await docker.removeContainer(rogue);
    }
    // The same socket from the host (root: nothing else can reach the directory) still works for the operator.
    expect((await curl(sockets.socketPath(`sensor${tag}`), "POST", "/v1/certificate", { csr: moduleCsr(dir, "sensor3") })).status).toBe(200);
  });

  it("a module in its own network namespace (network none) gets its certificate from inside its container", async () => {
    const nodeImage = await ensureImage(docker, await buildNodeModuleImage("inner", `inner-${tag}`));
    const name = `inner${tag}`;
    const id = await createModuleContainer(docker, { deviceId: DEVICE, deploymentId: "dep", manifestVersion: 3, image: nodeImage, user: "1000:1000", capAdd: [], binds: [], devices: [], network: "none", readOnlyRootfs: true, env: {}, module: name, workloadSocketDir: sockets.socketDir(name) });
    try {
      const reg = await curl(mgmtSocket, "POST", "/v1/modules", registration({ name, containerId: id, imageRepository: nodeImage.repository, imageDigest: nodeImage.digest }));
      expect(reg.status, reg.body).toBe(201);
      await docker.startContainer(id);
      let steps: string[] = [];
      for (let i = 0; i < 150 && !steps.includes("certificate") && !steps.includes("certificate-failed"); i++) {
        steps = (await docker.logs(id)).split("\n").filter(Boolean).map((l) => (JSON.parse(l) as { step: string }).step);
        if (!steps.includes("certificate")) await new Promise((r) => setTimeout(r, 200));
      }
      expect(steps).toContain("certificate");
    } finally {
      await docker.removeContainer(id);
      await curl(mgmtSocket, "DELETE", `/v1/modules/${name}`);
    }
  });

  it("a module whose container stopped gets no certificate", async () => {
    await docker.stopContainer(containerId, 0);
    const r = await curl(sockets.socketPath(`sensor${tag}`), "POST", "/v1/certificate", { csr: moduleCsr(dir, "sensor2") });
    expect(r.status).toBe(403);
    expect(JSON.parse(r.body).detail).toMatch(/not running/);
    await docker.startContainer(containerId);
  });

  it("ManagementClient and both AttestationSources (in-process, and long-polling the socket) follow changes", async () => {
    const client = new ManagementClient(mgmtSocket);
    const name = `sensor${tag}`;
    expect((await client.list()).map((m) => m.name)).toContain(name);
    const local = new LocalAttestationSource(modules, events, DEVICE);
    const remote = new ManagementAttestationSource(client, DEVICE, { waitSeconds: 5, retryMs: 100, log });
    await remote.start();
    try {
      expect(remote.current(DEVICE, name)).toEqual({ imageDigest: image.digest, manifestVersion: 3 });
      expect(remote.current("other-device", name)).toBeUndefined();
      const seenLocal: AttestationEvent[] = [];
      const seenRemote: AttestationEvent[] = [];
      const offLocal = local.subscribe((e) => seenLocal.push(e));
      const gotUpdate = new Promise<void>((res) => { const off = remote.subscribe((e) => { seenRemote.push(e); if (e.type === "updated") { off(); res(); } }); });
      // A new manifest version for the same container: the hub must hear "updated".
      const v = await client.register(registration({ manifestVersion: 4 }));
      expect(v.manifestVersion).toBe(4);
      await gotUpdate;
      expect(remote.current(DEVICE, name)?.manifestVersion).toBe(4);
      expect(seenLocal).toEqual([{ type: "updated", deviceId: DEVICE, module: name }]);
      offLocal();
      // A refusal comes back as an EdgeTrustError with the daemon's reason.
      await expect(client.register(registration({ imageDigest: "sha256:" + "cd".repeat(32) }))).rejects.toMatchObject({ code: "FORBIDDEN" });
      await client.register(registration());
    } finally {
      await remote.stop();
    }
  });

  it("deregistration closes the module's socket", async () => {
    const socketPath = sockets.socketPath(`sensor${tag}`);
    expect((await curl(mgmtSocket, "DELETE", `/v1/modules/sensor${tag}`)).status).toBe(204);
    expect(existsSync(socketPath)).toBe(false);
    expect((await curl(mgmtSocket, "GET", `/v1/modules/sensor${tag}`)).status).toBe(404);
  });
});
