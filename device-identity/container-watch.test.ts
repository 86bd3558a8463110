import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createLogger } from "../common/index.js";
import { ContainerWatch, DockerClient, ensureImage, LABELS, type ResolvedImage } from "../engine/index.js";
import { createModuleContainer } from "../edge-agent/index.js";
import { buildBusyboxImage, dockerCli, DOCKER_SOCKET } from "../test/fixtures/images.js";
import { makeEdgeCa } from "../test/fixtures/pki.js";
import { EngineProxy } from "../test/fixtures/engine-proxy.js";
import { AttestedModules } from "./attested-modules.js";
import { containerChecker, containerPid } from "./container-check.js";
import { issueModuleCertificate, type EdgeCa } from "./module-issuer.js";
import { callerLookups, checkCaller } from "./peer.js";
import { WorkloadSockets } from "./workload-api.js";

const log = createLogger("container-watch-test", { level: "silent" });
const TD = "edgetrust.test";
const DEVICE = "dev-watch";
const tag = `${process.pid}`;

function moduleCsr(dir: string, cn: string): string {
  return execFileSync("openssl", ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", join(dir, `${cn}.key`), "-subj", `/CN=${cn}`], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
}

/** POST /v1/certificate on a new connection each time (a new caller check each time too). */
function postCsr(socketPath: string, csr: string): Promise<{ status: number; body: string }> {
  const body = JSON.stringify({ csr });
  return new Promise((resolve, reject) => {
    const req = request({ agent: false, socketPath, method: "POST", path: "/v1/certificate", headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

function until(watch: ContainerWatch, ev: "settled" | "images" | "down", pred: (id?: string) => boolean = () => true): Promise<void> {
  return new Promise((resolve) => {
    const on = (id?: string): void => { if (pred(id)) { watch.off(ev, on as never); resolve(); } };
    watch.on(ev, on as never);
  });
}

describe("module certificates from the engine's event stream (real dockerd behind a recording proxy)", () => {
  const dir = mkdtempSync(join(tmpdir(), "et-watch-"));
  const real = new DockerClient({ socketPath: DOCKER_SOCKET });
  // Two paths to the same dockerd, each through its own recording proxy: the certificate path's (every engine request a
  // certificate causes) and the event stream's (subscription, listing, re-reads after events).
  const proxy = new EngineProxy(join(dir, "docker-hot.sock"), DOCKER_SOCKET);
  const streamProxy = new EngineProxy(join(dir, "docker-stream.sock"), DOCKER_SOCKET);
  const viaProxy = new DockerClient({ socketPath: proxy.path, timeoutMs: 5000 });
  // No ping while the test holds the engine unreachable on purpose (the ping is for a hung engine, not this test).
  const watch = new ContainerWatch(new DockerClient({ socketPath: streamProxy.path, timeoutMs: 5000 }), {
    labels: { [LABELS.module]: true, [LABELS.device]: DEVICE }, log, pingIntervalMs: 600_000, retryInitialMs: 100, retryMaxMs: 500,
  });
  const name = `watched${tag}`;
  let image: ResolvedImage;
  let containerId: string;
  let replacementId = "";
  let edgeCa: EdgeCa;
  let modules: AttestedModules;
  let sockets: WorkloadSockets;
  let socketPath: string;
  const csr = (): string => moduleCsr(dir, "m");

  const register = async (id: string): Promise<void> => {
    const m = modules.register({ name, containerId: id, imageRepository: image.repository, imageDigest: image.digest, manifestVersion: 1, deploymentId: "dep", uid: 0, gid: 0 });
    socketPath = await sockets.open(m);
  };
  const newContainer = async (): Promise<string> => {
    const id = await createModuleContainer(real, { deviceId: DEVICE, deploymentId: "dep", manifestVersion: 1, image, user: "1000:1000", capAdd: [], binds: [], devices: [], network: "none", readOnlyRootfs: true, env: {}, module: name, cmd: ["sleep", "600"] });
    await real.startContainer(id);
    return id;
  };
  const settledOn = (id: string, pred: () => boolean): Promise<void> => until(watch, "settled", (x) => x === id && pred());
  /**
   * The certificate path's engine requests while `fn` runs. Other test files change images and containers on the same
   * engine: an event the watch receives in the window (images re-read) is a legitimate engine request, not the
   * certificate path's, and so is one counted just before it whose re-read is still pending. So the window starts once
   * memory answers for the module, and is measured again (up to 10 times) if the watch saw an event in it.
   */
  const quietWindow = async (fn: () => Promise<void>): Promise<string[]> => {
    const seen = (): number => watch.stats.events + watch.stats.syncs + watch.stats.downs;
    const memoryAnswers = (): boolean => { const l = watch.lookup(containerId); return l?.exists === true && l.image !== undefined; };
    for (let attempt = 1; ; attempt++) {
      while (!memoryAnswers()) await new Promise((r) => setTimeout(r, 20));
      const before = seen();
      proxy.reset();
      await fn();
      if (seen() === before || attempt === 10) return proxy.calls();
      await new Promise((r) => setTimeout(r, 500));
    }
  };

  beforeAll(async () => {
    const pki = await makeEdgeCa(TD, DEVICE);
    edgeCa = { certificate: pki.edgeCa.certificate, signingKey: pki.edgeCa.signingKey, chain: [pki.edgeCa.certificate] };
    image = await ensureImage(real, buildBusyboxImage("watch", `watch-${tag}-${Date.now()}`));
    containerId = await newContainer();
    await proxy.listen();
    await streamProxy.listen();
    await watch.start();
    expect(watch.live).toBe(true);
    modules = new AttestedModules(join(dir, "attested.json"));
    const check = containerChecker(viaProxy, watch);
    const pidOf = containerPid(viaProxy, watch);
    sockets = new WorkloadSockets(join(dir, "modules"), modules, {
      issueModuleCertificate: (m, pem) => issueModuleCertificate({ trustDomain: TD, deviceId: DEVICE, lifetimeSeconds: 3600, edgeCa: () => edgeCa, checkContainer: (x) => check(x) }, m, pem),
      trustBundle: () => [],
      checkCaller: (m, socket) => checkCaller(viaProxy, m, socket, pidOf),
    }, log);
    await register(containerId);
  }, 120_000);

  afterAll(async () => {
    watch.stop();
    await sockets?.closeAll();
    await proxy.close();
    await streamProxy.close();
    await real.removeContainer(containerId).catch(() => undefined);
    if (replacementId) await real.removeContainer(replacementId).catch(() => undefined);
    try { dockerCli(["image", "rm", "-f", `${image.repository}@${image.digest}`]); } catch { /* already untagged */ }
    rmSync(dir, { recursive: true, force: true });
  });

  it("after warm-up a module certificate costs 0 engine requests, and is issued with the engine unreachable", async () => {
    expect((await postCsr(socketPath, csr())).status).toBe(200);
    let lookups = { ...callerLookups };
    expect(await quietWindow(async () => {
      lookups = { ...callerLookups };
      for (let i = 0; i < 5; i++) expect((await postCsr(socketPath, csr())).status).toBe(200);
    })).toEqual([]);
    // Five new connections, five callers identified by the kernel (SO_PEERPIDFD), no `ss` process.
    expect(callerLookups.kernel - lookups.kernel, "callers named by the kernel (needs the koffi package: npm ci)").toBe(5);
    expect(callerLookups.ss - lookups.ss).toBe(0);
    proxy.blockNew = true;
    proxy.cutAll();
    try {
      for (let i = 0; i < 3; i++) expect((await postCsr(socketPath, csr())).status).toBe(200);
    } finally {
      proxy.blockNew = false;
    }
    expect(proxy.calls()).toEqual([]);
  });

  it("a killed container is refused as soon as its event is in, decided from memory; started again, it is served again", async () => {
    const died = settledOn(containerId, () => watch.lookup(containerId)?.exists === true && !(watch.lookup(containerId) as { container: { running: boolean } }).container.running);
    execFileSync("docker", ["kill", containerId], { env: { ...process.env, DOCKER_HOST: `unix://${DOCKER_SOCKET}` }, stdio: "ignore" });
    await died;
    proxy.reset();
    const r = await postCsr(socketPath, csr());
    expect(r.status).toBe(403);
    expect(JSON.parse(r.body).detail).toMatch(/not running \(exited\)/);
    expect(proxy.calls()).toEqual([]);
    const back = settledOn(containerId, () => watch.lookup(containerId)?.exists === true && (watch.lookup(containerId) as { container: { running: boolean } }).container.running);
    await real.startContainer(containerId);
    await back;
    expect((await postCsr(socketPath, csr())).status).toBe(200);
  });

  it("a replaced container (the registered one destroyed, another made for the module) is refused after the destroy event", async () => {
    // The agent's way: the module's container name is taken by a new container, the old one destroyed.
    const gone = settledOn(containerId, () => watch.lookup(containerId)?.exists === false);
    replacementId = await newContainer();
    await gone;
    proxy.reset();
    const r = await postCsr(socketPath, csr());
    expect(r.status).toBe(403);
    expect(JSON.parse(r.body).detail).toMatch(/no longer exists/);
    expect(proxy.calls()).toEqual([]);
    // The agent registers the new container: served again, still without engine calls.
    containerId = replacementId;
    replacementId = "";
    await register(containerId);
    await postCsr(socketPath, csr());
    expect(await quietWindow(async () => { expect((await postCsr(socketPath, csr())).status).toBe(200); })).toEqual([]);
  });

  it("a broken event stream never serves from memory: refused while the engine is unreachable, re-listed before memory answers again", async () => {
    proxy.blockNew = true;
    streamProxy.blockNew = true;
    const down = until(watch, "down");
    streamProxy.cutAll();
    proxy.cutAll();
    await down;
    expect(watch.live).toBe(false);
    // The container dies while nobody can hear it.
    execFileSync("docker", ["kill", containerId], { env: { ...process.env, DOCKER_HOST: `unix://${DOCKER_SOCKET}` }, stdio: "ignore" });
    const blind = await postCsr(socketPath, csr());
    expect(blind.status).toBe(503);
    expect(JSON.parse(blind.body).detail).toMatch(/unreachable/);
    proxy.blockNew = false;
    streamProxy.blockNew = false;
    expect(await watch.waitLive(20_000)).toBe(true);
    proxy.reset();
    const r = await postCsr(socketPath, csr());
    expect(r.status).toBe(403);
    expect(JSON.parse(r.body).detail).toMatch(/not running/);
    expect(proxy.calls()).toEqual([]);
    expect(watch.stats.syncs).toBeGreaterThanOrEqual(2);
    const back = settledOn(containerId, () => (watch.lookup(containerId) as { container?: { running: boolean } } | undefined)?.container?.running === true);
    await real.startContainer(containerId);
    await back;
    expect((await postCsr(socketPath, csr())).status).toBe(200);
  });

  it("an engine that stops answering (a hung dockerd: the stream stays open, silent) is noticed by the ping, and memory stops answering", async () => {
    const hungProxy = new EngineProxy(join(dir, "docker-hung.sock"), DOCKER_SOCKET);
    await hungProxy.listen();
    const w = new ContainerWatch(new DockerClient({ socketPath: hungProxy.path }), {
      labels: { [LABELS.module]: true, [LABELS.device]: DEVICE }, log, pingIntervalMs: 200, pingTimeoutMs: 500, retryInitialMs: 100, retryMaxMs: 200,
    });
    try {
      await w.start();
      expect(w.live).toBe(true);
      expect(w.lookup(containerId)).toMatchObject({ exists: true });
      hungProxy.stall = true;
      const down = await new Promise<string>((resolve) => w.once("down", resolve));
      expect(down).toMatch(/ping failed: no answer within 500 ms/);
      expect(w.lookup(containerId)).toBeUndefined();
      // The engine answers again: followed again after a fresh subscription and listing.
      hungProxy.stall = false;
      hungProxy.cutAll();
      expect(await w.waitLive(20_000)).toBe(true);
      expect(w.lookup(containerId)).toMatchObject({ exists: true });
    } finally {
      w.stop();
      await hungProxy.close();
    }
  });

  it("an image that no longer carries the attested digest (untagged under the running container) is refused after the image event", async () => {
    const drifted = until(watch, "images");
    dockerCli(["image", "rm", "-f", `${image.repository}@${image.digest}`]);
    await drifted;
    expect(await quietWindow(async () => {
      const r = await postCsr(socketPath, csr());
      expect(r.status).toBe(403);
      expect(JSON.parse(r.body).detail).toMatch(/runs image sha256:.*, not sha256:/);
    })).toEqual([]);
  });
});
