import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import { DEVICE, TestPki, digest, startTestHub, stopTestHub, type Credential } from "../edge-hub/fixtures.js";
import { row, type Benchmark } from "./types.js";

/**
 * Messages per second through the edge hub (mTLS, QoS 1, publisher → subscriber, full identity + policy checks on
 * every publish) against the same load through Mosquitto with the same TLS client certificates, on the same harness
 * in the same run. Target 0.25x: aedes is JavaScript on one core that also runs the clients and the TLS of both
 * sides, Mosquitto is C; the hub additionally evaluates the policy and parses the IoT Hub dialect on every message.
 */
const N = 5000;
const PAYLOAD = Buffer.alloc(256, 0x61);

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

async function throughput(port: number, pub: Credential, sub: Credential, ca: string): Promise<number> {
  const o = (c: Credential, id: string): IClientOptions => ({ cert: c.chainPem, key: c.keyPem, ca, servername: "localhost", clientId: id, reconnectPeriod: 0, protocolVersion: 4 });
  const s: MqttClient = await mqtt.connectAsync(`mqtts://127.0.0.1:${port}`, o(sub, "bench-sub"));
  const p: MqttClient = await mqtt.connectAsync(`mqtts://127.0.0.1:${port}`, o(pub, "bench-pub"));
  try {
    await s.subscribeAsync("status/#", { qos: 1 });
    let got = 0;
    const done = new Promise<void>((resolve) => s.on("message", () => { if (++got === N) resolve(); }));
    const t0 = process.hrtime.bigint();
    const sends: Promise<unknown>[] = [];
    for (let i = 0; i < N; i++) sends.push(p.publishAsync(`status/${DEVICE}/sensor`, PAYLOAD, { qos: 1 }));
    await Promise.all(sends);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([done, new Promise((_, rej) => (timer = setTimeout(() => rej(new Error(`only ${got}/${N} messages arrived`)), 60_000)))]);
    clearTimeout(timer);
    return N / (Number(process.hrtime.bigint() - t0) / 1e9);
  } finally {
    await p.endAsync();
    await s.endAsync();
  }
}

export const hubBenchmark: Benchmark = {
  id: "hub",
  description: "edge hub: QoS 1 messages/s over mTLS vs Mosquitto on the same harness",
  async run(progress) {
    const pki = await TestPki.create();
    const dir = mkdtempSync(join(tmpdir(), "bench-hub-"));
    const att = { imageDigest: digest("f"), manifestVersion: 1 };
    try {
      const pub = await pki.module("sensor", att);
      const sub = await pki.module("monitor", att);
      progress.step(`edge hub: ${N} messages`);
      const t = await startTestHub(pki);
      t.attestation.register(DEVICE, "sensor", att);
      t.attestation.register(DEVICE, "monitor", att);
      let hubRate: number;
      try {
        hubRate = await throughput(t.hub.boundPort, pub, sub, pki.rootPem());
      } finally {
        await stopTestHub(t);
      }
      progress.step(`mosquitto: ${N} messages`);
      const port = await freePort();
      const d = pki.out;
      const conf = join(dir, "mosquitto.conf");
      writeFileSync(conf, [`listener ${port} 127.0.0.1`, `cafile ${join(d, "trust-bundle.pem")}`, `certfile ${join(d, "edge-hub-server.chain.pem")}`,
        `keyfile ${join(d, "edge-hub-server.key.pem")}`, "require_certificate true", "allow_anonymous true", "persistence false", "user root", "max_queued_messages 0", "max_inflight_messages 0", ""].join("\n"));
      const m = spawn("mosquitto", ["-c", conf], { stdio: "ignore" });
      let mosqRate: number;
      try {
        await new Promise((r) => setTimeout(r, 500));
        mosqRate = await throughput(port, pub, sub, pki.rootPem());
      } finally {
        m.kill("SIGTERM");
      }
      return [row({
        name: "edge hub QoS 1 over mTLS (aedes + identity/policy checks)", value: hubRate, unit: "msg/s",
        reference: { name: "mosquitto (TLS client certs)", value: mosqRate }, target: 0.25, source: "issue 8 (edge-hub README: throughput target)",
      })];
    } finally {
      rmSync(dir, { recursive: true, force: true });
      pki.cleanup();
    }
  },
};
