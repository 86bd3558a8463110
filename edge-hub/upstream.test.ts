import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawn, type ChildProcess } from "node:child_process";
import { createHmac } from "node:crypto";
import { createServer } from "node:net";
import { join } from "node:path";
import { readFileSync } from "node:fs";
import mqtt, { type MqttClient } from "mqtt";
import { createLogger, isEdgeTrustError } from "../common/index.js";
import { TestPki, startTestHub, stopTestHub, testPolicy, writeTemp, type Credential, type TestHub } from "./fixtures.js";
import { parseRoutes } from "./routes.js";
import { Redactor } from "./privacy.js";
import { HubStore } from "./store.js";
import { Upstream } from "./upstream.js";
import type { Rejection } from "./hub.js";

/**
 * Durable store-and-forward: a real Mosquitto with TLS + client certificates is the "cloud" broker, started from a
 * config file on a free loopback port. Messages sent while it is down wait in the SQLite outbox, survive a hub restart,
 * and arrive in order when it is up; privacy rules apply before anything leaves.
 */
let pki: TestPki;
let dir: string;
let leaf: Credential;
let port: number;
let mosq: ChildProcess | undefined;
const SECRET = Buffer.alloc(32, 7);

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

async function startMosquitto(): Promise<void> {
  const d = join(pki.dir, "pki");
  const conf = writeTemp(dir, "mosquitto.conf", [
    `listener ${port} 127.0.0.1`,
    `cafile ${join(d, "trust-bundle.pem")}`,
    `certfile ${join(d, "edge-hub-server.chain.pem")}`,
    `keyfile ${join(d, "edge-hub-server.key.pem")}`,
    "require_certificate true",
    "allow_anonymous true",
    "persistence false",
    "user root",
    "log_dest stderr",
    "",
  ].join("\n"));
  const p = spawn("mosquitto", ["-c", conf], { stdio: ["ignore", "ignore", "pipe"] });
  mosq = p;
  for (let i = 0; i < 50; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const c = mqtt.connect(`mqtts://127.0.0.1:${port}`, { ...tlsFor(leaf), reconnectPeriod: 0, connectTimeout: 1000 });
      c.once("connect", () => { c.end(true); resolve(true); });
      c.once("error", () => { c.end(true); resolve(false); });
      c.once("close", () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("mosquitto did not start");
}

async function stopMosquitto(): Promise<void> {
  const p = mosq;
  mosq = undefined;
  if (!p || p.exitCode !== null) return;
  const done = new Promise<void>((r) => p.once("exit", () => r()));
  p.kill("SIGTERM");
  await done;
}

function tlsFor(c: Credential) {
  return { cert: c.chainPem, key: c.keyPem, ca: pki.rootPem(), servername: "localhost" };
}

async function hubWithUpstream(storeFile: string, maxMessages = 1000): Promise<TestHub> {
  const d = join(pki.dir, "pki");
  const store = new HubStore(storeFile, { maxMessages, maxBytes: 1 << 24 });
  const upstream = new Upstream({
    url: `mqtts://127.0.0.1:${port}`, clientId: "d1",
    tls: { cert: readFileSync(join(d, "device-identity.chain.pem")), key: readFileSync(join(d, "device-identity.key.pem")), ca: pki.rootPem(), servername: "localhost" },
    store, maxInflight: 10, drainRatePerSecond: 500, reconnectMs: 200, log: createLogger("edge-hub", { level: "silent" }),
  });
  return startTestHub(pki, {
    store, upstream, routes: parseRoutes({ all: "FROM /messages/* INTO $upstream" }),
    redactor: new Redactor(testPolicy().privacy?.redact ?? [], SECRET),
  });
}

async function leafClient(t: TestHub): Promise<MqttClient> {
  return mqtt.connectAsync(`mqtts://127.0.0.1:${t.hub.boundPort}`, { ...tlsFor(leaf), reconnectPeriod: 0, protocolVersion: 4 });
}

beforeAll(async () => {
  pki = await TestPki.create();
  dir = join(pki.dir, "work");
  const { mkdirSync } = await import("node:fs");
  mkdirSync(dir, { recursive: true });
  leaf = await pki.leaf("leaf1");
  port = await freePort();
});

afterAll(async () => {
  await stopMosquitto();
  pki.cleanup();
});

describe("upstream outbox", () => {
  it("queues while upstream is down, survives a hub restart, then delivers everything in order with privacy applied", async () => {
    const storeFile = join(dir, "hub.db");
    let t = await hubWithUpstream(storeFile);
    let c = await leafClient(t);
    for (let i = 0; i < 20; i++) {
      await c.publishAsync("devices/leaf1/messages/events/", JSON.stringify({ seq: i, location: "52.1,4.3", operator: { name: "alice" } }), { qos: 1 });
    }
    expect(t.store.depth().messages).toBe(20);
    await c.endAsync();
    await stopTestHub(t);

    await startMosquitto();
    const sub = await mqtt.connectAsync(`mqtts://127.0.0.1:${port}`, { ...tlsFor(leaf), clientId: "cloud-reader", reconnectPeriod: 0 });
    const got: { topic: string; body: { seq: number; location?: string; operator: { name: string } } }[] = [];
    sub.on("message", (topic, p) => got.push({ topic, body: JSON.parse(p.toString()) as (typeof got)[number]["body"] }));
    await sub.subscribeAsync("devices/#", { qos: 1 });

    t = await hubWithUpstream(storeFile);
    c = await leafClient(t);
    for (let i = 20; i < 30; i++) await c.publishAsync("devices/leaf1/messages/events/", JSON.stringify({ seq: i, location: "x", operator: { name: "alice" } }), { qos: 1 });
    for (let i = 0; i < 100 && got.length < 30; i++) await new Promise((r) => setTimeout(r, 100));
    await c.endAsync();
    await sub.endAsync();
    expect(got.map((g) => g.body.seq)).toEqual([...Array(30).keys()]);
    expect(got[0]?.topic).toBe("devices/leaf1/messages/events/");
    expect(got.every((g) => g.body.location === undefined)).toBe(true);
    const expected = "hmac-sha256:" + createHmac("sha256", SECRET).update(JSON.stringify("alice")).digest("hex");
    expect(got[0]?.body.operator.name).toBe(expected);
    expect(t.store.depth().messages).toBe(0);
    expect(await t.hub.metrics.value("edgehub_messages_out_total", { destination: "upstream" })).toBe(30);
    await stopTestHub(t);
    await stopMosquitto();
  });

  it("refuses new messages with a reason when the outbox is full, keeping what is queued", async () => {
    const t = await hubWithUpstream(join(dir, "full.db"), 5);
    const c = await leafClient(t);
    for (let i = 0; i < 5; i++) await c.publishAsync("devices/leaf1/messages/events/", JSON.stringify({ seq: i }), { qos: 1 });
    const seen = new Promise<Rejection>((r) => t.hub.once("rejected", r));
    const gone = new Promise<void>((r) => c.once("close", () => r()));
    c.publish("devices/leaf1/messages/events/", JSON.stringify({ seq: 5 }), { qos: 1 });
    const r = await seen;
    await gone;
    expect(r.reason).toBe("outbox-full");
    expect(r.detail).toMatch(/outbox full: 5 of 5 messages/);
    expect(t.store.next(10, new Set()).map((m) => (JSON.parse(m.payload.toString()) as { seq: number }).seq)).toEqual([0, 1, 2, 3, 4]);
    c.end(true);
    await stopTestHub(t);
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
