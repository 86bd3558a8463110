/**
 * An unmodified Azure IoT Edge module on edgetrust. The image's program is azure-iot-device + azure-iot-device-mqtt
 * `ModuleClient.fromEnvironment()` and nothing else (test/fixtures/azure-module/module.mjs). A 2-of-3 signed manifest
 * deploys it twice (sender, receiver); policy grants both `auth: sas`. The agent gives them the IOTEDGE_* environment;
 * the SDK asks its own workload socket for the trust bundle and for SAS signatures (HMAC key in SoftHSM2), dials
 * `mqtts://localhost:8883`, and the hub admits it after the identity daemon verified the token.
 *
 * The SDK dials port 8883, so everything that talks TCP runs in a network namespace of this test's own (`unshare -n`):
 * a private dockerd (modules on its "host" network), its registry, the hub (its own process) and Mosquitto as the
 * cloud broker. The identity daemon stays in this process: unix sockets cross network namespaces.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawn, execFile, type ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { promisify } from "node:util";
import { createLogger } from "../common/index.js";
import { DockerClient } from "../engine/index.js";
import { EdgeAgent, ManagementSocketRegistrar } from "../edge-agent/index.js";
import { buildNodeModuleImage, type NodeModuleImage } from "../dev-images/index.js";
import { Pkcs11KeyStore, SOFTHSM_MODULE, createSoftHsmDir, initToken, type SoftHsmDir } from "../hsm/index.js";
import { X509Certificate } from "@peculiar/x509";
import { certificateIdentity, parseModuleAttestation } from "../pki/index.js";
import { parsePolicy, signManifest, type JwsSigner, type Manifest } from "../policy/index.js";
import { makeSigners, makeTrustRoot } from "../policy/fixtures.js";
import { startHubDevice, type HubDevice } from "./fixtures/hub-device.js";
import type { HubChildConfig } from "./fixtures/sas-hub-child.js";

const execFileAsync = promisify(execFile);
const tag = `${process.pid}`;
const DEVICE = `az-dev-${tag}`;
const REG = "127.0.0.1:5000"; // inside the test's network namespace
const PROGRAM_DIR = join(import.meta.dirname, "fixtures", "azure-module");

const POLICY = `version: 1
mode: enforce
trust:
  trustRoot: trust-root.json
images:
  registries: ["${REG}"]
modules:
  allow: ["*"]
  defaults:
    network: [host]
    users: ["1000:1000"]
    readOnlyRootfs: required
    auth: sas
hub:
  publish:
    - id: telemetry
      principals: [module]
      topics: ["devices/{device}/modules/{module}/messages/events/#"]
    - id: iothub
      principals: [module]
      topics: ["$iothub/twin/#", "$iothub/methods/res/#"]
  subscribe:
    - id: inputs
      principals: [module]
      topics: ["devices/{device}/modules/{module}/inputs/#"]
    - id: iothub
      principals: [module]
      topics: ["$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#", "$iothub/methods/POST/#"]
`;

interface Line { [k: string]: unknown }

/** Lines of JSON (or `topic payload` for mosquitto_sub -v) from a child's stdout. */
function collect(p: ChildProcess, json: boolean): Line[] {
  const lines: Line[] = [];
  if (!p.stdout) return lines;
  createInterface({ input: p.stdout }).on("line", (l) => {
    if (!json) {
      const sp = l.indexOf(" ");
      lines.push({ topic: sp < 0 ? l : l.slice(0, sp), payload: sp < 0 ? "" : l.slice(sp + 1) });
      return;
    }
    try {
      lines.push(JSON.parse(l) as Line);
    } catch {
      lines.push({ step: "unparsed", line: l });
    }
  });
  return lines;
}

async function until<T>(what: string, probe: () => T | undefined | false | Promise<T | undefined | false>, ms = 90_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

function stop(p: ChildProcess | undefined, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
  if (!p || p.exitCode !== null || p.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    p.once("exit", () => resolve());
    p.kill(signal);
    setTimeout(() => p.kill("SIGKILL"), 15_000).unref();
  });
}

describe("an unmodified Azure IoT Edge module (ModuleClient.fromEnvironment) runs attested on edgetrust", () => {
  const base = mkdtempSync("/tmp/etaz-");
  const sock = join(base, "d.sock");
  const docker = new DockerClient({ socketPath: sock });
  const children: ChildProcess[] = [];
  let dockerd: ChildProcess;
  let ns = "";
  let hsm: SoftHsmDir;
  let keys: Pkcs11KeyStore;
  let device: HubDevice;
  let image: NodeModuleImage;
  let agent: EdgeAgent;
  let registrar: ManagementSocketRegistrar;
  let signers: JwsSigner[];
  let hub: ChildProcess | undefined;
  let hubEvents: Line[] = [];
  let cloud: Line[] = [];
  const moduleLogs = new Map<string, Line[]>();

  /** Run a program inside the test's network namespace. */
  const inNs = (cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): ChildProcess => {
    const p = spawn("nsenter", [`--net=${ns}`, "--", cmd, ...args], { env, stdio: ["ignore", "pipe", "pipe"] });
    children.push(p);
    return p;
  };
  const nsExec = async (cmd: string, args: string[]) => (await execFileAsync("nsenter", [`--net=${ns}`, "--", cmd, ...args], { encoding: "utf8", timeout: 30_000 })).stdout;
  const dockerCli = async (args: string[]) => (await execFileAsync("docker", args, { env: { ...process.env, DOCKER_HOST: `unix://${sock}` }, encoding: "utf8", timeout: 60_000 })).stdout.trim();

  const hubConfig = (): HubChildConfig => ({
    deviceId: DEVICE, trustDomain: device.trustDomain, mgmtSocket: device.mgmtSocket, stateDir: join(base, "hub"),
    certPem: device.hubTls.cert, keyPem: device.hubTls.key, edgeCaPem: device.edgeCa.certificate.toString("pem"), rootPem: device.root.toString("pem"),
    policyYaml: POLICY, upstreamUrl: "mqtt://127.0.0.1:1883", port: 8883,
    routes: {
      upstream: "FROM /messages/modules/* INTO $upstream",
      m2m: 'FROM /messages/modules/sender/outputs/out INTO BrokeredEndpoint("/modules/receiver/inputs/in")',
    },
  });

  async function startHub(): Promise<void> {
    hub = inNs(process.execPath, ["--import", "tsx", join(import.meta.dirname, "fixtures", "sas-hub-child.ts")], { ...process.env, HUB_CHILD: JSON.stringify(hubConfig()) });
    hubEvents = collect(hub, true);
    let err = "";
    hub.stderr?.on("data", (c: Buffer) => (err += c.toString()));
    await until("the hub listening and subscribed upstream", () => hubEvents.some((e) => e.event === "listening") && hubEvents.some((e) => e.event === "upstream-subscribed")).catch((e: Error) => {
      writeFileSync("/tmp/az-hub.err", err);
      throw new Error(`${e.message}; hub said: ${JSON.stringify(hubEvents).replace(/[^ -~]/g, "?")} (stderr in /tmp/az-hub.err)`);
    });
  }

  function manifest(version: number): Manifest {
    const mod = (startupOrder: number) => ({ image: image.ref, options: { user: "1000:1000", network: "host" as const, readOnlyRootfs: true }, restartPolicy: "always" as const, startupOrder });
    const now = Date.now();
    return {
      schemaVersion: 1, deploymentId: "dep-azure", version, targets: [DEVICE],
      modules: { receiver: mod(0), sender: mod(1) },
      routes: hubConfig().routes,
      issuedAt: new Date(now - 60_000).toISOString(), expiresAt: new Date(now + 86_400_000).toISOString(),
    };
  }

  async function follow(module: string): Promise<Line[]> {
    const id = (await docker.inspectContainer(`edgetrust-${module}`))?.Id ?? "";
    const p = spawn("docker", ["logs", "-f", id], { env: { ...process.env, DOCKER_HOST: `unix://${sock}` }, stdio: ["ignore", "pipe", "pipe"] });
    p.stderr?.on("data", (c: Buffer) => moduleLogs.get(module)?.push({ step: "stderr", text: c.toString().slice(0, 2000) }));
    children.push(p);
    const lines = collect(p, true);
    moduleLogs.set(module, lines);
    return lines;
  }

  /**
   * A sign request as the SDK makes it, from a Node process (`node -e`) wherever `run` puts it; when signed, also the
   * SAS token the SDK would build from the signature (what an attacker who copied it out would replay).
   */
  const SIGN_SCRIPT = (module: string) => `
const http = require("node:http");
const genid = process.env.IOTEDGE_MODULEGENERATIONID || "0000000000000000";
const sr = encodeURIComponent("edgetrust.local/devices/${DEVICE}/modules/${module}");
const se = Math.floor(Date.now() / 1000) + 600;
const data = Buffer.from(sr + "\\n" + se).toString("base64");
const body = JSON.stringify({ keyId: "primary", algo: "HMACSHA256", data });
const req = http.request({ socketPath: "/run/edgetrust/workload/workload.sock", method: "POST", path: "/modules/${module}/genid/" + genid + "/sign?api-version=2018-06-28", headers: { "content-type": "application/json" } }, (res) => {
  let b = ""; res.on("data", (c) => (b += c)); res.on("end", () => {
    let token;
    if (res.statusCode === 200) token = "SharedAccessSignature sr=" + sr + "&sig=" + encodeURIComponent(JSON.parse(b).digest) + "&se=" + se;
    console.log(JSON.stringify({ status: res.statusCode, body: b, token }));
  });
});
req.on("error", (e) => console.log(JSON.stringify({ status: 0, body: e.message })));
req.end(body);`;
  const signInside = async (module: string) =>
    JSON.parse((await dockerCli(["exec", `edgetrust-${module}`, "/usr/bin/node", "-e", SIGN_SCRIPT(module)])).split("\n").pop() ?? "{}") as { status: number; body: string; token?: string };

  /** Requests on a module's own workload socket from inside its container (`docker exec`), answered in order. */
  const callInside = async (module: string, calls: { method: string; path: string; body?: unknown }[]) => {
    const script = `
const http = require("node:http");
const calls = ${JSON.stringify(calls)};
(async () => {
  const out = [];
  for (const c of calls) {
    out.push(await new Promise((resolve) => {
      const req = http.request({ socketPath: "/run/edgetrust/workload/workload.sock", method: c.method, path: c.path, headers: c.body === undefined ? {} : { "content-type": "application/json" } }, (res) => {
        let b = ""; res.on("data", (x) => (b += x)); res.on("end", () => resolve({ status: res.statusCode, body: b }));
      });
      req.on("error", (e) => resolve({ status: 0, body: e.message }));
      req.end(c.body === undefined ? undefined : JSON.stringify(c.body));
    }));
  }
  console.log(JSON.stringify(out));
})();`;
    return JSON.parse((await dockerCli(["exec", `edgetrust-${module}`, "/usr/bin/node", "-e", script])).split("\n").pop() ?? "[]") as { status: number; body: string }[];
  };

  /** CONNECT to the hub as the SDK does (client id d/m, user name host/d/m/?api-version) with a given token, from the namespace. */
  const replay = async (module: string, token: string) =>
    execFileAsync("nsenter", [`--net=${ns}`, "--", "mosquitto_pub", "-h", "localhost", "-p", "8883", "--cafile", join(base, "root.pem"), "--insecure", "-V", "mqttv311",
      "-i", `${DEVICE}/${module}`, "-u", `edgetrust.local/${DEVICE}/${module}/?api-version=2020-09-30`, "-P", token, "-t", `devices/${DEVICE}/modules/${module}/messages/events/`, "-m", "replayed"],
    { encoding: "utf8", timeout: 30_000 }).then(() => ({ ok: true, err: "" }), (e: { stderr?: string }) => ({ ok: false, err: String(e.stderr ?? "") }));

  beforeAll(async () => {
    // The network namespace: dockerd started in a fresh one (loopback up); everything TCP joins it.
    dockerd = spawn("unshare", ["--net", "--", "sh", "-c",
      `ip link set lo up && exec dockerd --host unix://${sock} --bridge=none --iptables=false --ip6tables=false --ip-masq=false --data-root ${base}/data --exec-root ${base}/x --pidfile ${base}/d.pid`,
    ], { stdio: "ignore" });
    ns = `/proc/${dockerd.pid}/ns/net`;
    await until("the private dockerd", async () => (await docker.ping().then(() => true, () => false)));
    writeFileSync(join(base, "registry.yml"), `version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: ${join(base, "reg")}\nhttp:\n  addr: ${REG}\n`);
    inNs("docker-registry", ["serve", join(base, "registry.yml")]);
    writeFileSync(join(base, "mosquitto.conf"), "listener 1883 127.0.0.1\nallow_anonymous true\npersistence false\n");
    inNs("mosquitto", ["-c", join(base, "mosquitto.conf")]);
    await until("registry and broker in the namespace", async () => {
      const reg = await nsExec("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", `http://${REG}/v2/`]).catch(() => "");
      const mq = await nsExec("mosquitto_pub", ["-h", "127.0.0.1", "-p", "1883", "-t", "probe", "-m", "x"]).then(() => true, () => false);
      return reg === "200" && mq;
    });
    image = await buildNodeModuleImage("azure-module", `az-${tag}-${Date.now()}`, {
      program: { dir: PROGRAM_DIR, packages: ["azure-iot-device", "azure-iot-device-mqtt"], entry: "/app/module.mjs" }, dockerSocket: sock, registry: REG,
    });

    hsm = createSoftHsmDir();
    initToken({ module: SOFTHSM_MODULE, label: "et-az", soPin: "so-az", userPin: "pin-az" });
    keys = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: "et-az", pin: "pin-az", logger: createLogger("hsm", { level: "silent" }) });
    device = await startHubDevice(docker, DEVICE, { moduleLifetimeSeconds: 3600, sasKeys: keys.mac });
    mkdirSync(join(base, "hub"), { recursive: true });
    writeFileSync(join(base, "root.pem"), device.root.toString("pem"));

    const sub = inNs("mosquitto_sub", ["-h", "127.0.0.1", "-p", "1883", "-q", "1", "-v", "-t", `devices/${DEVICE}/#`]);
    cloud = collect(sub, false);
    await startHub();
    // The cloud sets a desired property before the module exists: the module reads it in its twin.
    await nsExec("mosquitto_pub", ["-h", "127.0.0.1", "-p", "1883", "-q", "1", "-t", `devices/${DEVICE}/modules/receiver/$iothub/twin/PATCH/properties/desired/?$version=3`, "-m", JSON.stringify({ threshold: 7 })]);

    signers = await makeSigners();
    const trustRoot = (await makeTrustRoot(signers, { threshold: 2, expires: new Date(Date.now() + 365 * 86_400_000).toISOString() })).root;
    registrar = new ManagementSocketRegistrar(device.mgmtSocket, device.socketsDir);
    agent = new EdgeAgent({
      docker, identity: registrar, policy: parsePolicy(POLICY, "policy.yaml"), trustRoot, deviceId: DEVICE, stateDir: join(base, "agent"),
      log: createLogger("edge-agent", { level: "silent" }), backoff: { baseMs: 0, maxMs: 0 },
    });
  }, 600_000);

  afterAll(async () => {
    await agent?.stop();
    for (const c of ["edgetrust-sender", "edgetrust-receiver", `hand-${tag}`]) await docker.removeContainer(c, true).catch(() => undefined);
    for (const p of children.reverse()) await stop(p);
    await device?.close();
    await keys?.close();
    hsm?.cleanup();
    await stop(dockerd);
    // dockerd's exec root keeps the namespace bind-mounted when it is stopped early.
    await execFileAsync("umount", [join(base, "x", "netns", "default")]).catch(() => undefined);
    rmSync(base, { recursive: true, force: true });
  }, 120_000);

  const sign = async (m: Manifest) => {
    const [a, b] = signers as [JwsSigner, JwsSigner];
    return JSON.stringify(await signManifest(await signManifest(m, a), b));
  };

  it("a signed manifest deploys the SDK image; the agent sets the IoT Edge environment and mounts the socket the URI names", async () => {
    const r = await agent.apply(await sign(manifest(1)));
    expect(r.verdict.reasons).toEqual([]);
    expect(r.modules.map((m) => [m.name, m.state])).toEqual([["receiver", "running"], ["sender", "running"]]);
    for (const n of ["receiver", "sender"]) {
      const c = await docker.inspectContainer(`edgetrust-${n}`);
      const envList = JSON.parse(await dockerCli(["inspect", "--format", "{{json .Config.Env}}", c?.Id ?? ""])) as string[];
      const env = Object.fromEntries(envList.map((e) => [e.slice(0, e.indexOf("=")), e.slice(e.indexOf("=") + 1)]));
      expect(env).toMatchObject({
        IOTEDGE_WORKLOADURI: "unix:///run/edgetrust/workload/workload.sock", IOTEDGE_DEVICEID: DEVICE, IOTEDGE_MODULEID: n,
        IOTEDGE_IOTHUBHOSTNAME: "edgetrust.local", IOTEDGE_GATEWAYHOSTNAME: "localhost", IOTEDGE_AUTHSCHEME: "sasToken", IOTEDGE_APIVERSION: "2018-06-28",
      });
      expect(env.IOTEDGE_MODULEGENERATIONID).toBe(device.modules.get(n)?.generationId);
      expect(c?.HostConfig.Binds).toEqual([`${join(device.socketsDir, n)}:/run/edgetrust/workload:ro`]);
      await follow(n);
    }
  }, 180_000);

  it("the SDK connects with SAS (signed in the HSM), reads its module twin, and its telemetry arrives upstream", async () => {
    for (const n of ["receiver", "sender"]) {
      const logs = moduleLogs.get(n) ?? [];
      await until(`${n} connected`, () => logs.some((l) => l.step === "connected") || logs.find((l) => /failed/.test(String(l.step))), 120_000).catch((e: Error) => {
        writeFileSync(`/tmp/az-${n}.log`, JSON.stringify(logs, null, 1));
        throw e;
      });
      expect(logs.find((l) => /failed/.test(String(l.step)))).toBeUndefined();
      const id = hubEvents.find((e) => e.event === "connected" && e.key === `${DEVICE}/${n}`);
      expect(id).toMatchObject({ principal: "module", serial: `sas-generation-${device.modules.get(n)?.generationId}` });
    }
    const twin = await until("the receiver's twin", () => moduleLogs.get("receiver")?.find((l) => l.step === "twin"));
    expect(twin.desired).toMatchObject({ threshold: 7, $version: 3 });
    await until("the reported patch acknowledged", () => moduleLogs.get("receiver")?.some((l) => l.step === "reported"));
    // ... and forwarded upstream through the outbox, with the twin's version.
    const rep = await until("the reported patch upstream", () => cloud.find((m) => String(m.topic).startsWith(`devices/${DEVICE}/modules/receiver/$iothub/twin/PATCH/properties/reported/?$version=`)));
    expect(JSON.parse(String(rep.payload))).toEqual({ started: true });
    const up = await until("sender telemetry upstream", () => cloud.find((m) => String(m.topic).startsWith(`devices/${DEVICE}/modules/sender/messages/events/`)));
    expect(JSON.parse(String(up.payload))).toMatchObject({ from: "sender" });
    expect(String(up.topic)).toContain("kind=reading");
  }, 180_000);

  it("the receiver gets the sender's output on its input through the route", async () => {
    const input = await until("an input message at the receiver", () => moduleLogs.get("receiver")?.find((l) => l.step === "input"));
    expect(input.input).toBe("in");
    expect(JSON.parse(String(input.body))).toMatchObject({ from: "sender" });
  }, 180_000);

  it("a direct method from the cloud side is answered by the module", async () => {
    await nsExec("mosquitto_pub", ["-h", "127.0.0.1", "-p", "1883", "-q", "1", "-t", `devices/${DEVICE}/modules/receiver/$iothub/methods/POST/ping/?$rid=77`, "-m", JSON.stringify("hello")]);
    const res = await until("the method response upstream", () => cloud.find((m) => String(m.topic) === `devices/${DEVICE}/modules/receiver/$iothub/methods/res/200/?$rid=77`));
    expect(JSON.parse(String(res.payload))).toEqual({ pong: "hello", module: "receiver" });
  }, 180_000);

  it("kill -9 of the hub: a direct method the cloud sends meanwhile is answered once the hub is back and the SDK has reconnected by itself", async () => {
    await stop(hub, "SIGKILL");
    // While the hub is down, the cloud calls a method on the receiver (QoS 1): the cloud broker keeps it in the hub's
    // persistent session.
    await nsExec("mosquitto_pub", ["-h", "127.0.0.1", "-p", "1883", "-q", "1", "-t", `devices/${DEVICE}/modules/receiver/$iothub/methods/POST/ping/?$rid=91`, "-m", JSON.stringify("while the hub was down")]);
    await startHub();
    // Both SDK clients reconnect on their own retry policy, with tokens their workload sockets sign.
    for (const n of ["receiver", "sender"]) {
      const id = await until(`${n} reconnected`, () => hubEvents.find((e) => e.event === "connected" && e.key === `${DEVICE}/${n}`), 180_000);
      expect(id).toMatchObject({ principal: "module", serial: `sas-generation-${device.modules.get(n)?.generationId ?? ""}` });
    }
    const res = await until("the method's answer upstream", () => cloud.find((m) => String(m.topic) === `devices/${DEVICE}/modules/receiver/$iothub/methods/res/200/?$rid=91`), 180_000);
    expect(JSON.parse(String(res.payload))).toEqual({ pong: "while the hub was down", module: "receiver" });
    // And the sender's telemetry flows upstream again through the restarted hub.
    const seen = cloud.length;
    await until("sender telemetry after the restart", () => cloud.slice(seen).find((m) => String(m.topic).startsWith(`devices/${DEVICE}/modules/sender/messages/events/`)), 120_000);
  }, 420_000);

  it("the IoT Edge workload API as iotedged serves it: api-version checked, identity certificate for the module's own CSR only, no server certificate, another module's name or generation refused", async () => {
    const genid = device.modules.get("receiver")?.generationId ?? "";
    const csr = (await execFileAsync("openssl", ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", join(base, "receiver-id.key"), "-subj", "/CN=receiver"], { encoding: "utf8" })).stdout;
    const v = "?api-version=2018-06-28";
    const sr = encodeURIComponent(`edgetrust.local/devices/${DEVICE}/modules/receiver`);
    const data = Buffer.from(`${sr}\n${Math.floor(Date.now() / 1000) + 600}`).toString("base64");
    const [bundle, noVersion, badVersion, identity, noCsr, server, otherName, otherGen, otherGenSign, badAlgo] = await callInside("receiver", [
      { method: "GET", path: `/trust-bundle${v}` },
      { method: "GET", path: "/trust-bundle" },
      { method: "GET", path: "/trust-bundle?api-version=2099-01-01" },
      { method: "POST", path: `/modules/receiver/genid/${genid}/certificate/identity${v}`, body: { commonName: "receiver", csr } },
      { method: "POST", path: `/modules/receiver/genid/${genid}/certificate/identity${v}`, body: { commonName: "receiver", expiration: new Date(Date.now() + 3_600_000).toISOString() } },
      { method: "POST", path: `/modules/receiver/genid/${genid}/certificate/server${v}`, body: { commonName: "receiver", csr } },
      { method: "POST", path: `/modules/sender/genid/${genid}/sign${v}`, body: { keyId: "primary", algo: "HMACSHA256", data } },
      { method: "POST", path: `/modules/receiver/genid/0000000000000000/certificate/identity${v}`, body: { csr } },
      { method: "POST", path: `/modules/receiver/genid/0000000000000000/sign${v}`, body: { keyId: "primary", algo: "HMACSHA256", data } },
      { method: "POST", path: `/modules/receiver/genid/${genid}/sign${v}`, body: { keyId: "primary", algo: "HMACSHA1", data } },
    ]);
    const detail = (r?: { body: string }) => (JSON.parse(r?.body ?? "{}") as { detail?: string }).detail;
    expect(bundle?.status).toBe(200);
    expect((JSON.parse(bundle?.body ?? "{}") as { certificate: string }).certificate.trim()).toBe(device.root.toString("pem").trim());
    expect([noVersion?.status, badVersion?.status]).toEqual([400, 400]);
    expect(detail(noVersion)).toMatch(/api-version query parameter is required/);
    expect(detail(badVersion)).toMatch(/api-version "2099-01-01" is not supported/);
    // The identity route issues for the module's own CSR: its URI, bound to the attested digest; the chain follows.
    expect(identity?.status, identity?.body).toBe(200);
    const issued = JSON.parse(identity?.body ?? "{}") as { certificate: string; expiration: string };
    const leaf = new X509Certificate(issued.certificate);
    expect(certificateIdentity(leaf)).toMatchObject({ trustDomain: device.trustDomain, deviceId: DEVICE, moduleId: "receiver" });
    expect(parseModuleAttestation(leaf)).toMatchObject({ imageDigest: image.digest, manifestVersion: 1 });
    expect(issued.certificate.match(/BEGIN CERTIFICATE/g)).toHaveLength(2);
    expect(Date.parse(issued.expiration)).toBe(leaf.notAfter.getTime());
    // iotedged would make a key and return it; edgetrust never hands out a private key.
    expect(noCsr?.status).toBe(403);
    expect(detail(noCsr)).toMatch(/never hands out private keys/);
    expect(server?.status).toBe(403);
    expect(detail(server)).toMatch(/server certificates are not issued/);
    // The socket is the module's identity: another module's name on it, or another generation, gets nothing.
    expect(otherName?.status).toBe(403);
    expect(detail(otherName)).toMatch(/this is module receiver's workload socket, not sender's/);
    expect(otherGen?.status).toBe(403);
    expect(detail(otherGen)).toMatch(/generation 0000000000000000 of module receiver is not the registered one/);
    expect(otherGenSign?.status).toBe(403);
    expect(detail(otherGenSign)).toMatch(/generation 0000000000000000/);
    expect(badAlgo?.status).toBe(400);
    expect(detail(badAlgo)).toMatch(/algo "HMACSHA1" is not supported/);
  }, 120_000);

  it("attack: sign requests from outside the module's container are refused — a container started by hand with the socket mounted, and the host", async () => {
    const out = await dockerCli(["run", "--rm", "--name", `hand-${tag}`, "--network", "host", "--user", "1000:1000", "--entrypoint", "/usr/bin/node",
      "-v", `${join(device.socketsDir, "sender")}:/run/edgetrust/workload:ro`, "-e", `IOTEDGE_MODULEGENERATIONID=${device.modules.get("sender")?.generationId ?? ""}`,
      image.ref, "-e", SIGN_SCRIPT("sender")]);
    const r = JSON.parse(out.split("\n").pop() ?? "{}") as { status: number; body: string };
    expect(r.status).toBe(403);
    expect(r.body).toMatch(/not in module sender's container/);
    // From the host (root can reach the socket directory): refused too — only the module's own processes sign.
    const host = await execFileAsync("curl", ["-s", "--unix-socket", join(device.socketsDir, "sender", "workload.sock"), "-X", "POST", "-H", "content-type: application/json",
      "--data", JSON.stringify({ keyId: "primary", algo: "HMACSHA256", data: Buffer.from(`x\n${Math.floor(Date.now() / 1000) + 60}`).toString("base64") }),
      `http://localhost/modules/sender/genid/${device.modules.get("sender")?.generationId ?? ""}/sign?api-version=2018-06-28`], { encoding: "utf8" });
    expect(host.stdout).toMatch(/process on the host/);
    // The same request from inside the module's container (docker exec: the module's own cgroup and namespace) is signed.
    const inside = await signInside("sender");
    expect(inside.status).toBe(200);
  }, 180_000);

  it("the same image with its digest swapped under the running container: signs nothing more, the agent removes it, its token is refused at the hub, the pinned image comes back", async () => {
    const before = device.modules.get("receiver")?.generationId;
    // A token the receiver could sign while it ran its attested image (what the SDK holds, or what was copied out).
    const held = await signInside("receiver");
    expect(held.status).toBe(200);
    // Drift: the pinned reference is removed from the engine under the running containers (its image is no longer
    // provably that digest) — the sign route refuses, as the certificate route does.
    await dockerCli(["rmi", "-f", image.ref]);
    const drifted = await signInside("receiver");
    expect(drifted.status).toBe(403);
    expect(drifted.body).toMatch(/runs image .*, not sha256:/);
    // The agent's supervision pass finds the drift: the receiver's container goes (its SDK connection with it), then
    // its registration and SAS key; the agent re-creates it from the pinned digest with a new generation. (Pulling the
    // pinned digest again makes the sender's image provably that digest again: the sender, checked next, stays.)
    const since = hubEvents.length;
    const statuses = await agent.tick();
    expect(statuses.find((m) => m.name === "receiver")).toMatchObject({ state: "running", reason: "recreated: image digest changed" });
    await until("the drifted receiver gone from the hub", () => hubEvents.slice(since).find((e) => (e.event === "disconnected" && e.key === `${DEVICE}/receiver`) || (e.event === "rejected" && e.identity === `${DEVICE}/receiver`)));
    // The drifted receiver's token, presented as the SDK would CONNECT: refused (its key was erased with it).
    const beforeReplay = hubEvents.length;
    const r = await replay("receiver", held.token ?? "");
    expect(r.ok).toBe(false);
    expect(r.err).toMatch(/not authori[sz]ed/i);
    const refused = await until("the drifted receiver's token refused at the hub", () => hubEvents.slice(beforeReplay).find((e) => e.event === "rejected" && e.stage === "connect"));
    expect(refused.reason).toBe("sas-refused");
    const after = device.modules.get("receiver")?.generationId;
    expect(after).toBeDefined();
    expect(after).not.toBe(before);
    // The re-created container (pinned digest, fresh generation and key) connects again with its own new token, and
    // only it: no connection of the receiver under the old generation since the drift.
    await follow("receiver");
    const back = await until("the re-created receiver connected", () => hubEvents.slice(since).find((e) => e.event === "connected" && e.key === `${DEVICE}/receiver`));
    expect(back).toMatchObject({ principal: "module", serial: `sas-generation-${after ?? ""}` });
    expect(hubEvents.slice(since).filter((e) => e.event === "connected" && e.key === `${DEVICE}/receiver`).map((e) => e.serial)).toEqual([`sas-generation-${after ?? ""}`]);
  }, 240_000);

  it("deregistered: the hub cuts the module off, the SDK gets no new token, and its old token is refused at the hub", async () => {
    // A token the sender could sign while registered (what the SDK holds, or what someone copied out of it).
    const held = await signInside("sender");
    expect(held.status).toBe(200);
    // The sender has been connected since it started (the drift above did not touch it).
    const last = hubEvents.filter((e) => (e.event === "connected" || e.event === "disconnected") && e.key === `${DEVICE}/sender`).pop();
    expect(last?.event).toBe("connected");
    const since = hubEvents.length;
    await registrar.deregister("sender", "e2e: deregistered");
    await until("the hub cutting the sender off", () => hubEvents.slice(since).find((e) => e.event === "rejected" && e.identity === `${DEVICE}/sender` && e.reason === "deregistered"));
    // Trying again, the SDK asks its workload socket for a new token: there is none to ask (the daemon closes a
    // module's socket when it is deregistered), so nothing is signed.
    const refusedSign = await signInside("sender");
    expect(refusedSign.token).toBeUndefined();
    expect(refusedSign).toMatchObject({ status: 0, body: expect.stringMatching(/ENOENT|ECONNREFUSED/) });
    // The held token, replayed at the hub exactly as the SDK would CONNECT: refused (the key is gone from the HSM).
    const r = await replay("sender", held.token ?? "");
    expect(r.ok).toBe(false);
    expect(r.err).toMatch(/not authori[sz]ed/i);
    const refused = await until("the replay refused at the hub", () => hubEvents.slice(since).find((e) => e.event === "rejected" && e.stage === "connect"));
    expect(refused.reason).toBe("sas-refused");
    expect(hubEvents.slice(since).some((e) => e.event === "connected" && e.key === `${DEVICE}/sender`)).toBe(false);
  }, 180_000);
});
