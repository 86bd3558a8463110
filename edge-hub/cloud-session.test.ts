import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type mqtt from "mqtt";
import type { MqttClient } from "mqtt";
import { createLogger, freePort } from "../common/index.js";
import { DEV_ATTESTATION, createDevPki } from "../certs-dev/index.js";
import { TEST_POLICY_YAML, connectWithCertificate, nextMessage as nextMessageWithin, startHubProcess, startMosquitto, within } from "./fixtures.js";

/**
 * The hub's upstream session as the cloud sees it, with `edgetrust hub run` as its own process (so it can be killed
 * with SIGKILL) and a private Mosquitto (TLS, client certificates) as the cloud broker on a port of this file's own:
 * C2D messages reach the leaf device and a module; reported properties reach the cloud; and what the cloud sends while
 * the hub is down — a C2D message and a direct method, after a kill -9 and after a graceful stop — is handed over by
 * the broker's persistent session when the hub comes back, held by the hub until the leaf reconnects, and answered.
 */
const quiet = createLogger("certs-dev", { level: "error" });

/** The test policy, plus C2D subscriptions for leaf devices and modules (each to its own topic only). */
const POLICY = TEST_POLICY_YAML.replace("  subscribe:\n", `  subscribe:
    - id: c2d-leaf
      principals: [leaf]
      topics: ["devices/{device}/messages/devicebound/#"]
    - id: c2d-module
      principals: [module]
      topics: ["devices/{device}/modules/{module}/messages/devicebound/#"]
`);

let base: string;
let cleanups: (() => Promise<void> | void)[] = [];
const later = (f: () => Promise<void> | void): void => void cleanups.unshift(f);
const nextMessage = (c: MqttClient, re: RegExp, what: string) => nextMessageWithin(c, re, what, 30_000);
const startHub = (config: string) => startHubProcess(config, later);
const mosquitto = (dir: string, port: number, pkiDir: string): Promise<void> =>
  startMosquitto(dir, port, { cert: join(pkiDir, "edge-hub-server.chain.pem"), key: join(pkiDir, "edge-hub-server.key.pem"), clientCa: join(pkiDir, "trust-bundle.pem") }, later);
const client = (port: number, pkiDir: string, name: string, extra: mqtt.IClientOptions = {}): Promise<MqttClient> =>
  connectWithCertificate(port, pkiDir, name, join(pkiDir, "trust-bundle.pem"), later, extra);

const ridOf = (topic: string) => new URLSearchParams(topic.split("/").pop()?.slice(1)).get("$rid") ?? "";

beforeAll(() => {
  base = mkdtempSync(join(tmpdir(), "edgehub-cloud-"));
});

afterEach(async () => {
  const fs = cleanups;
  cleanups = [];
  for (const f of fs) await f();
});

afterAll(() => {
  if (base) rmSync(base, { recursive: true, force: true });
});

describe("the hub's upstream session: C2D, reported properties, and what the cloud sent while the hub was down", () => {
  it("C2D reaches the leaf and a module; reported patches reach the cloud; a C2D message and a method sent while the hub was down (kill -9, then SIGTERM) are delivered after each restart", async () => {
    const pkiDir = join(base, "pki");
    await createDevPki({ out: pkiDir, trustDomain: "example.com", deviceId: "d1", modules: ["sensor"], leafDeviceId: "leaf1", logger: quiet });
    const state = join(base, "state");
    mkdirSync(state, { recursive: true });
    writeFileSync(join(base, "policy.yaml"), POLICY);
    writeFileSync(join(base, "attested.json"), JSON.stringify({ d1: { sensor: DEV_ATTESTATION } }));
    const upPort = await freePort();
    await mosquitto(base, upPort, pkiDir);
    const cfg = {
      host: "127.0.0.1", port: 0, trustDomain: "example.com",
      serverCertFile: join(pkiDir, "edge-hub-server.chain.pem"), serverKey: join(pkiDir, "edge-hub-server.key.pem"),
      edgeCaFile: join(pkiDir, "edge-ca.cert.pem"), issuingCaFile: join(pkiDir, "issuing-ca.cert.pem"), trustBundleFile: join(pkiDir, "trust-bundle.pem"),
      policyFile: join(base, "policy.yaml"), attestationFile: join(base, "attested.json"), stateDir: state, metricsPort: 0,
      upstreamUrl: `mqtts://localhost:${upPort}`, upstreamKey: join(pkiDir, "device-identity.key.pem"),
      upstreamCertFile: join(pkiDir, "device-identity.chain.pem"), upstreamCaFile: join(pkiDir, "trust-bundle.pem"),
      methodConnectWaitSeconds: 60,
    };
    const config = join(base, "edgetrust.yaml");
    writeFileSync(config, `log:\n  level: info\nhub:\n${Object.entries(cfg).map(([k, v]) => `  ${k}: ${JSON.stringify(v)}`).join("\n")}\n`);

    // The cloud side: a client of the cloud broker that sends C2D and methods and reads what the hub sends up.
    const cloud = await client(upPort, pkiDir, "leaf-leaf1", { clientId: "cloud" });
    await cloud.subscribeAsync(["devices/+/$iothub/twin/PATCH/properties/reported/#", "devices/+/$iothub/methods/res/#"], { qos: 1 });

    let hub = startHub(config);
    let port = Number((await hub.waitFor(/edge hub listening on 127\.0\.0\.1:(\d+)/, "hub listening"))[1]);
    const leafUp = async () => {
      const mark = hub.out().length;
      const lf = await client(port, pkiDir, "leaf-leaf1", { clientId: "leaf1" });
      await lf.subscribeAsync(["devices/leaf1/messages/devicebound/#", "$iothub/methods/POST/#", "$iothub/twin/res/#"], { qos: 1 });
      return { lf, mark };
    };
    let { lf, mark } = await leafUp();
    // The hub listens upstream for the leaf's C2D and methods while it is connected.
    await hub.waitFor(/upstream subscribed[^\n]*devices\/leaf1\/messages\/devicebound\/#|devices\/leaf1\/messages\/devicebound\/#[^\n]*upstream subscribed/, "the leaf's C2D filter upstream", mark);

    // C2D, live: on the leaf's own topic, property bag intact.
    const c2d = nextMessage(lf, /^devices\/leaf1\/messages\/devicebound\//, "C2D at the leaf");
    await cloud.publishAsync("devices/leaf1/messages/devicebound/%24.mid=c1&kind=config", JSON.stringify({ setpoint: 21 }), { qos: 1 });
    const got = await c2d;
    expect(got.topic).toBe("devices/leaf1/messages/devicebound/%24.mid=c1&kind=config");
    expect(JSON.parse(got.payload.toString())).toEqual({ setpoint: 21 });
    // C2D for a module of this device (the hub listens upstream for all of them): on its own topic, to it.
    const sensor = await client(port, pkiDir, "module-sensor");
    await sensor.subscribeAsync(["devices/d1/modules/sensor/messages/devicebound/#"], { qos: 1 });
    const mc2d = nextMessage(sensor, /^devices\/d1\/modules\/sensor\/messages\/devicebound\//, "C2D at the module");
    await cloud.publishAsync("devices/d1/modules/sensor/messages/devicebound/%24.mid=m1&kind=mode", JSON.stringify({ mode: "eco" }), { qos: 1 });
    const mgot = await mc2d;
    expect(mgot.topic).toBe("devices/d1/modules/sensor/messages/devicebound/%24.mid=m1&kind=mode");
    expect(JSON.parse(mgot.payload.toString())).toEqual({ mode: "eco" });
    await sensor.endAsync(true);

    // Reported properties: applied in the hub's twin (204 with its version) and forwarded to the cloud.
    const ack = nextMessage(lf, /^\$iothub\/twin\/res\//, "reported patch answer");
    const up = nextMessage(cloud, /^devices\/leaf1\/\$iothub\/twin\/PATCH\/properties\/reported\//, "reported patch in the cloud");
    await lf.publishAsync("$iothub/twin/PATCH/properties/reported/?$rid=r1", JSON.stringify({ firmware: "1.4.2" }), { qos: 0 });
    const version = new URLSearchParams((await ack).topic.split("/").pop()?.slice(1)).get("$version");
    expect((await ack).topic).toMatch(/^\$iothub\/twin\/res\/204\//);
    const rep = await up;
    expect(rep.topic).toBe(`devices/leaf1/$iothub/twin/PATCH/properties/reported/?$version=${version ?? ""}`);
    expect(JSON.parse(rep.payload.toString())).toEqual({ firmware: "1.4.2" });

    // kill -9: no goodbye to the cloud broker, which keeps the hub's session.
    hub.proc.kill("SIGKILL");
    expect(await within(hub.exited, 10_000, "hub killed")).toEqual({ code: null, signal: "SIGKILL" });
    await lf.endAsync(true);
    // While the hub is down, the cloud sends a C2D message and calls a method on the leaf (QoS 1).
    await cloud.publishAsync("devices/leaf1/messages/devicebound/%24.mid=c2", "sent while the hub was down", { qos: 1 });
    await cloud.publishAsync("devices/leaf1/$iothub/methods/POST/blink/?$rid=77", JSON.stringify({ times: 2 }), { qos: 1 });

    // The hub restarts on the same state: the broker hands the queued messages over; the C2D message is held and the
    // method waits, since the leaf has not reconnected yet.
    hub = startHub(config);
    port = Number((await hub.waitFor(/edge hub listening on 127\.0\.0\.1:(\d+)/, "hub restarted"))[1]);
    await hub.waitFor(/C2D message held until its device connects/, "the C2D message held for the leaf");
    await hub.waitFor(/cloud method relayed/, "the method taken from the broker");
    const res = nextMessage(cloud, /^devices\/leaf1\/\$iothub\/methods\/res\//, "the method's answer in the cloud");
    const mark2 = hub.out().length;
    // The leaf comes back (a persistent session this time, as the Azure SDKs open: the hold is cleared by its PUBACK).
    const back = await client(port, pkiDir, "leaf-leaf1", { clientId: "leaf1", clean: false });
    const c2dBack = nextMessage(back, /^devices\/leaf1\/messages\/devicebound\//, "held C2D at the leaf");
    const method = nextMessage(back, /^\$iothub\/methods\/POST\/blink\//, "the method at the leaf");
    await back.subscribeAsync(["devices/leaf1/messages/devicebound/#", "$iothub/methods/POST/#"], { qos: 1 });
    lf = back;
    mark = mark2;
    const held = await c2dBack;
    expect(held.topic).toBe("devices/leaf1/messages/devicebound/%24.mid=c2");
    expect(held.payload.toString()).toBe("sent while the hub was down");
    const m = await method;
    expect(JSON.parse(m.payload.toString())).toEqual({ times: 2 });
    await lf.publishAsync(`$iothub/methods/res/200/?$rid=${ridOf(m.topic)}`, JSON.stringify({ blinked: 2 }), { qos: 0 });
    const answer = await res;
    expect(answer.topic).toBe("devices/leaf1/$iothub/methods/res/200/?$rid=77");
    expect(JSON.parse(answer.payload.toString())).toEqual({ blinked: 2 });
    expect(hub.out().slice(mark)).not.toMatch(/C2D delivery failed/);

    // A graceful stop (SIGTERM, as systemd stops the hub) must leave the upstream session as the cloud broker had it:
    // disconnecting its clients on the way out is not the leaf going away, so the leaf's method filter stays.
    hub.proc.kill("SIGTERM");
    expect(await within(hub.exited, 30_000, "hub stopped")).toEqual({ code: 0, signal: null });
    await lf.endAsync(true);
    await cloud.publishAsync("devices/leaf1/messages/devicebound/%24.mid=c3", "sent while the hub was stopped", { qos: 1 });
    await cloud.publishAsync("devices/leaf1/$iothub/methods/POST/blink/?$rid=78", JSON.stringify({ times: 3 }), { qos: 1 });
    hub = startHub(config);
    port = Number((await hub.waitFor(/edge hub listening on 127\.0\.0\.1:(\d+)/, "hub restarted after SIGTERM"))[1]);
    await hub.waitFor(/C2D message held until its device connects/, "the C2D message held for the leaf (after SIGTERM)");
    await hub.waitFor(/cloud method relayed/, "the method taken from the broker (after SIGTERM)");
    const res2 = nextMessage(cloud, /^devices\/leaf1\/\$iothub\/methods\/res\/[^/]+\/\?\$rid=78$/, "the second method's answer in the cloud");
    const mark3 = hub.out().length;
    const again = await client(port, pkiDir, "leaf-leaf1", { clientId: "leaf1", clean: false });
    const c2dAgain = nextMessage(again, /^devices\/leaf1\/messages\/devicebound\//, "held C2D at the leaf (after SIGTERM)");
    const method2 = nextMessage(again, /^\$iothub\/methods\/POST\/blink\//, "the method at the leaf (after SIGTERM)");
    await again.subscribeAsync(["devices/leaf1/messages/devicebound/#", "$iothub/methods/POST/#"], { qos: 1 });
    const held2 = await c2dAgain;
    expect(held2.topic).toBe("devices/leaf1/messages/devicebound/%24.mid=c3");
    expect(held2.payload.toString()).toBe("sent while the hub was stopped");
    const m2 = await method2;
    expect(JSON.parse(m2.payload.toString())).toEqual({ times: 3 });
    await again.publishAsync(`$iothub/methods/res/200/?$rid=${ridOf(m2.topic)}`, JSON.stringify({ blinked: 3 }), { qos: 0 });
    const answer2 = await res2;
    expect(answer2.topic).toBe("devices/leaf1/$iothub/methods/res/200/?$rid=78");
    expect(JSON.parse(answer2.payload.toString())).toEqual({ blinked: 3 });
    expect(hub.out().slice(mark3)).not.toMatch(/C2D delivery failed/);
  }, 240_000);
});
