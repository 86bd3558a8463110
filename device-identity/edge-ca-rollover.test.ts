import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { Value } from "@sinclair/typebox/value";
import mqtt from "mqtt";
import { stringify } from "yaml";
import { HsmConfig, SOFTHSM_MODULE, type KeyStore } from "../hsm/index.js";
import { ClientVerifier, CrlCache, EdgeHub, HubStore } from "../edge-hub/index.js";
import { testPolicy } from "../edge-hub/fixtures.js";
import { DockerClient, ensureImage, type ResolvedImage } from "../engine/index.js";
import { createModuleContainer } from "../edge-agent/index.js";
import { buildBusyboxImage, DOCKER_SOCKET } from "../test/fixtures/images.js";
import { DeviceConfig } from "./config.js";
import { identityFromConfig } from "./daemon.js";
import { ManagementClient, ManagementAttestationSource } from "../identity-api/index.js";
import { splitPems } from "./state.js";
import { execFileAsync, makeTokens, runDaemon, silentLogger, startCa, tmp, TRUST_DOMAIN, type Daemon, type RunningCa, type Tokens } from "./test-helpers.js";

const DEVICE = "dev-roll";
// Tagged: the container is named edgetrust-<module> on the shared engine, and creating one replaces any of that name.
const MODULE = `sensor${process.pid}`;
const docker = new DockerClient({ socketPath: DOCKER_SOCKET });

function certs(file: string): x509.X509Certificate[] {
  return splitPems(readFileSync(file, "utf8")).map((p) => new x509.X509Certificate(p));
}

/** The module side: its own key (never leaves it), a CSR, curl on its workload socket. */
async function moduleCredential(dir: string, socket: string, name: string): Promise<{ cert: string; key: string; ca: string; edgeCaSerial: string }> {
  const keyFile = join(dir, `${name}.key`);
  const csr = execFileSync("openssl", ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", keyFile, "-subj", `/CN=${MODULE}`], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
  const call = async (method: string, path: string, body?: unknown): Promise<string> => {
    const args = ["-s", "--unix-socket", socket, "-X", method, `http://localhost${path}`];
    if (body) args.push("-H", "content-type: application/json", "--data-binary", JSON.stringify(body));
    return (await execFileAsync("curl", args, { encoding: "utf8" })).stdout;
  };
  const text = await call("POST", "/v1/certificate", { csr });
  const issued = JSON.parse(text) as { certificate: string; chain: string[] };
  if (!issued.certificate) throw new Error(`no certificate: ${text}`);
  const bundle = JSON.parse(await call("GET", "/v1/trust-bundle")) as { certificates: string[] };
  return {
    cert: [issued.certificate, ...issued.chain].join("\n"), key: readFileSync(keyFile, "utf8"), ca: bundle.certificates.join("\n"),
    edgeCaSerial: new x509.X509Certificate(issued.chain[0] ?? "").serialNumber,
  };
}

describe("Edge CA renewal without module outages (daemon child + EdgeHub in-process + mqtt.js over mTLS)", () => {
  let tokens: Tokens;
  let ca: RunningCa;
  let keys: KeyStore;
  let dir: string;
  let cfg: DeviceConfig;
  let daemon: Daemon;
  let image: ResolvedImage;
  let containerId: string;
  let hub: EdgeHub;
  let verifier: ClientVerifier;
  let clientCa: string[];
  let attestation: ManagementAttestationSource;
  let store: HubStore;
  const clients: mqtt.MqttClient[] = [];
  const hsm: HsmConfig = { ...(Value.Default(HsmConfig, {}) as HsmConfig), module: SOFTHSM_MODULE, tokenLabel: "device", engine: "pkcs11" };

  beforeAll(async () => {
    tokens = await makeTokens();
    ca = await startCa(tokens, { deviceId: DEVICE });
    keys = await tokens.openDevice();
    dir = tmp("et-roll-");
    cfg = {
      ...(Value.Default(DeviceConfig, {}) as DeviceConfig),
      deviceId: DEVICE, trustDomain: TRUST_DOMAIN, stateDir: join(dir, "identity"), caUrl: ca.url,
      managementSocket: join(dir, "mgmt.sock"), workloadDir: join(dir, "modules"), hubServerCertFile: join(dir, "hub", "server.chain.pem"),
      dockerSocket: DOCKER_SOCKET, rotateKeys: true,
    };
    writeFileSync(join(dir, "ca-trust.pem"), ca.trustPem);
    await identityFromConfig({ ...cfg, caTrustFile: join(dir, "ca-trust.pem") }, hsm, { keys, log: silentLogger() }).provision(ca.adminToken);
    const configFile = join(dir, "edgetrust.yaml");
    writeFileSync(configFile, stringify({ log: { level: "info" }, hsm: { ...hsm, pinFile: tokens.pinFile }, device: cfg }));
    daemon = runDaemon(configFile, { OPENSSL_CONF: tokens.opensslConf, SOFTHSM2_CONF: tokens.hsm.conf });
    await daemon.waitLog((l) => l.msg === "device identity daemon running", "daemon start");

    // A real module container, registered by "the agent" over the management socket.
    image = await ensureImage(docker, buildBusyboxImage("roll", `roll-${process.pid}-${Date.now()}`));
    containerId = await createModuleContainer(docker, {
      deviceId: DEVICE, deploymentId: "dep", manifestVersion: 1, image, user: "1000:1000", capAdd: [], binds: [], devices: [], network: "none", readOnlyRootfs: true, env: {},
      module: MODULE, cmd: ["sleep", "300"],
    });
    await docker.startContainer(containerId);
    const mgmt = new ManagementClient(cfg.managementSocket);
    await mgmt.register({ name: MODULE, containerId, imageRepository: image.repository, imageDigest: image.digest, manifestVersion: 1, deploymentId: "dep", uid: 1000, gid: 1000 });

    // The hub: server certificate from the cloud CA (software key: this process has no pkcs11 engine), client CAs and
    // Edge CAs from the daemon's state files, attestation followed over the management socket.
    const hubKey = join(dir, "hub.key");
    const hubCsr = execFileSync("openssl", ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", hubKey, "-subj", "/CN=edgehub"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
    const hubCert = await ca.ca.issue({ csrPem: hubCsr, profile: "edge-hub-server", deviceId: DEVICE }, "test");
    const sd = cfg.stateDir;
    const crl = new CrlCache({ source: "", cacheDir: join(dir, "crl"), issuers: certs(join(sd, "issuing-ca.cert.pem")), require: false, log: silentLogger() });
    mkdirSync(join(dir, "crl"), { recursive: true });
    await crl.start();
    attestation = new ManagementAttestationSource(mgmt, DEVICE, { waitSeconds: 5, retryMs: 200, log: silentLogger() });
    await attestation.start();
    verifier = new ClientVerifier({ trustDomain: TRUST_DOMAIN, edgeCas: certs(join(sd, "edge-ca.cert.pem")), issuingCas: certs(join(sd, "issuing-ca.cert.pem")), crl, attestation });
    clientCa = splitPems(readFileSync(join(sd, "trust-bundle.pem"), "utf8"));
    store = new HubStore(join(dir, "hub.db"), { maxMessages: 1000, maxBytes: 1 << 24 });
    hub = new EdgeHub({
      host: "127.0.0.1", port: 0, serverTls: () => ({ cert: hubCert.chainPem, key: readFileSync(hubKey) }), clientCa, verifier, attestation,
      policy: testPolicy(), limits: { maxPayloadBytes: 65536, maxTopicLevels: 12, allowRootWildcard: false }, store, routes: [],
      defaultRoute: { priority: 0, ttlSeconds: 3600 }, crl, log: silentLogger(),
    });
    await hub.start();
  });

  afterAll(async () => {
    for (const c of clients) c.end(true);
    await hub?.stop();
    store?.close?.();
    await attestation?.stop();
    if (daemon) {
      daemon.proc.kill("SIGTERM");
      await daemon.exit;
    }
    if (containerId) await docker.removeContainer(containerId).catch(() => undefined);
    await keys?.close();
    await ca?.close();
    await tokens?.caKeys.close();
    tokens?.hsm.cleanup();
  });

  const connect = async (cred: { cert: string; key: string; ca: string }): Promise<mqtt.MqttClient> => {
    const c = await mqtt.connectAsync(`mqtts://127.0.0.1:${hub.boundPort}`, {
      cert: cred.cert, key: cred.key, ca: cred.ca, servername: "localhost", reconnectPeriod: 0, protocolVersion: 4, clientId: "ignored", connectTimeout: 10_000,
    });
    clients.push(c);
    return c;
  };
  const telemetry = `devices/${DEVICE}/modules/${MODULE}/messages/events/`;

  it("a module connected with a certificate from the old Edge CA stays connected across the switch; a certificate from the new Edge CA is accepted too", async () => {
    const socket = join(cfg.workloadDir, MODULE, "workload.sock");
    const oldCred = await moduleCredential(dir, socket, "old");
    const first = await connect(oldCred);
    let closed = 0;
    first.on("close", () => { closed++; });
    await first.publishAsync(telemetry, "before", { qos: 1 });

    // The switch: the daemon renews its Edge CA with a new HSM key (mTLS to ca-service with the old Edge CA key).
    const oldEdgeCas = certs(join(cfg.stateDir, "edge-ca.cert.pem"));
    expect(oldEdgeCas).toHaveLength(1);
    await new ManagementClient(cfg.managementSocket).renew("edge-ca", true);
    const edgeCas = certs(join(cfg.stateDir, "edge-ca.cert.pem"));
    expect(edgeCas).toHaveLength(2); // new first, the old one still trusted (overlap)
    expect(edgeCas[1]?.serialNumber).toBe(oldEdgeCas[0]?.serialNumber);
    // What the hub does when the files change: both Edge CAs pinned, new server certificate context.
    verifier.setCas(edgeCas, certs(join(cfg.stateDir, "issuing-ca.cert.pem")));
    clientCa.splice(0, clientCa.length, ...splitPems(readFileSync(join(cfg.stateDir, "trust-bundle.pem"), "utf8")));
    await hub.reloadServerCertificate();

    // The trust bundle modules fetch now carries both Edge CAs.
    const newCred = await moduleCredential(dir, socket, "new");
    expect(newCred.edgeCaSerial).toBe(edgeCas[0]?.serialNumber);
    expect(newCred.edgeCaSerial).not.toBe(oldCred.edgeCaSerial);
    const bundle = splitPems(newCred.ca).map((p) => new x509.X509Certificate(p).serialNumber);
    expect(bundle).toEqual(expect.arrayContaining(edgeCas.map((c) => c.serialNumber)));

    // The old connection never dropped and still works.
    await first.publishAsync(telemetry, "after", { qos: 1 });
    expect(closed).toBe(0);
    expect(first.connected).toBe(true);
    // A module certificate from the new Edge CA connects (its old session is taken over: same identity).
    first.removeAllListeners("close");
    const second = await connect(newCred);
    await second.publishAsync(telemetry, "new-ca", { qos: 1 });
    expect(second.connected).toBe(true);
    // And during the overlap a module still holding an old-CA certificate can reconnect.
    await second.endAsync();
    const again = await connect(oldCred);
    await again.publishAsync(telemetry, "old-ca-reconnect", { qos: 1 });
    expect(again.connected).toBe(true);
  });
});
