import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { join } from "node:path";
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import { DEVICE, TestPki, digest, startTestHub, stopTestHub, writeTemp, type Credential, type TestHub } from "./fixtures.js";
import type { Rejection } from "./hub.js";

let pki: TestPki;
let t: TestHub;
let sensor: Credential;
let monitor: Credential;
let leaf1: Credential;

const SENSOR = { imageDigest: digest("a"), manifestVersion: 3 };
const MONITOR = { imageDigest: digest("b"), manifestVersion: 3 };

/** A liveness bound, not a timing assertion: generous, because the machine is shared and a TLS handshake can take seconds. */
const BOUND_MS = 20_000;

function within<T>(p: Promise<T>, ms = BOUND_MS, what = "operation"): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<T>((_, rej) => (timer = setTimeout(() => rej(new Error(`${what} timed out`)), ms)))]).finally(() => clearTimeout(timer));
}

function connect(cred: Credential, extra: Partial<IClientOptions> = {}): Promise<MqttClient> {
  const c = mqtt.connect(`mqtts://127.0.0.1:${t.hub.boundPort}`, {
    cert: cred.chainPem, key: cred.keyPem, ca: pki.rootPem(), servername: "localhost",
    reconnectPeriod: 0, protocolVersion: 4, connectTimeout: BOUND_MS / 2, ...extra,
  });
  return within(new Promise<MqttClient>((resolve, reject) => {
    c.once("connect", () => resolve(c));
    c.once("error", (e) => { c.end(true); reject(e); });
    c.once("close", () => reject(new Error("closed before CONNACK")));
  }), BOUND_MS, "connect");
}

/** Connect, expect a refusal, and return the hub's recorded reason. */
async function refused(cred: Credential, extra: Partial<IClientOptions> = {}): Promise<Rejection> {
  const seen = new Promise<Rejection>((resolve) => t.hub.once("rejected", resolve));
  await expect(connect(cred, extra)).rejects.toThrow();
  return within(seen, BOUND_MS, "rejection");
}

function closed(c: MqttClient): Promise<void> {
  return within(new Promise<void>((r) => c.once("close", () => r())), BOUND_MS, "close");
}

/**
 * After an attack: the attacker holds no session (its identity is not connected), and the broker still serves — two
 * fresh, legitimate clients connect and a QoS 1 message goes from one to the other.
 */
async function stillServing(attacker?: string): Promise<void> {
  if (attacker !== undefined) expect(t.hub.connectedIdentities()).not.toContain(attacker);
  const mon = await connect(monitor);
  const sen = await connect(sensor);
  try {
    await mon.subscribeAsync("status/#", { qos: 1 });
    const got = within(new Promise<string>((r) => mon.once("message", (_tp, p) => r(p.toString()))), BOUND_MS, "message after the attack");
    await sen.publishAsync("status/d1/sensor", "still up", { qos: 1 });
    expect(await got).toBe("still up");
  } finally {
    await mon.endAsync();
    await sen.endAsync();
  }
}

beforeAll(async () => {
  pki = await TestPki.create();
  t = await startTestHub(pki);
  t.attestation.register(DEVICE, "sensor", SENSOR);
  t.attestation.register(DEVICE, "monitor", MONITOR);
  sensor = await pki.module("sensor", SENSOR);
  monitor = await pki.module("monitor", MONITOR);
  leaf1 = await pki.leaf("leaf1");
});

afterAll(async () => {
  await stopTestHub(t);
  pki.cleanup();
});

describe("edge hub: identity, mTLS and ACL", () => {
  it("an allowed publish from one module arrives at another module's allowed subscription", async () => {
    const mon = await connect(monitor);
    const sen = await connect(sensor);
    try {
      await mon.subscribeAsync("status/#", { qos: 1 });
      const got = within(new Promise<[string, Buffer]>((r) => mon.once("message", (tp, p) => r([tp, p]))), BOUND_MS, "message");
      await sen.publishAsync("status/d1/sensor", "ok", { qos: 1 });
      const [topic, payload] = await got;
      expect(topic).toBe("status/d1/sensor");
      expect(payload.toString()).toBe("ok");
      expect(t.hub.connectedIdentities()).toEqual(expect.arrayContaining(["d1/sensor", "d1/monitor"]));
    } finally {
      await mon.endAsync();
      await sen.endAsync();
    }
  });

  it("refuses a module certificate issued by another device's Edge CA (TLS alone would accept it)", async () => {
    const other = await pki.otherEdgeCa("d2");
    t.attestation.register("d2", "sensor", SENSOR);
    const cred = await pki.module("sensor", SENSOR, other, "d2");
    const r = await refused(cred);
    expect(r.reason).toBe("untrusted-issuer");
    await stillServing("d2/sensor");
  });

  it("refuses a module URI naming another device even when this Edge CA signed it (URI path check)", async () => {
    const cred = await pki.oddLeaf([{ type: "url", value: "edgetrust://example.com/devices/d2/modules/sensor" }], pki.edgeCa);
    const r = await refused(cred);
    expect(r.reason).toBe("module-device-mismatch");
    await stillServing("d2/sensor");
  });

  it("refuses a module whose certificate's image digest no longer matches its attestation", async () => {
    const stale = await pki.module("sensor", { imageDigest: digest("c"), manifestVersion: 2 });
    const r = await refused(stale);
    expect(r.reason).toBe("attestation-mismatch");
    await stillServing();
  });

  it("refuses a module that is not registered as attested", async () => {
    const cred = await pki.module("ghost", SENSOR);
    expect((await refused(cred)).reason).toBe("not-attested");
  });

  it("refuses a revoked leaf device (CRL from a file, cached on disk)", async () => {
    const revoked = await pki.leaf("leaf-revoked");
    const crlFile = writeTemp(t.dir, "issuing.crl", await pki.crl([revoked.cert]));
    const c = await connect(revoked);
    await c.endAsync();
    const crl = t.crl as unknown as { opts: { source: string } };
    crl.opts.source = crlFile;
    await t.crl.refresh();
    expect((await refused(revoked)).reason).toBe("revoked");
    // The unrevoked leaf still connects.
    const ok = await connect(leaf1);
    await ok.endAsync();
    const { existsSync } = await import("node:fs");
    expect(existsSync(join(t.dir, "crl", "crl.der"))).toBe(true);
    await stillServing("leaf-revoked");
  });

  it("refuses certificates with no URI SAN, two identities, or a foreign trust domain", async () => {
    expect((await refused(await pki.oddLeaf([]))).reason).toBe("bad-uri-san");
    expect((await refused(await pki.oddLeaf([{ type: "dns", value: "leaf9" }]))).reason).toBe("bad-uri-san");
    expect((await refused(await pki.oddLeaf([
      { type: "url", value: "edgetrust://example.com/devices/leaf1" },
      { type: "url", value: "edgetrust://example.com/devices/leaf2" },
    ]))).reason).toBe("bad-uri-san");
    expect((await refused(await pki.oddLeaf([{ type: "url", value: "edgetrust://example.com/devices/a/b/c" }]))).reason).toBe("bad-uri-san");
    expect((await refused(await pki.oddLeaf([{ type: "url", value: "edgetrust://evil.example/devices/leaf1" }]))).reason).toBe("wrong-trust-domain");
    await stillServing();
  });

  it("refuses a client that presents no certificate at all (TLS handshake), and keeps serving", async () => {
    const seen = new Promise<Rejection>((resolve) => t.hub.once("rejected", resolve));
    const c = mqtt.connect(`mqtts://127.0.0.1:${t.hub.boundPort}`, { ca: pki.rootPem(), servername: "localhost", reconnectPeriod: 0, protocolVersion: 4, connectTimeout: BOUND_MS / 2 });
    let connacked = false;
    c.on("connect", () => (connacked = true));
    c.on("error", () => undefined);
    await closed(c);
    c.end(true);
    const r = await within(seen, BOUND_MS, "rejection");
    expect(connacked).toBe(false);
    expect(r).toMatchObject({ stage: "connect", reason: "no-certificate" });
    await stillServing();
  });

  it("refuses an expired module certificate and an expired leaf certificate, and keeps serving", async () => {
    const hourAgo = { notBefore: new Date(Date.now() - 2 * 3_600_000), lifetimeSeconds: 3600 };
    const expiredModule = await pki.module("sensor", SENSOR, pki.edgeCa, DEVICE, hourAgo);
    const expiredLeaf = await pki.leaf("leaf-old", hourAgo);
    expect(expiredModule.cert.notAfter.getTime()).toBeLessThan(Date.now());
    for (const cred of [expiredModule, expiredLeaf]) {
      const r = await refused(cred);
      // OpenSSL's chain check (validity included) says CERT_HAS_EXPIRED; the socket never reaches the broker.
      expect(r).toMatchObject({ stage: "connect", reason: "certificate-expired" });
      expect(r.detail).toMatch(/CERT_HAS_EXPIRED/);
    }
    await stillServing("leaf-old");
  });

  it("ignores a client id and username that claim another identity: the certificate decides", async () => {
    const real = await connect(leaf1, { clientId: "leaf1" });
    const leaf2 = await pki.leaf("leaf2");
    // The client may see its CONNACK before the hub has registered the session: wait for the hub's own event.
    const registered = within(new Promise<void>((r) => {
      const on = (id: { key: string }) => {
        if (id.key !== "leaf2") return;
        t.hub.off("connected", on);
        r();
      };
      t.hub.on("connected", on);
    }), BOUND_MS, "leaf2 registered");
    const liar = await connect(leaf2, { clientId: "leaf1", username: "localhost/leaf1/?api-version=2021-04-12" });
    await registered;
    try {
      expect(t.hub.connectedIdentities()).toEqual(expect.arrayContaining(["leaf1", "leaf2"]));
      expect(real.connected).toBe(true); // not taken over by the same client id
      const seen = new Promise<Rejection>((r) => t.hub.once("rejected", r));
      const gone = closed(liar);
      liar.publish("devices/leaf1/messages/events/", "spoof", { qos: 1 });
      await gone;
      const r = await within(seen);
      expect(r).toMatchObject({ reason: "policy-denied", identity: "leaf2" });
      expect(t.hub.connectedIdentities()).not.toContain("leaf2");
      // The real leaf1 session was never touched: it still publishes.
      await real.publishAsync("devices/leaf1/messages/events/", "mine", { qos: 1 });
    } finally {
      await real.endAsync();
      liar.end(true);
    }
    await stillServing();
  });

  it("refuses subscriptions to another module's inputs, `#`, `$SYS/#` and `$iothub/#` (snooping)", async () => {
    const c = await connect(sensor);
    try {
      const reasons: string[] = [];
      const on = (r: Rejection) => reasons.push(r.reason);
      t.hub.on("rejected", on);
      for (const denied of ["devices/d1/modules/monitor/inputs/#", "#", "$SYS/#", "$iothub/#", "$iothub/+/#", "$iothub/methods/res/#", "+/d1/#", "devices/+/modules/+/inputs/#"]) {
        await expect(c.subscribeAsync(denied, { qos: 1 }), denied).rejects.toThrow(/Subscribe error/);
      }
      const granted = await c.subscribeAsync("devices/d1/modules/sensor/inputs/#", { qos: 1 });
      t.hub.off("rejected", on);
      expect(granted.map((g) => g.qos)).toEqual([1]);
      expect(c.connected).toBe(true);
      expect(reasons).toEqual(expect.arrayContaining(["policy-denied", "wildcard-root", "reserved-topic"]));
      expect(reasons).toHaveLength(8);
    } finally {
      await c.endAsync();
    }
    await stillServing();
  });

  it("refuses a publish into another module's inputs or as another module's telemetry (connection closed)", async () => {
    for (const topic of ["devices/d1/modules/monitor/inputs/in1/", "devices/d1/modules/monitor/messages/events/"]) {
      const c = await connect(sensor);
      const seen = new Promise<Rejection>((r) => t.hub.once("rejected", r));
      const gone = closed(c);
      c.publish(topic, "forged", { qos: 1 });
      await gone;
      expect(await within(seen)).toMatchObject({ stage: "publish", reason: "policy-denied", identity: "d1/sensor" });
      c.end(true);
    }
    await stillServing();
  });

  it("refuses a 10,000-level topic (publish and subscribe) without harm to the broker", async () => {
    const deep = "devices/d1/modules/sensor/messages/events/" + "x/".repeat(10_000) + "x";
    for (const attempt of ["publish", "subscribe"] as const) {
      const c = await connect(sensor);
      const seen = new Promise<Rejection>((r) => t.hub.once("rejected", r));
      const gone = closed(c);
      c.on("error", () => undefined);
      if (attempt === "publish") c.publish(deep, "p", { qos: 1 });
      else c.subscribe(deep.replace("sensor/messages/events", "sensor/inputs"), { qos: 1 }, () => undefined);
      await gone;
      expect(await within(seen), attempt).toMatchObject({ reason: "topic-too-deep", identity: "d1/sensor" });
      c.end(true);
    }
    await stillServing();
  });

  it("disconnects on an over-deep topic and on an oversized payload", async () => {
    for (const [topic, payload, reason] of [
      ["devices/d1/modules/sensor/messages/events/" + "x/".repeat(20) + "x", "p", "topic-too-deep"],
      ["devices/d1/modules/sensor/messages/events/", Buffer.alloc(65 * 1024), "payload-too-large"],
    ] as const) {
      const c = await connect(sensor);
      const seen = new Promise<Rejection>((r) => t.hub.once("rejected", r));
      const gone = closed(c);
      c.publish(topic, payload, { qos: 1 });
      await gone;
      expect((await within(seen)).reason).toBe(reason);
      c.end(true);
    }
    await stillServing();
  });

  it("refuses a connection whose will message targets a forbidden topic", async () => {
    const r = await refused(sensor, { will: { topic: "devices/d1/modules/monitor/inputs/x/", payload: Buffer.from("boom"), qos: 0, retain: false } });
    expect(r.reason).toBe("will-denied");
    const ok = await connect(sensor, { will: { topic: "status/d1/sensor", payload: Buffer.from("gone"), qos: 0, retain: false } });
    await ok.endAsync();
  });

  it("answers twin requests and relays methods on the asking connection only", async () => {
    const a = await connect(sensor);
    const b = await connect(monitor);
    try {
      await a.subscribeAsync(["$iothub/twin/res/#", "$iothub/methods/POST/#"]);
      await b.subscribeAsync(["$iothub/twin/res/#", "$iothub/methods/POST/#"]);
      const bGot: string[] = [];
      b.on("message", (tp) => bGot.push(tp));
      const aGot: string[] = [];
      a.on("message", (tp) => aGot.push(tp));
      const resA = within(new Promise<[string, Buffer]>((r) => a.on("message", (tp, p) => { if (tp.startsWith("$iothub/twin/res/204")) r([tp, p]); })));
      a.publish("$iothub/twin/PATCH/properties/reported/?$rid=7", JSON.stringify({ temp: 21 }));
      expect((await resA)[0]).toMatch(/^\$iothub\/twin\/res\/204\/\?\$rid=7&\$version=2$/);
      const getA = within(new Promise<Buffer>((r) => a.on("message", (tp, p) => { if (tp.startsWith("$iothub/twin/res/200")) r(p); })));
      a.publish("$iothub/twin/GET/?$rid=8", "");
      expect(JSON.parse((await getA).toString())).toMatchObject({ reported: { temp: 21, $version: 2 } });
      // B forges a response topic: it reaches nobody.
      b.publish("$iothub/twin/res/200/?$rid=8", "{\"forged\":true}");
      // A method for A: B neither sees the request nor can answer it.
      a.on("message", (tp) => {
        const m = /^\$iothub\/methods\/POST\/reboot\/\?\$rid=(\w+)$/.exec(tp);
        if (m) {
          // B's forged answer is processed by the hub (PUBACK) before A's real one is sent: no timer decides the order.
          void b.publishAsync(`$iothub/methods/res/500/?$rid=${m[1]}`, "{\"forged\":true}", { qos: 1 }).then(() => a.publish(`$iothub/methods/res/200/?$rid=${m[1]}`, "{\"ok\":true}"));
        }
      });
      const res = await within(t.hub.invokeMethod("d1/sensor", "reboot", { delay: 1 }, BOUND_MS / 2));
      expect(res).toEqual({ status: 200, payload: { ok: true } });
      // The other identity's twin is its own. Its answer is also a barrier: whatever the hub wrote to B before it has
      // arrived by then (one connection delivers in order), so "B saw nothing else" needs no wait.
      const getB = within(new Promise<Buffer>((r) => b.on("message", (tp, p) => { if (tp.startsWith("$iothub/twin/res/200")) r(p); })));
      b.publish("$iothub/twin/GET/?$rid=9", "");
      expect(JSON.parse((await getB).toString()).reported).toEqual({ $version: 1 });
      expect(bGot.filter((x) => x.startsWith("$iothub/"))).toEqual(["$iothub/twin/res/200/?$rid=9"]);
      const barrierA = within(new Promise<void>((r) => a.on("message", (tp) => { if (tp.includes("$rid=10")) r(); })));
      a.publish("$iothub/twin/GET/?$rid=10", "");
      await barrierA;
      expect(aGot.filter((x) => x.includes("forged"))).toEqual([]);
      expect(aGot.filter((x) => x.startsWith("$iothub/twin/res/200/?$rid=8")).length).toBe(1);
    } finally {
      await a.endAsync();
      await b.endAsync();
    }
  });

  it("disconnects a module the agent deregisters, and refuses it afterwards", async () => {
    t.attestation.register(DEVICE, "temp", SENSOR);
    const cred = await pki.module("temp", SENSOR);
    const c = await connect(cred);
    const seen = new Promise<Rejection>((r) => t.hub.once("rejected", r));
    const gone = closed(c);
    t.attestation.deregister(DEVICE, "temp");
    await gone;
    expect((await within(seen)).reason).toBe("deregistered");
    expect((await refused(cred)).reason).toBe("not-attested");
    c.end(true);
  });

  it("reloads the server certificate without dropping live connections", async () => {
    const c = await connect(leaf1);
    try {
      await t.hub.reloadServerCertificate();
      const d = await connect(monitor);
      await d.endAsync();
      expect(c.connected).toBe(true);
      await c.publishAsync("devices/leaf1/messages/events/", "after reload", { qos: 1 });
    } finally {
      await c.endAsync();
    }
  });

  it("counts rejections by reason in /metrics", async () => {
    const text = await t.hub.metrics.registry.metrics();
    expect(text).toMatch(/edgehub_rejections_total\{reason="untrusted-issuer"\} [1-9]/);
    expect(text).toMatch(/edgehub_connections_total\{result="accepted",principal="module"\} [1-9]/);
  });
});
