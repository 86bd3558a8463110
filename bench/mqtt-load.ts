import { spawn, type ChildProcess } from "node:child_process";

/**
 * The MQTT load processes of the hub benchmarks (bench/hub.ts, bench/hub-sas.ts): each a plain-JS child with one mqtt.js
 * client, so the load harness is not the broker's process and several load processes use several cores. Modes:
 * `sub` (count every message and its publish → delivery latency), `pub` (windowed QoS 1 until all PUBACKs), `conn`
 * (sequential TLS + CONNECT → CONNACK, then close). Each says READY, waits for `go()`, then says DONE/SENT/CONNECTED.
 */
const WORKER = `
const cfg = JSON.parse(process.env.MQTT_LOAD_CFG);
const mqtt = (await import(cfg.mqttUrl)).default;
const opts = { ca: cfg.ca, servername: "localhost", reconnectPeriod: 0, protocolVersion: 4, connectTimeout: 60000,
  ...(cfg.cert ? { cert: cfg.cert, key: cfg.key } : { username: cfg.username, password: cfg.password }) };
const url = "mqtts://127.0.0.1:" + cfg.port;
const say = (s) => process.stdout.write(s + "\\n");
const go = new Promise((r) => process.stdin.once("data", () => r()));
const fail = (e) => { process.stderr.write(String(e && e.stack || e) + "\\n"); process.exit(1); };
if (cfg.mode === "sub") {
  const c = await mqtt.connectAsync(url, { ...opts, clientId: cfg.clientId }).catch(fail);
  c.on("error", fail);
  const lat = new Float64Array(cfg.total);
  let n = 0;
  c.on("message", (_t, p) => {
    const now = process.hrtime.bigint();
    if (n < cfg.total) lat[n] = Number(now - p.readBigInt64BE(0)) / 1e6;
    n++;
    if (n === cfg.total) {
      const s = Array.from(lat).sort((a, b) => a - b);
      say("DONE " + JSON.stringify({ tLast: now.toString(), p50: s[Math.floor(0.5 * s.length)], p99: s[Math.min(s.length - 1, Math.floor(0.99 * s.length))] }));
      c.end(true, () => process.exit(0));
    }
  });
  await c.subscribeAsync(cfg.filter, { qos: 1 });
  say("READY");
} else if (cfg.mode === "pub") {
  const c = await mqtt.connectAsync(url, { ...opts, clientId: cfg.clientId }).catch(fail);
  c.on("error", fail);
  say("READY");
  await go;
  let sent = 0, acked = 0;
  await new Promise((resolve, reject) => {
    const one = () => {
      if (sent >= cfg.count) return;
      sent++;
      const p = Buffer.alloc(cfg.size, 0x61);
      if (cfg.stamp) p.writeBigInt64BE(process.hrtime.bigint(), 0);
      c.publish(cfg.topic, p, { qos: 1 }, (err) => {
        if (err) return reject(err);
        if (++acked === cfg.count) resolve(); else one();
      });
    };
    for (let i = 0; i < cfg.window; i++) one();
  }).catch(fail);
  say("SENT");
  c.end(true, () => process.exit(0));
} else {
  say("READY");
  await go;
  for (let i = 0; i < cfg.count; i++) {
    await new Promise((resolve, reject) => {
      const c = mqtt.connect(url, { ...opts, clientId: cfg.indexClientIds ? cfg.clientId + "-" + i : cfg.clientId });
      c.once("connect", () => c.end(true, resolve));
      c.once("error", (e) => { c.end(true); reject(e); });
    }).catch(fail);
  }
  say("CONNECTED");
  process.exit(0);
}
`;

export interface LoadConfig {
  mode: "sub" | "pub" | "conn";
  port: number;
  ca: string;
  clientId: string;
  /** An X.509 client: its certificate chain and key (PEM). */
  cert?: string;
  key?: string;
  /** Else a SAS client: MQTT user name and password (the token). */
  username?: string;
  password?: string;
  /** sub: the filter and how many messages to wait for. */
  filter?: string;
  total?: number;
  /** pub: the topic, how many messages, how many unacknowledged at once, payload bytes. */
  topic?: string;
  count?: number;
  window?: number;
  size?: number;
  /** pub: the send time (CLOCK_MONOTONIC, shared by processes) in each payload's first 8 bytes, for the sub's latency. */
  stamp?: boolean;
  /** conn: each connection its own client id (`<clientId>-<i>`) instead of `clientId` every time. */
  indexClientIds?: boolean;
}

export interface LoadProcess {
  proc: ChildProcess;
  /** The first stdout line matching `re` (rejects if the process exits first or after `ms`). */
  line(re: RegExp, ms?: number): Promise<RegExpMatchArray>;
  go(): void;
}

export function loadProcess(cfg: LoadConfig): LoadProcess {
  const proc = spawn(process.execPath, ["--input-type=module", "-e", WORKER], {
    env: { ...process.env, MQTT_LOAD_CFG: JSON.stringify({ ...cfg, mqttUrl: import.meta.resolve("mqtt") }) },
    stdio: ["pipe", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  proc.stdout?.on("data", (b: Buffer) => (out += b.toString()));
  proc.stderr?.on("data", (b: Buffer) => (err = (err + b.toString()).slice(-4000)));
  const exited = new Promise<number | null>((r) => proc.once("exit", (code) => r(code)));
  return {
    proc,
    go: () => proc.stdin?.write("go\n"),
    line: (re, ms = 180_000) => new Promise<RegExpMatchArray>((res, rej) => {
      const timer = setTimeout(() => finish(new Error(`load process (${cfg.mode}): no ${re} within ${ms} ms: ${err}`)), ms);
      const check = () => {
        const m = out.match(re);
        if (m) finish(undefined, m);
      };
      const finish = (e?: Error, m?: RegExpMatchArray) => {
        clearTimeout(timer);
        proc.stdout?.off("data", check);
        if (m) res(m);
        else rej(e ?? new Error("no match"));
      };
      proc.stdout?.on("data", check);
      void exited.then((code) => {
        const m = out.match(re);
        if (m) finish(undefined, m);
        else finish(new Error(`load process (${cfg.mode}) exited ${code} before ${re}: ${err}`));
      });
      check();
    }),
  };
}
