import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { execFile } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TLSSocket } from "node:tls";
import { promisify } from "node:util";
import mqtt, { type MqttClient } from "mqtt";
import { createLogger, freePort, holdDownPort } from "../common/index.js";
import { DEV_ATTESTATION, createDevPki } from "../certs-dev/index.js";
import { Pkcs11KeyStore, SOFTHSM_MODULE, createSoftHsmDir, engineConfig, initToken, type SoftHsmDir } from "../hsm/index.js";
import { TEST_POLICY_YAML, connectWithCertificate, nextMessage as nextMessageWithin, startHubProcess, startMosquitto, within, type HubProcess } from "./fixtures.js";

/**
 * `edgetrust hub run` as an operator starts it: a child process through cli/index.ts main() (tsx, so the test does
 * not depend on a fresh dist/ build), with a development PKI from certs-dev, a config file, and real MQTT clients
 * connecting with mTLS. SIGTERM must end it cleanly (exit 0). Then the same with the hub's server key and the device
 * key in a SoftHSM token, used through the OpenSSL pkcs11 engine (OPENSSL_CONF from engineConfig()), upstream to a
 * TLS Mosquitto: no PEM of either key exists anywhere, and the token marks both sensitive and never extractable.
 */
const PIN = "hub-cli-pin-2718";
const quiet = createLogger("certs-dev", { level: "error" });
const run = promisify(execFile);

let base: string;
let cleanups: (() => Promise<void> | void)[] = [];
const later = (f: () => Promise<void> | void): void => void cleanups.unshift(f);
const nextMessage = (c: MqttClient, re: RegExp, what: string) => nextMessageWithin(c, re, what, 20_000);
const client = (port: number, dir: string, name: string, ca: string, extra: mqtt.IClientOptions = {}): Promise<MqttClient> => connectWithCertificate(port, dir, name, ca, later, extra);
/** Mosquitto as the cloud broker (TLS, client certificates from `clientCa` required); resolves when running. */
const mosquitto = (dir: string, port: number, server: { cert: string; key: string }, clientCa: string, extra: string[] = []): Promise<void> => startMosquitto(dir, port, { ...server, clientCa }, later, extra);

/** hub config + files around a certs-dev directory. */
function writeHubConfig(dir: string, pkiDir: string, hub: Record<string, unknown>, extra = ""): string {
  const state = join(dir, "state");
  mkdirSync(state, { recursive: true });
  writeFileSync(join(dir, "policy.yaml"), TEST_POLICY_YAML);
  writeFileSync(join(dir, "attested.json"), JSON.stringify({ d1: { sensor: DEV_ATTESTATION, monitor: DEV_ATTESTATION } }));
  writeFileSync(join(dir, "routes.json"), JSON.stringify({ routes: { up: "FROM /messages/modules/* INTO $upstream" } }));
  const cfg = {
    host: "127.0.0.1", port: 0, trustDomain: "example.com",
    serverCertFile: join(pkiDir, "edge-hub-server.chain.pem"), serverKey: join(pkiDir, "edge-hub-server.key.pem"),
    edgeCaFile: join(pkiDir, "edge-ca.cert.pem"), issuingCaFile: join(pkiDir, "issuing-ca.cert.pem"), trustBundleFile: join(pkiDir, "trust-bundle.pem"),
    policyFile: join(dir, "policy.yaml"), attestationFile: join(dir, "attested.json"), routesFile: join(dir, "routes.json"),
    stateDir: state, metricsPort: 0, ...hub,
  };
  const file = join(dir, "edgetrust.yaml");
  writeFileSync(file, `log:\n  level: info\nhub:\n${Object.entries(cfg).map(([k, v]) => `  ${k}: ${JSON.stringify(v)}`).join("\n")}\n${extra}`);
  return file;
}


/** SIGTERM → clients are disconnected and the process exits 0 with its state closed. */
async function stopGracefully(hub: HubProcess, clients: MqttClient[]): Promise<void> {
  const closed = clients.map((c) => within(new Promise<void>((r) => (c.connected ? c.once("close", () => r()) : r())), 20_000, "client closed by the hub"));
  hub.proc.kill("SIGTERM");
  const { code, signal } = await within(hub.exited, 30_000, "hub exit after SIGTERM");
  expect({ code, signal }, hub.out()).toEqual({ code: 0, signal: null });
  await Promise.all(closed);
  expect(hub.out()).toMatch(/edge hub stopped/);
}

beforeAll(() => {
  base = mkdtempSync(join(tmpdir(), "edgehub-cli-"));
});

afterEach(async () => {
  const fs = cleanups;
  cleanups = [];
  for (const f of fs) await f();
});

afterAll(() => {
  if (base) rmSync(base, { recursive: true, force: true });
});

describe("edgetrust hub run", () => {
  it("serves modules over mTLS with the certs-dev PKI and exits 0 on SIGTERM", async () => {
    const dir = join(base, "soft");
    const pkiDir = join(dir, "pki");
    await createDevPki({ out: pkiDir, trustDomain: "example.com", deviceId: "d1", modules: ["sensor", "monitor"], leafDeviceId: "leaf1", logger: quiet });
    const cfg = writeHubConfig(dir, pkiDir, {});
    const hub = startHubProcess(cfg, later, {});
    const port = Number((await hub.waitFor(/edge hub listening on 127\.0\.0\.1:(\d+)/, "hub listening"))[1]);

    const ca = join(pkiDir, "trust-bundle.pem");
    const mon = await client(port, pkiDir, "module-monitor", ca);
    const sen = await client(port, pkiDir, "module-sensor", ca);
    await mon.subscribeAsync("status/#", { qos: 1 });
    const got = nextMessage(mon, /^status\//, "status message at the monitor");
    await sen.publishAsync("status/d1/sensor", "up", { qos: 1 });
    const m = await got;
    expect([m.topic, m.payload.toString()]).toEqual(["status/d1/sensor", "up"]);
    // The hub's certificate is the certs-dev hub certificate.
    const peer = (sen.stream as TLSSocket).getPeerX509Certificate();
    expect(peer?.fingerprint256).toBe(new X509Certificate(readFileSync(join(pkiDir, "edge-hub-server.cert.pem"))).fingerprint256);
    // The policy is enforced by the process: a module may not publish into another module's inputs.
    const denied = within(new Promise<void>((r) => sen.once("close", () => r())), 20_000, "denied publish closes the connection");
    sen.publish("devices/d1/modules/monitor/inputs/x/", "evil", { qos: 1 });
    await denied;
    await hub.waitFor(/policy-denied/, "refusal logged with its reason");

    await stopGracefully(hub, [mon]);
  });

  it("keeps the hub server key and the device key in SoftHSM (OpenSSL engine): mTLS to modules, upstream to Mosquitto, SIGTERM exit 0", async () => {
    const dir = join(base, "hsm");
    mkdirSync(dir, { recursive: true });
    // A SoftHSM token of this file (SOFTHSM2_CONF is set in this process too: certs-dev generates the keys in it).
    const softhsm: SoftHsmDir = createSoftHsmDir();
    later(() => softhsm.cleanup());
    initToken({ module: SOFTHSM_MODULE, label: "hubtok", soPin: "so-" + PIN, userPin: PIN });
    const pinFile = join(dir, "user.pin");
    writeFileSync(pinFile, PIN + "\n", { mode: 0o600 });
    const pkiDir = join(dir, "pki");
    const store = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: "hubtok", pin: PIN, logger: quiet });
    try {
      await createDevPki({ out: pkiDir, trustDomain: "example.com", deviceId: "d1", modules: ["sensor", "monitor"], leafDeviceId: "leaf1", keyStore: store, logger: quiet });
    } finally {
      await store.close();
    }
    for (const k of ["edge-hub-server", "device-identity", "edge-ca", "issuing-ca", "root-ca"]) expect(existsSync(join(pkiDir, `${k}.key.pem`)), k).toBe(false);

    // The cloud broker: its own development PKI (software), trusting this device's root for client certificates.
    const cloudPki = join(dir, "cloud-pki");
    await createDevPki({ out: cloudPki, trustDomain: "cloud.example", deviceId: "cloud", modules: [], leafDeviceId: "reader", logger: quiet });
    const upPort = await freePort();
    await mosquitto(dir, upPort, { cert: join(cloudPki, "edge-hub-server.chain.pem"), key: join(cloudPki, "edge-hub-server.key.pem") }, join(pkiDir, "trust-bundle.pem"));
    const reader = await within(mqtt.connectAsync(`mqtts://127.0.0.1:${upPort}`, {
      cert: readFileSync(join(pkiDir, "leaf-leaf1.chain.pem")), key: readFileSync(join(pkiDir, "leaf-leaf1.key.pem")), ca: readFileSync(join(cloudPki, "trust-bundle.pem")),
      servername: "localhost", reconnectPeriod: 0, clientId: "cloud-reader",
    }), 20_000, "cloud reader");
    later(() => reader.endAsync(true).then(() => undefined, () => undefined));
    await reader.subscribeAsync("devices/#", { qos: 1 });

    const opensslConf = join(dir, "openssl.cnf");
    writeFileSync(opensslConf, engineConfig({ module: SOFTHSM_MODULE }));
    const cfg = writeHubConfig(dir, pkiDir, {
      serverKey: "hsm:certs-dev-edge-hub-server",
      upstreamUrl: `mqtts://localhost:${upPort}`, upstreamKey: "hsm:certs-dev-device-identity",
      upstreamCertFile: join(pkiDir, "device-identity.chain.pem"), upstreamCaFile: join(cloudPki, "trust-bundle.pem"),
    }, `hsm:\n  backend: pkcs11\n  module: ${SOFTHSM_MODULE}\n  tokenLabel: hubtok\n  pinFile: ${pinFile}\n`);
    expect(readFileSync(cfg, "utf8")).not.toContain(PIN);
    const hub = startHubProcess(cfg, later, { OPENSSL_CONF: opensslConf, SOFTHSM2_CONF: softhsm.conf, PKCS11_MODULE_PATH: "" });
    const port = Number((await hub.waitFor(/edge hub listening on 127\.0\.0\.1:(\d+)/, "hub listening"))[1]);
    await hub.waitFor(/upstream connected/, "upstream connected with the device key in the token");

    const ca = join(pkiDir, "trust-bundle.pem");
    const sen = await client(port, pkiDir, "module-sensor", ca);
    const peer = (sen.stream as TLSSocket).getPeerX509Certificate();
    expect(peer?.fingerprint256).toBe(new X509Certificate(readFileSync(join(pkiDir, "edge-hub-server.cert.pem"))).fingerprint256);
    const up = nextMessage(reader, /^devices\/d1\/modules\/sensor\/messages\/events\//, "telemetry upstream");
    await sen.publishAsync("devices/d1/modules/sensor/messages/events/", JSON.stringify({ t: 21.5 }), { qos: 1 });
    expect(JSON.parse((await up).payload.toString())).toEqual({ t: 21.5 });

    // The token says: both keys are sensitive and were never extractable (pkcs11-tool, a separate process).
    const { stdout } = await run("pkcs11-tool", ["--module", SOFTHSM_MODULE, "--token-label", "hubtok", "--login", "--pin", PIN, "--list-objects", "--type", "privkey"], {
      env: { ...process.env, SOFTHSM2_CONF: softhsm.conf },
    });
    for (const label of ["certs-dev-edge-hub-server", "certs-dev-device-identity"]) {
      const block = stdout.split(/\n(?=Private Key Object)/).find((b) => b.includes(`label:      ${label}`)) ?? "";
      expect(block, stdout).toMatch(/Access:.*\bsensitive\b/);
      expect(block).toMatch(/never extractable/);
    }

    await stopGracefully(hub, [sen]);
    expect(hub.out()).not.toContain(PIN);
  });

  it("kill -9 with 10,000 messages queued while upstream is down: after a restart all are delivered, in order per route", async () => {
    const dir = join(base, "kill9");
    const pkiDir = join(dir, "pki");
    await createDevPki({ out: pkiDir, trustDomain: "example.com", deviceId: "d1", modules: ["sensor", "monitor"], leafDeviceId: "leaf1", logger: quiet });
    const down = await heldDown();
    const ca = join(pkiDir, "trust-bundle.pem");
    const cfg = writeHubConfig(dir, pkiDir, {
      upstreamUrl: `mqtts://localhost:${down.port}`, upstreamKey: join(pkiDir, "device-identity.key.pem"),
      upstreamCertFile: join(pkiDir, "device-identity.chain.pem"), upstreamCaFile: ca,
      drainRatePerSecond: 5000, maxInflight: 200, outboxMaxMessages: 20_000,
    });
    // Two routes, one per module: order is promised per route.
    writeFileSync(join(dir, "routes.json"), JSON.stringify({ routes: {
      sensorUp: "FROM /messages/modules/sensor/* INTO $upstream", monitorUp: "FROM /messages/modules/monitor/* INTO $upstream",
    } }));
    const PER_ROUTE = 5000;
    let hub = startHubProcess(cfg, later, {});
    let port = Number((await hub.waitFor(/edge hub listening on 127\.0\.0\.1:(\d+)/, "hub listening"))[1]);
    const sen = await client(port, pkiDir, "module-sensor", ca);
    const mon = await client(port, pkiDir, "module-monitor", ca);
    // Every PUBACK = the outbox row is committed (the hub acknowledges only after its SQLite transaction).
    const send = async (c: MqttClient, module: string) => {
      for (let i = 0; i < PER_ROUTE; i += 250) {
        const batch: Promise<unknown>[] = [];
        for (let j = i; j < i + 250; j++) batch.push(c.publishAsync(`devices/d1/modules/${module}/messages/events/`, JSON.stringify({ seq: j }), { qos: 1 }));
        await Promise.all(batch);
      }
    };
    await within(Promise.all([send(sen, "sensor"), send(mon, "monitor")]), 120_000, "10,000 messages acknowledged by the hub");

    hub.proc.kill("SIGKILL");
    expect(await within(hub.exited, 10_000, "hub killed")).toEqual({ code: null, signal: "SIGKILL" });
    expect(hub.out()).not.toMatch(/upstream connected/);

    // The cloud broker comes up on that very port; the hub restarts on the same state directory.
    await down.release();
    await mosquitto(dir, down.port, { cert: join(pkiDir, "edge-hub-server.chain.pem"), key: join(pkiDir, "edge-hub-server.key.pem") }, ca,
      ["max_queued_messages 0", "max_inflight_messages 0"]);
    const reader = await client(down.port, pkiDir, "leaf-leaf1", ca, { clientId: "cloud-reader" });
    const got: Record<string, number[]> = { sensor: [], monitor: [] };
    const all = within(new Promise<void>((resolve) => {
      reader.on("message", (topic, payload) => {
        const m = /^devices\/d1\/modules\/(\w+)\/messages\/events\//.exec(topic);
        if (m?.[1]) got[m[1]]?.push((JSON.parse(payload.toString()) as { seq: number }).seq);
        if ((got.sensor?.length ?? 0) >= PER_ROUTE && (got.monitor?.length ?? 0) >= PER_ROUTE) resolve();
      });
    }), 120_000, "10,000 messages upstream");
    await reader.subscribeAsync("devices/#", { qos: 1 });
    hub = startHubProcess(cfg, later, {});
    port = Number((await hub.waitFor(/edge hub listening on 127\.0\.0\.1:(\d+)/, "hub restarted"))[1]);
    await all;
    const expected = [...Array(PER_ROUTE).keys()];
    // Nothing lost, nothing out of order (one clean upstream connection: no redelivery either).
    expect(got.sensor).toEqual(expected);
    expect(got.monitor).toEqual(expected);
    await stopGracefully(hub, []);
  }, 300_000);
});

/** A held-down port released after the test. */
async function heldDown(): Promise<{ port: number; release: () => Promise<void> }> {
  const h = await holdDownPort();
  later(h.release);
  return h;
}
