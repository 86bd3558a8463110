import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import mqtt, { type MqttClient } from "mqtt";
import { createLogger, freePort } from "../common/index.js";
import { parsePolicy } from "../policy/index.js";
import { Client, Message } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import { DEVICE, TEST_POLICY_YAML, TestPki, digest, startTestHub, stopTestHub, writeTemp, type Credential, type TestHub } from "./fixtures.js";
import { HubStore } from "./store.js";
import { Upstream } from "./upstream.js";
import { parseRoutes } from "./routes.js";
import type { Rejection } from "./hub.js";

/**
 * Real clients through the hub: the unmodified Azure IoT device SDK (X.509 DeviceClient, which always dials port 8883,
 * so this hub binds 127.0.0.1:8883 — tests run as root) and mosquitto_pub/mosquitto_sub with module certificates. The
 * hub's upstream is a private Mosquitto (TLS, client certificates) on a port of this file's own: the cloud side.
 */
let pki: TestPki;
let t: TestHub;
let leaf: Credential;
let monitor: Credential;
let sensor: Credential;
const ATT = { imageDigest: digest("e"), manifestVersion: 1 };
let cloudBroker: ChildProcess;
let cloudPort: number;
let upstream: Upstream;
const granted = new Set<string>();

// Generous: only a hung client is killed; a loaded machine can take seconds for a TLS handshake.
function run(cmd: string, args: string[], timeoutMs = 30_000): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    p.stdout.on("data", (d: Buffer) => (out += d.toString()));
    p.stderr.on("data", (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => p.kill("SIGKILL"), timeoutMs);
    p.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
}

/** Resolves when the hub has `identity`'s subscription in place (no fixed wait for a child process to subscribe). */
function subscribedBy(identity: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${identity} did not subscribe`)), 20_000);
    const on = (id: { key: string }) => {
      if (id.key !== identity) return;
      clearTimeout(timer);
      t.hub.off("subscribed", on);
      resolve();
    };
    t.hub.on("subscribed", on);
  });
}

function files(name: string, c: Credential): string[] {
  return ["--cert", writeTemp(t.dir, `${name}.pem`, c.chainPem), "--key", writeTemp(t.dir, `${name}.key`, c.keyPem)];
}

beforeAll(async () => {
  pki = await TestPki.create();
  cloudPort = await freePort();
  const d = pki.out;
  const conf = writeTemp(d, "cloud-mosquitto.conf", [`listener ${cloudPort} 127.0.0.1`, `cafile ${join(d, "trust-bundle.pem")}`, `certfile ${join(d, "edge-hub-server.chain.pem")}`,
    `keyfile ${join(d, "edge-hub-server.key.pem")}`, "require_certificate true", "allow_anonymous true", "persistence false", "user root", "log_dest stderr", ""].join("\n"));
  cloudBroker = spawn("mosquitto", ["-c", conf], { stdio: ["ignore", "ignore", "pipe"] });
  await new Promise<void>((resolve, reject) => {
    let log = "";
    cloudBroker.stderr?.on("data", (b: Buffer) => {
      log = (log + b.toString()).slice(-8192); // always drained: a full pipe would block Mosquitto
      if (/mosquitto version \S+ running/.test(log)) resolve();
    });
    cloudBroker.once("exit", () => reject(new Error(`mosquitto exited: ${log}`)));
  });
  const store = new HubStore(join(pki.dir, "interop-hub.db"), { maxMessages: 1000, maxBytes: 1 << 20 });
  upstream = new Upstream({
    url: `mqtts://127.0.0.1:${cloudPort}`, clientId: DEVICE, store, maxInflight: 10, drainRatePerSecond: 100, reconnectMs: 200, log: createLogger("edge-hub", { level: "silent" }),
    tls: { cert: readFileSync(join(d, "device-identity.chain.pem")), key: readFileSync(join(d, "device-identity.key.pem")), ca: pki.rootPem(), servername: "localhost" },
  });
  upstream.on("subscribed", (fs) => fs.forEach((f) => granted.add(f)));
  t = await startTestHub(pki, {
    port: 8883, store, upstream,
    // The test policy, and a leaf device may take its own C2D messages.
    policy: parsePolicy(TEST_POLICY_YAML.replace("  subscribe:\n", '  subscribe:\n    - id: c2d\n      principals: [leaf]\n      topics: ["devices/{device}/messages/devicebound/#"]\n'), "interop-policy.yaml"),
    routes: parseRoutes({ leafToMonitor: `FROM /messages/* WHERE $connectionDeviceId = 'leaf1' INTO BrokeredEndpoint("/modules/monitor/inputs/fromleaf")` }),
  });
  t.attestation.register(DEVICE, "monitor", ATT);
  t.attestation.register(DEVICE, "sensor", ATT);
  leaf = await pki.leaf("leaf1");
  monitor = await pki.module("monitor", ATT);
  sensor = await pki.module("sensor", ATT);
});

afterAll(async () => {
  await stopTestHub(t);
  cloudBroker?.kill("SIGTERM");
  pki.cleanup();
});

describe("edge hub with real clients", () => {
  it("an unmodified Azure IoT DeviceClient (X.509) sends telemetry and round-trips its twin", async () => {
    const ca = writeTemp(t.dir, "root.pem", pki.rootPem());
    const subscribed = subscribedBy("d1/monitor");
    const sub = spawn("mosquitto_sub", ["-h", "127.0.0.1", "-p", "8883", "--cafile", ca, ...files("monitor", monitor), "--insecure",
      "-i", "monitor", "-t", "devices/d1/modules/monitor/inputs/#", "-q", "1", "-C", "1", "-v", "-W", "20"], { stdio: ["ignore", "pipe", "pipe"] });
    let subOut = "";
    sub.stdout.on("data", (d: Buffer) => (subOut += d.toString()));
    sub.stderr.on("data", (d: Buffer) => (subOut += d.toString()));
    const subDone = new Promise<void>((r) => sub.on("close", () => r()));
    await subscribed;

    const client = Client.fromConnectionString("HostName=localhost;DeviceId=leaf1;x509=true", Mqtt);
    await client.setOptions({ cert: leaf.chainPem, key: leaf.keyPem, ca: pki.rootPem() });
    try {
      await client.open();
      const msg = new Message(JSON.stringify({ temperature: 22.5 }));
      msg.properties.add("kind", "telemetry");
      await client.sendEvent(msg);
      await subDone; // -C 1: exits on the first message; -W 20 bounds it
      expect(subOut).toMatch(/^devices\/d1\/modules\/monitor\/inputs\/fromleaf\/\S*kind=telemetry\S* \{"temperature":22.5\}/);

      const twin = await client.getTwin();
      await new Promise<void>((resolve, reject) => twin.properties.reported.update({ firmware: "1.2.3" }, (err?: Error) => (err ? reject(err) : resolve())));
      const again = await client.getTwin();
      const reported = again.properties.reported as unknown as { firmware?: string };
      expect(reported.firmware).toBe("1.2.3");
      expect(t.store.getTwin("leaf1").reported).toEqual({ firmware: "1.2.3" });
    } finally {
      await client.close();
      sub.kill();
    }
  });

  it("mosquitto_pub/mosquitto_sub with module certificates: an allowed publish arrives, a denied topic is refused", async () => {
    const ca = writeTemp(t.dir, "root.pem", pki.rootPem());
    const common = ["-h", "127.0.0.1", "-p", "8883", "--cafile", ca, "--insecure", "-q", "1"];
    const subscribed = subscribedBy("d1/monitor");
    const sub = spawn("mosquitto_sub", [...common, ...files("monitor", monitor), "-t", "status/#", "-C", "1", "-v", "-W", "15"], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    sub.stdout.on("data", (d: Buffer) => (out += d.toString()));
    const done = new Promise<void>((r) => sub.on("close", () => r()));
    await subscribed;
    const ok = await run("mosquitto_pub", [...common, ...files("sensor", sensor), "-t", "status/d1/sensor", "-m", "up"]);
    expect(ok.code).toBe(0);
    await done;
    expect(out.trim()).toBe("status/d1/sensor up");

    const seen = new Promise<Rejection>((r) => t.hub.once("rejected", r));
    const denied = await run("mosquitto_pub", [...common, ...files("sensor2", sensor), "-t", "devices/d1/modules/monitor/inputs/x/", "-m", "evil"]);
    expect((await seen).reason).toBe("policy-denied");
    // mosquitto_pub reports success for a QoS 1 publish only on PUBACK; the hub closes the connection instead.
    expect(denied.code).not.toBe(0);

    const deniedSub = await run("mosquitto_sub", [...common, ...files("sensor3", sensor), "-t", "#", "-C", "1", "-W", "15"]);
    expect(deniedSub.out).toBe("");
    expect(deniedSub.err).toMatch(/denied/i);
  });

  it("an unmodified Azure IoT DeviceClient (X.509) receives a cloud-to-device message from upstream, properties intact, and completes it", async () => {
    const client = Client.fromConnectionString("HostName=localhost;DeviceId=leaf1;x509=true", Mqtt);
    await client.setOptions({ cert: leaf.chainPem, key: leaf.keyPem, ca: pki.rootPem() });
    let cloud: MqttClient | undefined;
    try {
      const got = new Promise<Message>((resolve) => client.on("message", (m: Message) => resolve(m)));
      const leafSubscribed = subscribedBy("leaf1");
      await client.open();
      await leafSubscribed;
      // The hub listens upstream for the leaf's C2D once the leaf is connected.
      const deadline = Date.now() + 20_000;
      while (!granted.has("devices/leaf1/messages/devicebound/#")) {
        if (Date.now() > deadline) throw new Error(`the hub did not subscribe upstream for leaf1's C2D: ${[...granted].join(", ")}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      cloud = await mqtt.connectAsync(`mqtts://127.0.0.1:${cloudPort}`, { cert: leaf.chainPem, key: leaf.keyPem, ca: pki.rootPem(), servername: "localhost", clientId: "cloud", reconnectPeriod: 0 });
      await cloud.publishAsync("devices/leaf1/messages/devicebound/%24.mid=c2d-1&%24.ct=text%2Fplain&color=red", "turn left", { qos: 1 });
      const m = await Promise.race([got, new Promise<never>((_, rej) => setTimeout(() => rej(new Error("no C2D message at the SDK")), 20_000))]);
      expect(m.getBytes().toString("utf8")).toBe("turn left");
      expect(m.messageId).toBe("c2d-1");
      expect(m.contentType).toBe("text/plain");
      expect(m.properties.getValue("color")).toBe("red");
      await client.complete(m);
    } finally {
      await cloud?.endAsync(true);
      await client.close();
    }
  });
});
