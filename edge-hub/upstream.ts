import { EventEmitter } from "node:events";
import type { ConnectionOptions } from "node:tls";
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import type { Logger } from "../common/index.js";
import type { HubStore, OutboxMessage } from "./store.js";

/**
 * The upstream link: one MQTT connection to the cloud broker with the device identity (TLS client certificate whose
 * key may stay in the HSM: pass the TLS key source's options as `tls`), draining the durable outbox.
 *
 * Delivery is at-least-once: a message leaves the outbox only when the broker's PUBACK arrives. Order is kept per route:
 * messages go out in (priority, arrival) order over one connection, and after a drop the window restarts from the
 * oldest unacknowledged message. A fresh MQTT client is made for every connection so mqtt.js never replays its own
 * in-memory copy in a different order. After a reconnect the outbox drains at `drainRatePerSecond`.
 */
/** TLS for the upstream connection: PEM cert/key/ca, or the TLS key source's engine options (`privateKeyEngine`...). */
export type UpstreamTls = Omit<ConnectionOptions, "cert" | "key" | "ca" | "ALPNProtocols"> & Pick<IClientOptions, "cert" | "key" | "ca">;

interface UpstreamOptions {
  url: string;
  clientId: string;
  /** Or a function asked before every (re)connect, so a renewed certificate and rotated key are taken up. */
  tls: UpstreamTls | (() => UpstreamTls | Promise<UpstreamTls>);
  store: HubStore;
  maxInflight: number;
  drainRatePerSecond: number;
  reconnectMs: number;
  keepaliveSeconds?: number;
  /**
   * Default true: CONNECT with clean session off under the stable client id (the device id), so the cloud broker keeps
   * the hub's QoS 1 subscriptions and queues what arrives for it (C2D, direct methods, desired patches) while the hub
   * is down or restarting, and hands it over on reconnect.
   */
  persistentSession?: boolean;
  log: Logger;
}

interface UpstreamEvents {
  connected: [];
  disconnected: [reason: string];
  delivered: [message: OutboxMessage];
  /** A message from the cloud broker on one of the `subscribe`d filters (direct methods, desired properties). */
  message: [topic: string, payload: Buffer];
  /** The cloud broker granted these filters (SUBACK). */
  subscribed: [filters: string[]];
}

export class Upstream extends EventEmitter<UpstreamEvents> {
  private client: MqttClient | undefined;
  private readonly inflight = new Set<number>();
  private acked: OutboxMessage[] = [];
  private ahead: OutboxMessage[] = [];
  private stopped = true;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private pumpTimer: NodeJS.Timeout | undefined;
  private purgeTimer: NodeJS.Timeout | undefined;
  private tokens = 0;
  private lastRefill = Date.now();
  private pumping = false;
  private readonly filters = new Set<string>();
  connected = false;

  constructor(private readonly opts: UpstreamOptions) {
    super();
  }

  start(): void {
    this.stopped = false;
    this.opts.store.purgeExpired();
    this.purgeTimer = setInterval(() => this.opts.store.purgeExpired(), 30_000);
    this.purgeTimer.unref();
    this.connect();
  }

  private connect(): void {
    if (this.stopped) return;
    const tls = this.opts.tls;
    if (typeof tls !== "function") return this.open(tls);
    Promise.resolve().then(tls).then((t) => this.open(t), (e: unknown) => {
      this.opts.log.warn({ err: (e as Error).message }, "upstream TLS credentials could not be loaded; retrying");
      if (!this.stopped) {
        this.reconnectTimer = setTimeout(() => this.connect(), this.opts.reconnectMs);
        this.reconnectTimer.unref();
      }
    });
  }

  private open(tls: UpstreamTls): void {
    if (this.stopped) return;
    const c = mqtt.connect(this.opts.url, {
      ...tls,
      clientId: this.opts.clientId,
      protocolVersion: 4,
      clean: this.opts.persistentSession === false,
      reconnectPeriod: 0,
      connectTimeout: 10_000,
      keepalive: this.opts.keepaliveSeconds ?? 30,
      resubscribe: false,
    });
    this.client = c;
    c.on("connect", () => {
      if (this.client !== c) return;
      this.connected = true;
      this.tokens = Math.min(this.opts.maxInflight, this.opts.drainRatePerSecond);
      this.lastRefill = Date.now();
      // Nagle's algorithm would hold each refill of the window until the broker's delayed ACK (~40 ms on Linux).
      (c.stream as { setNoDelay?: (on: boolean) => void } | undefined)?.setNoDelay?.(true);
      this.opts.log.info({ url: this.opts.url }, "upstream connected");
      // Subscribed again on every connect: a broker that lost the session (restart without persistence, expiry)
      // has none of them, and SUBSCRIBE of a filter the session has is harmless.
      if (this.filters.size > 0) this.subscribeOn(c, [...this.filters]);
      this.emit("connected");
      this.kick();
    });
    c.on("message", (topic, payload) => {
      if (this.client === c) this.emit("message", topic, payload);
    });
    const dropped = (reason: string) => {
      if (this.client !== c) return;
      this.client = undefined;
      const was = this.connected;
      this.connected = false;
      this.inflight.clear();
      this.ahead = [];
      c.removeAllListeners();
      c.on("error", () => undefined);
      c.end(true);
      if (was) {
        this.opts.log.warn({ reason }, "upstream disconnected");
        this.emit("disconnected", reason);
      }
      if (!this.stopped) {
        this.reconnectTimer = setTimeout(() => this.connect(), this.opts.reconnectMs);
        this.reconnectTimer.unref();
      }
    };
    c.on("error", (e) => dropped(e.message));
    c.on("close", () => dropped("connection closed"));
    c.on("offline", () => dropped("offline"));
  }

  /** Something was queued (or acknowledged): send what the window and the rate allow. */
  kick(): void {
    if (this.pumping) return;
    this.pumping = true;
    try {
      this.pump();
    } finally {
      this.pumping = false;
    }
  }

  private pump(): void {
    const c = this.client;
    if (!c || !this.connected || this.stopped) return;
    const now = Date.now();
    this.tokens = Math.min(this.opts.drainRatePerSecond, this.tokens + ((now - this.lastRefill) / 1000) * this.opts.drainRatePerSecond);
    this.lastRefill = now;
    const room = Math.min(this.opts.maxInflight - this.inflight.size, Math.floor(this.tokens));
    if (room <= 0) {
      if (this.inflight.size < this.opts.maxInflight && this.opts.store.depth().messages > this.inflight.size) this.schedulePump();
      return;
    }
    // Read ahead up to a window of rows and send from that: each query skips the messages in flight, so querying for
    // every PUBACK read the whole window from SQLite per message sent. The window stays a sliding one (a refill per
    // PUBACK: a broker that Nagles its PUBACKs would stall a batch refill on the delayed ACK). A message of a higher
    // priority queued meanwhile waits for at most this read-ahead; order within a route is unchanged (rows come in
    // (priority, seq) order and the next query starts after everything sent).
    if (this.ahead.length === 0) this.ahead = this.opts.store.next(Math.max(room, this.opts.maxInflight), this.inflight);
    const batch = this.ahead.splice(0, room);
    // One TLS write for the batch (cork), sent at once (no Nagle wait for the previous segment's ACK, see connect()).
    const stream = c.stream as { cork?: () => void; uncork?: () => void } | undefined;
    stream?.cork?.();
    for (const m of batch) {
      this.inflight.add(m.seq);
      this.tokens -= 1;
      c.publish(m.topic, m.payload, { qos: 1 }, (err) => {
        if (this.client !== c) return;
        if (err) return;
        this.acked.push(m);
        if (this.acked.length === 1) setImmediate(() => this.flushAcks(c));
      });
    }
    stream?.uncork?.();
    if (batch.length === room && (this.ahead.length > 0 || this.opts.store.depth().messages > this.inflight.size)) this.schedulePump();
  }

  /**
   * PUBACKs that arrived in one turn of the event loop are deleted from the outbox in one transaction (one WAL
   * commit instead of one per message); `delivered` is emitted after the rows are gone. A crash between a PUBACK and
   * this commit resends those messages on restart: at-least-once, as before.
   */
  private flushAcks(c: MqttClient | undefined): void {
    const done = this.acked;
    this.acked = [];
    if (done.length === 0) return;
    // The broker has them even if the connection dropped since: delete them either way (no needless resend).
    this.opts.store.ackMany(done.map((m) => m.seq));
    const current = c !== undefined && this.client === c;
    for (const m of done) {
      if (current) this.inflight.delete(m.seq);
      this.emit("delivered", m);
    }
    if (current) this.kick();
  }

  private schedulePump(): void {
    if (this.pumpTimer) return;
    const wait = Math.max(5, Math.ceil(1000 / this.opts.drainRatePerSecond));
    this.pumpTimer = setTimeout(() => {
      this.pumpTimer = undefined;
      this.kick();
    }, wait);
  }

  /** Listen to a filter on the cloud broker (QoS 1), now and after every reconnect. */
  subscribe(filter: string): void {
    if (this.filters.has(filter)) return;
    this.filters.add(filter);
    if (this.client && this.connected) this.subscribeOn(this.client, [filter]);
  }

  unsubscribe(filter: string): void {
    if (!this.filters.delete(filter)) return;
    if (this.client && this.connected) this.client.unsubscribe(filter, () => undefined);
  }

  private subscribeOn(c: MqttClient, filters: string[]): void {
    c.subscribe(filters, { qos: 1 }, (err, granted) => {
      if (err) {
        this.opts.log.warn({ err: err.message }, "upstream subscribe failed");
        return;
      }
      const ok: string[] = [];
      for (const g of granted ?? []) {
        if (g.qos === 128) this.opts.log.warn({ filter: g.topic }, "upstream broker refused a subscription");
        else ok.push(g.topic);
      }
      this.opts.log.info({ filters: ok }, "upstream subscribed");
      if (this.client === c) this.emit("subscribed", ok);
    });
  }

  /** Publish something that is not outbox traffic (e.g. a method response), QoS 1, best effort. */
  publishDirect(topic: string, payload: Buffer): void {
    this.client?.publish(topic, payload, { qos: 1 });
  }

  async stop(): Promise<void> {
    this.flushAcks(undefined);
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.pumpTimer);
    clearInterval(this.purgeTimer);
    const c = this.client;
    this.client = undefined;
    this.connected = false;
    this.inflight.clear();
    this.ahead = [];
    if (c) {
      c.removeAllListeners();
      c.on("error", () => undefined);
      await c.endAsync(true).catch(() => undefined);
    }
  }
}
