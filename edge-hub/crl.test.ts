import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { webcrypto } from "node:crypto";
import * as x509 from "@peculiar/x509";
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import { isEdgeTrustError } from "../common/index.js";
import { DEVICE, TestPki, digest, startTestHub, stopTestHub, type Credential, type TestHub } from "./fixtures.js";
import type { Rejection } from "./hub.js";

/**
 * Revocation from a URL: an HTTP server answering `GET /v1/crl/<issuer>.crl` with a DER CRL (`application/pkix-crl`)
 * the way ca-service does, signed by the test PKI's issuing CA with @peculiar/x509. The hub keeps the last good CRL on
 * disk and uses it when the URL cannot be reached; revoking the device's Edge CA cuts off every module of the device,
 * including connections that are up when the new CRL arrives.
 */
let pki: TestPki;
let leaf1: Credential;
let sensor: Credential;
const ATT = { imageDigest: digest("c"), manifestVersion: 4 };
let cleanups: (() => Promise<void> | void)[] = [];
const later = (f: () => Promise<void> | void): void => void cleanups.unshift(f);

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<T>((_, rej) => (timer = setTimeout(() => rej(new Error(`${what}: not within ${ms} ms`)), ms)))]).finally(() => clearTimeout(timer));
}

/** A CRL endpoint whose answer the test sets; `close()` makes the URL unreachable. */
async function crlServer(): Promise<{ url: string; serve(der: Buffer | undefined): void; close(): Promise<void>; hits: () => number }> {
  let body: Buffer | undefined;
  let hits = 0;
  const s: Server = createServer((req, res) => {
    hits++;
    if (req.method === "GET" && req.url === "/v1/crl/abcdef01.crl" && body) {
      res.writeHead(200, { "content-type": "application/pkix-crl", "content-length": body.length });
      res.end(body);
      return;
    }
    res.writeHead(404, { "content-type": "application/problem+json" });
    res.end(JSON.stringify({ status: 404, code: "NOT_FOUND" }));
  });
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  const port = (s.address() as { port: number }).port;
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  };
  later(close);
  return { url: `http://127.0.0.1:${port}/v1/crl/abcdef01.crl`, serve: (d) => (body = d), close, hits: () => hits };
}

async function hub(o: Parameters<typeof startTestHub>[1]): Promise<TestHub> {
  const t = await startTestHub(pki, o);
  t.attestation.register(DEVICE, "sensor", ATT);
  later(() => stopTestHub(t));
  return t;
}

function connect(t: TestHub, cred: Credential, extra: Partial<IClientOptions> = {}): Promise<MqttClient> {
  const c = mqtt.connect(`mqtts://127.0.0.1:${t.hub.boundPort}`, {
    cert: cred.chainPem, key: cred.keyPem, ca: pki.rootPem(), servername: "localhost", reconnectPeriod: 0, protocolVersion: 4, connectTimeout: 10_000, ...extra,
  });
  later(() => c.endAsync(true).then(() => undefined, () => undefined));
  return within(new Promise<MqttClient>((resolve, reject) => {
    c.once("connect", () => resolve(c));
    c.once("error", (e) => reject(e));
    c.once("close", () => reject(new Error("closed before CONNACK")));
  }), 15_000, "connect");
}

async function refused(t: TestHub, cred: Credential): Promise<Rejection> {
  const seen = within(new Promise<Rejection>((r) => t.hub.once("rejected", r)), 15_000, "rejection");
  await expect(connect(t, cred)).rejects.toThrow();
  return seen;
}

beforeAll(async () => {
  pki = await TestPki.create();
  leaf1 = await pki.leaf("leaf1");
  sensor = await pki.module("sensor", ATT);
});

afterEach(async () => {
  const fs = cleanups;
  cleanups = [];
  for (const f of fs) await f();
});

afterAll(() => pki?.cleanup());

describe("CRL from a URL", () => {
  it("fetches the CRL over HTTP, caches it on disk, and keeps enforcing it from the cache when the URL is unreachable", async () => {
    const cacheDir = mkdtempSync(join(tmpdir(), "edgehub-crlcache-"));
    later(() => rmSync(cacheDir, { recursive: true, force: true }));
    const revoked = await pki.leaf("leaf-revoked");
    const srv = await crlServer();
    srv.serve(await pki.crl([revoked.cert]));

    const a = await hub({ crlSource: srv.url, crlCacheDir: cacheDir, crlRequired: true });
    expect(srv.hits()).toBe(1);
    expect(a.crl.info()).toMatchObject({ loaded: true, entries: 1 });
    expect(existsSync(join(cacheDir, "crl.der"))).toBe(true);
    expect((await refused(a, revoked)).reason).toBe("revoked");
    await (await connect(a, leaf1)).endAsync();
    await stopTestHub(a);

    // The CA is unreachable now (the device is offline): a new hub start loads the cached list and still refuses.
    await srv.close();
    const b = await hub({ crlSource: srv.url, crlCacheDir: cacheDir, crlRequired: true });
    await expect(b.crl.refresh()).rejects.toThrow();
    expect(b.crl.info()).toMatchObject({ loaded: true, entries: 1 });
    const r = await refused(b, revoked);
    expect(r.reason).toBe("revoked");
    await (await connect(b, leaf1)).endAsync();

    // Control: the same unreachable URL without the cache, fail-closed — nothing is known, everyone is refused.
    const empty = mkdtempSync(join(tmpdir(), "edgehub-crlcache-"));
    later(() => rmSync(empty, { recursive: true, force: true }));
    const c = await hub({ crlSource: srv.url, crlCacheDir: empty, crlRequired: true });
    expect(c.crl.info().loaded).toBe(false);
    expect((await refused(c, leaf1)).reason).toBe("crl-missing");
  });

  it("refuses a CRL that rolls back, or that another CA signed, and keeps the good one", async () => {
    const revoked = await pki.leaf("leaf-r2");
    const srv = await crlServer();
    const now = Date.now();
    srv.serve(await pki.crl([revoked.cert], new Date(now - 60_000)));
    const t = await hub({ crlSource: srv.url });
    expect(t.crl.info().thisUpdate?.getTime()).toBe(Math.floor((now - 60_000) / 1000) * 1000);

    // An older list (the revocation missing) served by a compromised mirror: rollback refused.
    srv.serve(await pki.crl([], new Date(now - 3_600_000)));
    const rollback = await t.crl.refresh().then(() => undefined, (e: unknown) => e);
    expect(isEdgeTrustError(rollback, "HUB_CRL_INVALID")).toBe(true);
    expect((rollback as Error).message).toMatch(/older than the one already loaded/);

    // A list with the issuing CA's name, signed by another key (the Edge CA's).
    const forged = await x509.X509CrlGenerator.create({
      issuer: pki.issuing.certificate.subject, thisUpdate: new Date(now), nextUpdate: new Date(now + 86_400_000), entries: [],
      signingKey: pki.edgeCa.signingKey, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
    }, webcrypto as unknown as Crypto);
    srv.serve(Buffer.from(forged.rawData));
    const bad = await t.crl.refresh().then(() => undefined, (e: unknown) => e);
    expect(isEdgeTrustError(bad, "HUB_CRL_INVALID")).toBe(true);
    expect((bad as Error).message).toMatch(/not signed by a configured issuing CA/);

    // A 404 is an error, not an empty list.
    srv.serve(undefined);
    await expect(t.crl.refresh()).rejects.toThrow(/answered 404/);
    expect((await refused(t, revoked)).reason).toBe("revoked");
  });

  it("revoking the device's Edge CA cuts off its modules — the connected ones at once — while leaf devices stay", async () => {
    const srv = await crlServer();
    const t0 = Date.now();
    srv.serve(await pki.crl([], new Date(t0 - 60_000)));
    const t = await hub({ crlSource: srv.url });
    const mod = await connect(t, sensor);
    const lf = await connect(t, leaf1);

    srv.serve(await pki.crl([pki.edgeCa.certificate], new Date(t0)));
    const cut = within(new Promise<Rejection>((r) => t.hub.on("rejected", (x) => { if (x.stage === "session") r(x); })), 15_000, "session rejection");
    const gone = within(Promise.all([
      new Promise<void>((r) => mod.once("close", () => r())),
      new Promise<void>((r) => t.hub.on("disconnected", (id) => { if (id.key === "d1/sensor") r(); })),
    ]), 15_000, "module disconnected");
    await t.crl.refresh(); // what the refresh timer and SIGHUP do
    const r = await cut;
    await gone;
    expect(r).toMatchObject({ stage: "session", reason: "revoked", identity: "d1/sensor" });
    expect(r.detail).toMatch(/^CRL updated: Edge CA: serial /);
    expect(lf.connected).toBe(true);
    expect(t.hub.connectedIdentities()).toEqual(["leaf1"]);

    // A fresh module certificate from the revoked Edge CA is refused at connect.
    const fresh = await pki.module("sensor", ATT);
    const again = await refused(t, fresh);
    expect(again.reason).toBe("revoked");
    expect(again.detail).toMatch(/^Edge CA: /);
    await lf.publishAsync("devices/leaf1/messages/events/", "still here", { qos: 1 });
  });
});
