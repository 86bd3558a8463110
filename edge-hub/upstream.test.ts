import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { spawn, type ChildProcess } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import mqtt, { type MqttClient } from "mqtt";
import { createLogger, holdDownPort, isEdgeTrustError } from "../common/index.js";
import { DEVICE, TestPki, digest, startTestHub, stopTestHub, testPolicy, writeTemp, type Credential, type TestHub, nextMessage as nextMessageWithin, within } from "./fixtures.js";
import { parseRoutes } from "./routes.js";
import { Redactor } from "./privacy.js";
import { HubStore } from "./store.js";
import { Upstream } from "./upstream.js";
import type { Rejection } from "./hub.js";

/**
 * Durable store-and-forward: a real Mosquitto with TLS + client certificates is the "cloud" broker, started from a
 * config file on a loopback port this file owns. Messages sent while it is down wait in the SQLite outbox, survive a
 * hub restart, and arrive in order when it is up; privacy rules apply before anything leaves. Cloud → device direct
 * methods and desired properties come back down the same upstream connection.
 *
 * Determinism (these tests once failed only under parallel load):
 * - "upstream down" is a port this file holds with a listener that closes every connection, never a port that was
 *   merely free a while ago (another process could bind it, and a previous test's broker could still be on it);
 * - Mosquitto's log pipe is always read (an unread stderr pipe fills and blocks the broker mid-test);
 * - every hub, client and broker a test starts is closed in afterEach, so one failure never leaks into the next test;
 * - "delivered" means the hub saw the cloud broker's PUBACK (its own outbox is empty), not only that a subscriber
 *   received the message (the broker forwards before the hub processes its PUBACK).
 */
let pki: TestPki;
let dir: string;
let leaf: Credential;
let sensor: Credential;
let monitor: Credential;
const SECRET = Buffer.alloc(32, 7);
const ATT = { imageDigest: digest("f"), manifestVersion: 2 };
const silent = createLogger("edge-hub", { level: "silent" });

/** Undo-list of what the running test started, newest first. */
let cleanups: (() => Promise<void> | void)[] = [];
const later = (f: () => Promise<void> | void): void => void cleanups.unshift(f);
const nextMessage = (c: MqttClient, re: RegExp, what: string) => nextMessageWithin(c, re, what, 15_000);


function tlsFor(c: Credential) {
  return { cert: c.chainPem, key: c.keyPem, ca: pki.rootPem(), servername: "localhost" };
}

/** Mosquitto (TLS, client certificates required) on `port`; resolves when it says it is running. */
async function startMosquitto(port: number): Promise<ChildProcess> {
  const d = pki.out;
  const conf = writeTemp(dir, `mosquitto-${port}.conf`, [
    `listener ${port} 127.0.0.1`,
    `cafile ${join(d, "trust-bundle.pem")}`,
    `certfile ${join(d, "edge-hub-server.chain.pem")}`,
    `keyfile ${join(d, "edge-hub-server.key.pem")}`,
    "require_certificate true",
    "allow_anonymous true",
    "persistence false",
    "user root",
    "log_dest stderr",
    "log_type error",
    "log_type warning",
    "log_type notice",
    "log_type information",
    "",
  ].join("\n"));
  const p = spawn("mosquitto", ["-c", conf], { stdio: ["ignore", "ignore", "pipe"] });
  later(async () => {
    if (p.exitCode !== null || p.signalCode !== null) return;
    const done = new Promise<void>((r) => p.once("exit", () => r()));
    p.kill("SIGTERM");
    await done;
  });
  let log = "";
  await within(new Promise<void>((resolve, reject) => {
    // Always drain the pipe (kept short): a full stderr pipe blocks Mosquitto on its next log line.
    p.stderr?.on("data", (b: Buffer) => {
      log = (log + b.toString()).slice(-8192);
      if (/mosquitto version \S+ running/.test(log)) resolve();
    });
    p.once("exit", (code) => reject(new Error(`mosquitto exited (${code}): ${log}`)));
  }), 15_000, "mosquitto start");
  return p;
}

async function stopProcess(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const done = new Promise<void>((r) => p.once("exit", () => r()));
  p.kill("SIGTERM");
  await done;
}

interface UpHub extends TestHub {
  upstream: Upstream;
  /** Filters the cloud broker has granted the hub so far. */
  granted: Set<string>;
  /** Resolves once every filter is granted. */
  subscribed(filters: string[]): Promise<void>;
  stop(): Promise<void>;
}

async function hubWithUpstream(port: number, storeFile: string, o: { maxMessages?: number; methodTimeoutMs?: number } = {}): Promise<UpHub> {
  const d = pki.out;
  const store = new HubStore(storeFile, { maxMessages: o.maxMessages ?? 1000, maxBytes: 1 << 24 });
  const upstream = new Upstream({
    url: `mqtts://127.0.0.1:${port}`, clientId: DEVICE,
    tls: { cert: readFileSync(join(d, "device-identity.chain.pem")), key: readFileSync(join(d, "device-identity.key.pem")), ca: pki.rootPem(), servername: "localhost" },
    store, maxInflight: 10, drainRatePerSecond: 500, reconnectMs: 200, log: silent,
  });
  const granted = new Set<string>();
  upstream.on("subscribed", (fs) => fs.forEach((f) => granted.add(f)));
  const t = await startTestHub(pki, {
    store, upstream, routes: parseRoutes({ all: "FROM /messages/* INTO $upstream" }),
    redactor: new Redactor(testPolicy().privacy?.redact ?? [], SECRET),
    ...(o.methodTimeoutMs ? { methodTimeoutMs: o.methodTimeoutMs } : {}),
  });
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await stopTestHub(t);
  };
  later(stop);
  t.attestation.register(DEVICE, "sensor", ATT);
  t.attestation.register(DEVICE, "monitor", ATT);
  const subscribed = (filters: string[]) => within(new Promise<void>((resolve) => {
    const check = () => {
      if (filters.every((f) => granted.has(f))) {
        upstream.off("subscribed", check);
        resolve();
      }
    };
    upstream.on("subscribed", check);
    check();
  }), 15_000, `upstream subscriptions ${filters.join(", ")}`);
  return Object.assign(t, { upstream, granted, subscribed, stop });
}

async function client(port: number, cred: Credential, extra: mqtt.IClientOptions = {}): Promise<MqttClient> {
  const c = await within(mqtt.connectAsync(`mqtts://127.0.0.1:${port}`, { ...tlsFor(cred), reconnectPeriod: 0, protocolVersion: 4, connectTimeout: 10_000, ...extra }), 15_000, "connect");
  later(() => c.endAsync(true).then(() => undefined, () => undefined));
  return c;
}

beforeAll(async () => {
  pki = await TestPki.create();
  dir = join(pki.dir, "work");
  mkdirSync(dir, { recursive: true });
  leaf = await pki.leaf("leaf1");
  sensor = await pki.module("sensor", ATT);
  monitor = await pki.module("monitor", ATT);
});

afterEach(async () => {
  const fs = cleanups;
  cleanups = [];
  for (const f of fs) await f();
});

afterAll(() => pki?.cleanup());

describe("upstream outbox", () => {
  it("queues while upstream is down, survives a hub restart, then delivers everything in order with privacy applied", async () => {
    const storeFile = join(dir, "hub.db");
    const down = await heldDown();
    let t = await hubWithUpstream(down.port, storeFile);
    let c = await client(t.hub.boundPort, leaf);
    for (let i = 0; i < 20; i++) {
      await c.publishAsync("devices/leaf1/messages/events/", JSON.stringify({ seq: i, location: "52.1,4.3", operator: { name: "alice" } }), { qos: 1 });
    }
    // PUBACKed to the client = committed to the outbox; nothing can have left (the port only closes connections).
    expect(t.store.depth().messages).toBe(20);
    await c.endAsync();
    await t.stop();

    // The cloud broker comes up on that very port; a fresh hub process state (new Upstream, same outbox file).
    await down.release();
    const mosq = await startMosquitto(down.port);
    const sub = await client(down.port, leaf, { clientId: "cloud-reader" });
    const got: { topic: string; body: { seq: number; location?: string; operator: { name: string } } }[] = [];
    sub.on("message", (topic, p) => got.push({ topic, body: JSON.parse(p.toString()) as (typeof got)[number]["body"] }));
    await sub.subscribeAsync("devices/+/messages/events/#", { qos: 1 });

    t = await hubWithUpstream(down.port, storeFile);
    const allAcked = within(new Promise<void>((resolve) => {
      const check = () => {
        if (got.length >= 30 && t.store.depth().messages === 0) resolve();
      };
      t.upstream.on("delivered", check);
      sub.on("message", check);
    }), 30_000, "30 messages delivered and acknowledged");
    c = await client(t.hub.boundPort, leaf);
    for (let i = 20; i < 30; i++) await c.publishAsync("devices/leaf1/messages/events/", JSON.stringify({ seq: i, location: "x", operator: { name: "alice" } }), { qos: 1 });
    await allAcked;
    expect(got.map((g) => g.body.seq)).toEqual([...Array(30).keys()]);
    expect(got[0]?.topic).toBe("devices/leaf1/messages/events/");
    expect(got.every((g) => g.body.location === undefined)).toBe(true);
    const expected = "hmac-sha256:" + createHmac("sha256", SECRET).update(JSON.stringify("alice")).digest("hex");
    expect(got[0]?.body.operator.name).toBe(expected);
    expect(t.store.depth().messages).toBe(0);
    expect(await t.hub.metrics.value("edgehub_messages_out_total", { destination: "upstream" })).toBe(30);
    await stopProcess(mosq);
  });

  it("refuses new messages with a reason when the outbox is full, keeping what is queued", async () => {
    const down = await heldDown();
    const t = await hubWithUpstream(down.port, join(dir, "full.db"), { maxMessages: 5 });
    const c = await client(t.hub.boundPort, leaf);
    for (let i = 0; i < 5; i++) await c.publishAsync("devices/leaf1/messages/events/", JSON.stringify({ seq: i }), { qos: 1 });
    const seen = within(new Promise<Rejection>((r) => t.hub.once("rejected", r)), 15_000, "rejection");
    const gone = within(new Promise<void>((r) => c.once("close", () => r())), 15_000, "close");
    c.publish("devices/leaf1/messages/events/", JSON.stringify({ seq: 5 }), { qos: 1 });
    const r = await seen;
    await gone;
    expect(r.reason).toBe("outbox-full");
    expect(r.detail).toMatch(/outbox full: 5 of 5 messages/);
    expect(t.store.next(10, new Set()).map((m) => (JSON.parse(m.payload.toString()) as { seq: number }).seq)).toEqual([0, 1, 2, 3, 4]);
    // A reported patch that could not be forwarded upstream is not applied either: 503, the twin unchanged.
    const c2 = await client(t.hub.boundPort, leaf);
    await c2.subscribeAsync("$iothub/twin/res/#", { qos: 0 });
    const answer = nextMessage(c2, /^\$iothub\/twin\/res\//, "reported patch answer");
    c2.publish("$iothub/twin/PATCH/properties/reported/?$rid=full1", JSON.stringify({ firmware: "2.0" }));
    expect((await answer).topic).toBe("$iothub/twin/res/503/?$rid=full1");
    expect(t.store.getTwin("leaf1")).toMatchObject({ reported: {}, reportedVersion: 1 });
    expect(t.store.depth().messages).toBe(5);
  });

  it("HubStore: priority first, then arrival; TTL expiry; the cap throws HUB_OUTBOX_FULL", () => {
    const s = new HubStore(":memory:", { maxMessages: 3, maxBytes: 1 << 20 });
    s.enqueue([{ route: "slow", priority: 5, ttlSeconds: 60, topic: "a", payload: Buffer.from("1") }], 1000);
    s.enqueue([{ route: "fast", priority: 0, ttlSeconds: 1, topic: "b", payload: Buffer.from("2") }], 1000);
    s.enqueue([{ route: "slow", priority: 5, ttlSeconds: 60, topic: "a", payload: Buffer.from("3") }], 1000);
    expect(s.next(10, new Set(), 1500).map((m) => m.payload.toString())).toEqual(["2", "1", "3"]);
    let err: unknown;
    try {
      s.enqueue([{ route: "slow", priority: 5, ttlSeconds: 60, topic: "a", payload: Buffer.from("4") }], 1500);
    } catch (e) {
      err = e;
    }
    expect(isEdgeTrustError(err, "HUB_OUTBOX_FULL")).toBe(true);
    // Past its TTL the fast message is purged, which makes room.
    s.enqueue([{ route: "slow", priority: 5, ttlSeconds: 60, topic: "a", payload: Buffer.from("4") }], 3000);
    expect(s.next(10, new Set(), 3000).map((m) => m.payload.toString())).toEqual(["1", "3", "4"]);
    s.close();
  });
});

describe("cloud → device through the upstream connection", () => {
  it("relays direct methods and desired properties to the addressed module or leaf connection only, answers upstream", async () => {
    const hold = await heldDown();
    await hold.release();
    await startMosquitto(hold.port);
    const t = await hubWithUpstream(hold.port, join(dir, "cloud.db"));
    await t.subscribed([
      "devices/d1/$iothub/methods/POST/#", "devices/d1/$iothub/twin/PATCH/properties/desired/#",
      "devices/d1/modules/+/$iothub/methods/POST/#", "devices/d1/modules/+/$iothub/twin/PATCH/properties/desired/#",
    ]);
    const hubPort = t.hub.boundPort;
    const sen = await client(hubPort, sensor);
    const mon = await client(hubPort, monitor);
    const lf = await client(hubPort, leaf);
    for (const c of [sen, mon, lf]) await c.subscribeAsync(["$iothub/methods/POST/#", "$iothub/twin/PATCH/properties/desired/#"], { qos: 0 });
    await t.subscribed(["devices/leaf1/$iothub/methods/POST/#", "devices/leaf1/$iothub/twin/PATCH/properties/desired/#"]);
    const monGot: string[] = [];
    mon.on("message", (tp) => monGot.push(tp));

    const cloud = await client(hold.port, leaf, { clientId: "cloud" });
    await cloud.subscribeAsync(["devices/+/$iothub/methods/res/#", "devices/+/modules/+/$iothub/methods/res/#"], { qos: 1 });

    // A method for the sensor module: the module sees the hub's own request id, never the cloud's.
    const req = nextMessage(sen, /^\$iothub\/methods\/POST\/reboot\//, "method at the sensor");
    const res = nextMessage(cloud, /^devices\/d1\/modules\/sensor\/\$iothub\/methods\/res\//, "method answer in the cloud");
    await cloud.publishAsync("devices/d1/modules/sensor/$iothub/methods/POST/reboot/?$rid=42", JSON.stringify({ delay: 1 }), { qos: 1 });
    const r = await req;
    expect(JSON.parse(r.payload.toString())).toEqual({ delay: 1 });
    const hubRid = new URLSearchParams(r.topic.split("/").pop()?.slice(1)).get("$rid");
    expect(hubRid).toMatch(/^[0-9a-f]{16}$/);
    // Another module answering the sensor's request id is not taken as the answer.
    mon.publish(`$iothub/methods/res/500/?$rid=${hubRid}`, JSON.stringify({ forged: true }));
    sen.publish(`$iothub/methods/res/200/?$rid=${hubRid}`, JSON.stringify({ rebooted: true }));
    const answer = await res;
    expect(answer.topic).toBe("devices/d1/modules/sensor/$iothub/methods/res/200/?$rid=42");
    expect(JSON.parse(answer.payload.toString())).toEqual({ rebooted: true });

    // A method for a module that is not connected: 404 upstream.
    const nf = nextMessage(cloud, /^devices\/d1\/modules\/ghost\//, "404 for a module that is not connected");
    await cloud.publishAsync("devices/d1/modules/ghost/$iothub/methods/POST/ping/?$rid=43", "{}", { qos: 1 });
    expect((await nf).topic).toBe("devices/d1/modules/ghost/$iothub/methods/res/404/?$rid=43");

    // A method for the leaf device behind the hub.
    const lreq = nextMessage(lf, /^\$iothub\/methods\/POST\/blink\//, "method at the leaf");
    const lres = nextMessage(cloud, /^devices\/leaf1\/\$iothub\/methods\/res\//, "leaf method answer");
    await cloud.publishAsync("devices/leaf1/$iothub/methods/POST/blink/?$rid=44", JSON.stringify({ times: 3 }), { qos: 1 });
    const lr = await lreq;
    lf.publish(`$iothub/methods/res/201/?$rid=${new URLSearchParams(lr.topic.split("/").pop()?.slice(1)).get("$rid") ?? ""}`, JSON.stringify({ blinked: 3 }));
    const la = await lres;
    expect(la.topic).toBe("devices/leaf1/$iothub/methods/res/201/?$rid=44");
    expect(JSON.parse(la.payload.toString())).toEqual({ blinked: 3 });

    // Desired properties: pushed to the sensor's connection with the cloud's version, kept in its twin; a duplicate
    // (at-least-once upstream) is not pushed again — the next thing the sensor sees is version 8.
    const d7 = nextMessage(sen, /^\$iothub\/twin\/PATCH\/properties\/desired\//, "desired v7");
    await cloud.publishAsync("devices/d1/modules/sensor/$iothub/twin/PATCH/properties/desired/?$version=7", JSON.stringify({ interval: 5, mode: "eco" }), { qos: 1 });
    const p7 = await d7;
    expect(p7.topic).toBe("$iothub/twin/PATCH/properties/desired/?$version=7");
    expect(JSON.parse(p7.payload.toString())).toEqual({ interval: 5, mode: "eco", $version: 7 });
    const d8 = nextMessage(sen, /^\$iothub\/twin\/PATCH\/properties\/desired\//, "desired v8");
    await cloud.publishAsync("devices/d1/modules/sensor/$iothub/twin/PATCH/properties/desired/?$version=7", JSON.stringify({ interval: 5, mode: "eco" }), { qos: 1 });
    await cloud.publishAsync("devices/d1/modules/sensor/$iothub/twin/PATCH/properties/desired/?$version=8", JSON.stringify({ mode: null }), { qos: 1 });
    const p8 = await d8;
    expect(p8.topic).toBe("$iothub/twin/PATCH/properties/desired/?$version=8");
    expect(t.store.getTwin("d1/sensor")).toMatchObject({ desired: { interval: 5 }, desiredVersion: 8 });
    // The module reads its twin from the hub and sees the cloud's desired state.
    const twin = nextMessage(sen, /^\$iothub\/twin\/res\/200\//, "twin GET");
    sen.publish("$iothub/twin/GET/?$rid=g1", "");
    expect(JSON.parse((await twin).payload.toString())).toMatchObject({ desired: { interval: 5, $version: 8 } });

    // The monitor module was connected and subscribed to the same filters all along: it saw none of the above.
    const monProbe = nextMessage(mon, /^\$iothub\/twin\/PATCH\/properties\/desired\//, "desired at the monitor");
    await cloud.publishAsync("devices/d1/modules/monitor/$iothub/twin/PATCH/properties/desired/?$version=2", JSON.stringify({ x: 1 }), { qos: 1 });
    await monProbe;
    expect(monGot).toEqual(["$iothub/twin/PATCH/properties/desired/?$version=2"]);
  });
});

/** A held-down port released after the test. */
async function heldDown(): Promise<{ port: number; release: () => Promise<void> }> {
  const h = await holdDownPort();
  later(h.release);
  return h;
}
