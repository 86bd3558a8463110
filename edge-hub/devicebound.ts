import type Database from "better-sqlite3";
import type { Client } from "aedes";
import type { Logger } from "../common/index.js";
import { topicMatches } from "../policy/index.js";
import { parsePropertyBag } from "./dialect.js";

/**
 * Cloud-to-device messages (IoT Hub C2D) relayed by the hub:
 *   upstream  devices/{d}/messages/devicebound/{bag}                 for a leaf device behind this hub
 *             devices/{self}/modules/{m}/messages/devicebound/{bag}  for a module of this device
 *   delivered on the same topic (without the upstream prefix) to that identity's connection only, QoS 1.
 *
 * The hub holds each message in its SQLite file before the upstream PUBACK goes out (the handler runs synchronously
 * inside mqtt.js's message dispatch, which acknowledges after it), so a message the cloud broker handed over survives
 * a hub crash. It is delivered once its identity is connected and subscribed to a filter covering the topic, and
 * deleted on that client's PUBACK (persistent client sessions, as the Azure SDKs open; aedes reports no PUBACK of a
 * clean session, so there it is deleted once written to the connection): at-least-once up to the device's connection,
 * and to the device itself for persistent sessions (a device may see a message twice after a crash). A message waits at most its `$.exp` (ISO 8601 in the bag) or `ttlSeconds`; at `maxMessages` held, a
 * new message is dropped with a warning rather than growing the file without bound (a cloud-side flood must not
 * fill the device's disk).
 */
interface DeviceboundOptions {
  db: Database.Database;
  deviceId: string;
  ttlSeconds: number;
  maxMessages: number;
  log: Logger;
}

interface DeviceboundTopic {
  deviceId: string;
  moduleId?: string;
  /** The topic as the device sees it (no upstream prefix). */
  local: string;
  expiresAt?: number;
}

interface HeldRow {
  seq: number;
  topic: string;
  payload: Buffer;
}

/** The upstream filter for one identity's C2D messages (`+` as module = every module of this device). */
export const deviceboundFilter = (deviceId: string, moduleId?: string): string =>
  `devices/${deviceId}${moduleId === undefined ? "" : `/modules/${moduleId}`}/messages/devicebound/#`;

export function parseDeviceboundTopic(topic: string): DeviceboundTopic | undefined {
  const lv = topic.split("/");
  if (lv[0] !== "devices" || !lv[1]) return undefined;
  const mod = lv[2] === "modules";
  const at = mod ? 4 : 2;
  if (mod && !lv[3]) return undefined;
  if (lv[at] !== "messages" || lv[at + 1] !== "devicebound") return undefined;
  // The bag level (possibly empty: the SDKs match `devicebound/` + anything), and at most one trailing empty level.
  const rest = lv.slice(at + 2);
  if (rest.length === 0 || rest.length > 2 || (rest.length === 2 && (rest[1] !== "" || rest[0] === ""))) return undefined;
  let expiresAt: number | undefined;
  try {
    const exp = parsePropertyBag(rest[0] ?? "").system.exp;
    const t = exp === undefined ? NaN : Date.parse(exp);
    if (Number.isFinite(t)) expiresAt = t;
  } catch {
    return undefined;
  }
  return {
    deviceId: lv[1], ...(mod ? { moduleId: lv[3] } : {}), local: topic, ...(expiresAt === undefined ? {} : { expiresAt }),
  };
}

export class DeviceboundRelay {
  private readonly insert: Database.Statement;
  private readonly pendingFor: Database.Statement;
  private readonly remove: Database.Statement;
  private readonly count: Database.Statement;
  /** Connections subscribed to their C2D topic: identity → client and its granted filters. */
  private readonly receivers = new Map<string, { client: Client; filters: Set<string> }>();
  /** Written to a client, awaiting its PUBACK: `identity \0 topic` → held rows, in the order written. */
  private readonly unacked = new Map<string, number[]>();
  /** Rows written and not yet acknowledged (not written twice on one connection). */
  private readonly inFlight = new Set<number>();

  constructor(private readonly o: DeviceboundOptions) {
    o.db.exec(`
      CREATE TABLE IF NOT EXISTS devicebound (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        identity TEXT NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        expires_at INTEGER NOT NULL
      );
      CREATE INDEX IF NOT EXISTS devicebound_identity ON devicebound(identity, seq);
    `);
    this.insert = o.db.prepare("INSERT INTO devicebound (identity, topic, payload, expires_at) VALUES (?, ?, ?, ?)");
    this.pendingFor = o.db.prepare("SELECT seq, topic, payload FROM devicebound WHERE identity = ? AND expires_at > ? ORDER BY seq");
    this.remove = o.db.prepare("DELETE FROM devicebound WHERE seq = ?");
    this.count = o.db.prepare("SELECT COUNT(*) AS n FROM devicebound WHERE expires_at > ?");
  }

  /**
   * A C2D message from the cloud broker (topic without the upstream prefix): held, then delivered if its identity
   * is listening now. Returns false when the topic is not C2D (or not for an identity behind this hub).
   */
  fromCloud(topic: string, payload: Buffer, now = Date.now()): boolean {
    const t = parseDeviceboundTopic(topic);
    if (!t) return false;
    // Modules exist only on this device; a C2D message for the device itself has no connection to go to.
    if (t.moduleId !== undefined ? t.deviceId !== this.o.deviceId : t.deviceId === this.o.deviceId) return false;
    const identity = t.moduleId === undefined ? t.deviceId : `${t.deviceId}/${t.moduleId}`;
    const expiresAt = Math.min(t.expiresAt ?? Infinity, now + this.o.ttlSeconds * 1000);
    if (expiresAt <= now) {
      this.o.log.info({ identity }, "C2D message already expired; dropped");
      return true;
    }
    this.o.db.prepare("DELETE FROM devicebound WHERE expires_at <= ?").run(now);
    if ((this.count.get(now) as { n: number }).n >= this.o.maxMessages) {
      this.o.log.warn({ identity, held: this.o.maxMessages }, "C2D hold full; message dropped");
      return true;
    }
    this.insert.run(identity, t.local, payload, expiresAt);
    if (this.receivers.has(identity)) this.deliver(identity, now);
    else this.o.log.info({ identity }, "C2D message held until its device connects");
    return true;
  }

  /** A client's subscriptions are in place: C2D held for it goes out if one of them covers its topic. */
  subscribed(identity: string, client: Client, filters: string[]): void {
    const r = this.receivers.get(identity);
    const mine = filters.filter((f) => topicMatches(f, `${identity.includes("/") ? `devices/${identity.replace("/", "/modules/")}` : `devices/${identity}`}/messages/devicebound/x`));
    if (mine.length === 0) return;
    if (r && r.client === client) mine.forEach((f) => r.filters.add(f));
    else this.receivers.set(identity, { client, filters: new Set(mine) });
    this.deliver(identity);
  }

  /** The client acknowledged a QoS 1 message: a held C2D message it was given leaves the hold. */
  acked(identity: string, topic: string): void {
    const k = `${identity}\u0000${topic}`;
    const q = this.unacked.get(k);
    const seq = q?.shift();
    if (seq === undefined) return;
    if (q?.length === 0) this.unacked.delete(k);
    this.inFlight.delete(seq);
    this.remove.run(seq);
  }

  /** The connection is gone: what it did not acknowledge stays held for the next one. */
  disconnected(identity: string, client: Client): void {
    if (this.receivers.get(identity)?.client !== client) return;
    this.receivers.delete(identity);
    for (const [k, seqs] of this.unacked) {
      if (!k.startsWith(`${identity}\u0000`)) continue;
      seqs.forEach((s) => this.inFlight.delete(s));
      this.unacked.delete(k);
    }
  }

  private deliver(identity: string, now = Date.now()): void {
    const r = this.receivers.get(identity);
    if (!r) return;
    for (const row of this.pendingFor.all(identity, now) as HeldRow[]) {
      if (this.inFlight.has(row.seq)) continue;
      if (![...r.filters].some((f) => topicMatches(f, row.topic))) continue;
      this.inFlight.add(row.seq);
      const k = `${identity}\u0000${row.topic}`;
      this.unacked.set(k, [...(this.unacked.get(k) ?? []), row.seq]);
      const client = r.client;
      client.publish({ cmd: "publish", topic: row.topic, payload: row.payload, qos: 1, retain: false, dup: false }, (err) => {
        if (err) this.o.log.warn({ identity, err: err.message }, "C2D delivery failed; kept for the next connection");
        // A clean-session client's PUBACK is not reported by aedes (it stores nothing for such sessions): the message
        // leaves the hold once written to its connection. A persistent session (the Azure SDKs) keeps it until PUBACK.
        else if (client.clean) this.acked(identity, row.topic);
      });
    }
  }

  /** Messages held now (unexpired). */
  held(now = Date.now()): number {
    return (this.count.get(now) as { n: number }).n;
  }
}
