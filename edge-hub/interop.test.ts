import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawn } from "node:child_process";
import { Client, Message } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import { DEVICE, TestPki, digest, startTestHub, stopTestHub, writeTemp, type Credential, type TestHub } from "./fixtures.js";
import { parseRoutes } from "./routes.js";
import type { Rejection } from "./hub.js";

/**
 * Real clients through the hub: the unmodified Azure IoT device SDK (X.509 DeviceClient, which always dials port 8883,
 * so this hub binds 127.0.0.1:8883 — tests run as root) and mosquitto_pub/mosquitto_sub with module certificates.
 */
let pki: TestPki;
let t: TestHub;
let leaf: Credential;
let monitor: Credential;
let sensor: Credential;
const ATT = { imageDigest: digest("e"), manifestVersion: 1 };

function run(cmd: string, args: string[], timeoutMs = 8000): Promise<{ code: number | null; out: string; err: string }> {
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
  t = await startTestHub(pki, {
    port: 8883,
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
      await Promise.race([subDone, new Promise((r) => setTimeout(r, 10_000))]);
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

    const deniedSub = await run("mosquitto_sub", [...common, ...files("sensor3", sensor), "-t", "#", "-C", "1", "-W", "3"]);
    expect(deniedSub.out).toBe("");
    expect(deniedSub.err).toMatch(/denied/i);
  });
});
