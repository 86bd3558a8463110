import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createHash } from "node:crypto";
import { createServer, type Server } from "node:http";
import mqtt, { type MqttClient } from "mqtt";
import { DEFAULT_CRL_POLL_SECONDS } from "./config.js";
import { TestPki, startTestHub, stopTestHub, type Credential, type TestHub } from "./fixtures.js";
import type { Rejection } from "./hub.js";

/**
 * Attack run finding: revocation reached the hub only at the next CRL refresh (hourly), so a revoked leaf device kept
 * connecting. Now the hub asks its CRL source every DEFAULT_CRL_POLL_SECONDS with the ETag it holds (ca-service's
 * route: 304 until a revocation — `ca-service/ca/crl-etag.test.ts`); here the source answers the same way and the
 * hub runs its own default poll, nothing triggered by the test.
 */
let pki: TestPki;
let leaf: Credential;
let other: Credential;
const cleanups: Array<() => Promise<unknown> | unknown> = [];

/** A bounded wait (a test must end), generous so a loaded machine does not fail it; not a timing assertion. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<T>((_, rej) => (timer = setTimeout(() => rej(new Error(`${what}: not within ${ms} ms`)), ms)))]).finally(() => clearTimeout(timer));
}

/** A CRL endpoint with ca-service's conditional-GET behaviour: ETag of the bytes, 304 on If-None-Match. */
async function crlSource(): Promise<{ url: string; serve(der: Buffer): void; counts: { full: number; notModified: number; dropped: number }; drop(n: number): void }> {
  let body: Buffer = Buffer.alloc(0);
  const counts = { full: 0, notModified: 0, dropped: 0 };
  let dropping = 0;
  const s: Server = createServer((req, res) => {
    // The fault: the connection a request came on closes without an answer (what a kept-alive connection does when
    // the server closes it as the client reuses it).
    if (dropping > 0) {
      dropping--;
      counts.dropped++;
      req.socket.destroy();
      return;
    }
    const etag = `"${createHash("sha256").update(body).digest("base64url").slice(0, 32)}"`;
    if (req.headers["if-none-match"] === etag) {
      counts.notModified++;
      res.writeHead(304, { etag, "cache-control": "no-cache" }).end();
      return;
    }
    counts.full++;
    res.writeHead(200, { etag, "cache-control": "no-cache", "content-type": "application/pkix-crl", "content-length": body.length }).end(body);
  });
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  cleanups.push(() => new Promise<void>((r) => { s.closeAllConnections(); s.close(() => r()); }));
  return { url: `http://127.0.0.1:${(s.address() as { port: number }).port}/v1/crl/abcdef01.crl`, serve: (d) => (body = d), counts, drop: (n) => (dropping = n) };
}

function connect(t: TestHub, cred: Credential): Promise<MqttClient> {
  const c = mqtt.connect(`mqtts://127.0.0.1:${t.hub.boundPort}`, { cert: cred.chainPem, key: cred.keyPem, ca: pki.rootPem(), servername: "localhost", reconnectPeriod: 0, protocolVersion: 4, connectTimeout: 10_000 });
  cleanups.push(() => c.endAsync(true).catch(() => undefined));
  return within(new Promise<MqttClient>((resolve, reject) => {
    c.once("connect", () => resolve(c));
    c.once("error", reject);
    c.once("close", () => reject(new Error("closed before CONNACK")));
  }), 15_000, "connect");
}

beforeAll(async () => {
  pki = await TestPki.create();
  leaf = await pki.leaf("leaf1");
  other = await pki.leaf("leaf2");
});

afterAll(async () => {
  for (const f of cleanups.reverse()) await f();
  pki?.cleanup();
});

describe("revocation reaches the hub within the default signal interval", () => {
  it("a revoked leaf's live session is cut and its reconnect refused, by the hub's own default poll", async () => {
    const src = await crlSource();
    const t0 = Date.now();
    src.serve(await pki.crl([], new Date(t0 - 60_000)));
    const t = await startTestHub(pki, { crlSource: src.url });
    cleanups.push(() => stopTestHub(t));
    let updates = 0;
    t.crl.on("updated", () => updates++);
    t.crl.watch(); // the default interval, as `hub run` does with the default config
    cleanups.push(() => t.crl.unwatch());
    const live = await connect(t, leaf);
    const bystander = await connect(t, other);

    // Unchanged CRL: the polls are 304s, nothing reloaded, no session re-checked.
    await within(new Promise<void>((r) => { const i = setInterval(() => { if (src.counts.notModified >= 2) { clearInterval(i); r(); } }, 100); }), DEFAULT_CRL_POLL_SECONDS * 6_000, "two 304 polls");
    expect(updates).toBe(0);
    expect(src.counts.full).toBe(1);

    // Revoke at the source; the test does not poke the hub.
    const revokedAt = Date.now();
    const cut = new Promise<Rejection>((r) => t.hub.on("rejected", (x) => { if (x.stage === "session" && x.identity === "leaf1") r(x); }));
    const closed = new Promise<void>((r) => live.once("close", () => r()));
    src.serve(await pki.crl([leaf.cert], new Date(Math.max(revokedAt, t0))));
    const r = await within(cut, DEFAULT_CRL_POLL_SECONDS * 3_000, "session cut within the default interval");
    await within(closed, 10_000, "client saw its connection close");
    expect(r).toMatchObject({ stage: "session", reason: "revoked" });
    expect(updates).toBe(1);
    // Refused on reconnect; the device that was not revoked stays.
    await expect(connect(t, leaf)).rejects.toThrow();
    expect(bystander.connected).toBe(true);
    expect(t.hub.connectedIdentities()).toEqual(["leaf2"]);
  });

  it("a poll whose connection fails as it is reused asks again at once: the revocation is not a whole interval late", async () => {
    const src = await crlSource();
    const t0 = Date.now();
    src.serve(await pki.crl([], new Date(t0 - 60_000)));
    const t = await startTestHub(pki, { crlSource: src.url });
    cleanups.push(() => stopTestHub(t));
    const live = await connect(t, leaf);
    const closed = new Promise<void>((r) => live.once("close", () => r()));
    const cut = new Promise<Rejection>((r) => t.hub.on("rejected", (x) => { if (x.stage === "session" && x.identity === "leaf1") r(x); }));
    src.serve(await pki.crl([leaf.cert], new Date(Math.max(Date.now(), t0 + 1000))));
    // One poll (the hub's timer would make the same call); its first connection is closed unanswered.
    src.drop(1);
    expect(await t.crl.refresh()).toBe(true);
    expect(src.counts.dropped).toBe(1);
    expect(await within(cut, 10_000, "session cut by that poll")).toMatchObject({ stage: "session", reason: "revoked" });
    await within(closed, 10_000, "client saw its connection close");
    // A source that drops every attempt still fails the poll (nothing loaded from nothing), and the last CRL stays.
    src.drop(2);
    await expect(t.crl.refresh()).rejects.toMatchObject({ code: "UNAVAILABLE" });
    expect(src.counts.dropped).toBe(3);
    expect(t.crl.info()).toMatchObject({ loaded: true, entries: 1 });
  });
});
