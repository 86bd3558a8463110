import pg from "pg";
import { backoffDelay, type Logger } from "../../common/index.js";
import type { Db } from "../db.js";

/** What one process tells the others: the issuing CAs changed (rollover, retirement) or an issuer's CRL changed. */
type FleetEvent = { kind: "cas" } | { kind: "crl"; issuerId: string; crlNumber: number };

/** The PostgreSQL NOTIFY channel; the payload names the schema, so fleets sharing a database ignore each other. */
const FLEET_CHANNEL = "edgetrust_ca_events";

/**
 * Tell every `ca serve` process on this store (PostgreSQL NOTIFY, delivered at commit to every listener). On SQLite
 * there is one serving process; it notices changes made by the CLI by polling (see `FleetEvents`).
 */
export async function announce(db: Db, event: FleetEvent): Promise<void> {
  if (db.dialect !== "postgres") return;
  const schema = (db as Db & { schema?: string }).schema ?? "public";
  await db.query("SELECT pg_notify(?, ?)", [FLEET_CHANNEL, JSON.stringify({ schema, ...event })]);
}

/**
 * What the events need of the CA engine (ca.ts's `CertificateAuthority`): re-read the issuing CAs and say which is
 * current. Declared here, not imported, so the engine (which announces events) and the events do not import each other.
 */
interface IssuingCaView {
  reload(): Promise<void>;
  current(): { record: { id: string } };
  issuers(): readonly unknown[];
}

interface FleetEventsOptions {
  db: Db;
  ca: IssuingCaView;
  /** PostgreSQL URL for the LISTEN connection (empty: SQLite, poll only). */
  databaseUrl: string;
  schema: string;
  logger: Logger;
  /** Safety-net poll of the issuing CAs (default 30 s on PostgreSQL, where NOTIFY does the work; 5 s on SQLite). */
  pollMs?: number;
  /** Called for every event after the CA engine has applied it (metrics, caches). */
  onEvent?: (e: FleetEvent | { kind: "resync" }) => void;
}

/**
 * Keeps this process's view of the issuing CAs in step with the fleet: LISTEN on PostgreSQL (reconnecting with
 * backoff after a database restart, then re-reading everything, since notifications sent meanwhile are lost) and a
 * slow poll of the `cas` table as a safety net, the only mechanism on SQLite.
 */
export class FleetEvents {
  private client: pg.Client | undefined;
  private poller: NodeJS.Timeout | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private casSignature = "";
  /** Reconnect attempts since the LISTEN connection last came up. */
  private failures = 0;
  private static readonly RETRY = { initialMs: 250, maxMs: 10_000 };
  private reloading: Promise<void> = Promise.resolve();

  constructor(private readonly opts: FleetEventsOptions) {}

  async start(): Promise<void> {
    this.casSignature = await this.signature();
    if (this.opts.db.dialect === "postgres" && this.opts.databaseUrl) await this.listen();
    const pollMs = this.opts.pollMs ?? (this.opts.db.dialect === "postgres" ? 30_000 : 5_000);
    this.poller = setInterval(() => void this.poll(), pollMs);
    this.poller.unref();
  }

  private async signature(): Promise<string> {
    const rows = await this.opts.db.query<{ id: string; status: string }>("SELECT id, status FROM cas ORDER BY id");
    return rows.map((r) => `${r.id}:${r.status}`).join(",");
  }

  private async poll(): Promise<void> {
    try {
      const sig = await this.signature();
      if (sig !== this.casSignature) await this.apply({ kind: "cas" });
    } catch (e) {
      this.opts.logger.warn({ err: (e as Error).message }, "fleet: could not poll the issuing CAs");
    }
  }

  private async listen(): Promise<void> {
    const client = new pg.Client({ connectionString: this.opts.databaseUrl });
    client.on("notification", (msg) => {
      if (msg.channel !== FLEET_CHANNEL || !msg.payload) return;
      let e: (FleetEvent & { schema?: string }) | undefined;
      try {
        e = JSON.parse(msg.payload) as FleetEvent & { schema?: string };
      } catch {
        return;
      }
      if (e.schema !== this.opts.schema) return;
      void this.apply(e.kind === "crl" ? { kind: "crl", issuerId: e.issuerId, crlNumber: e.crlNumber } : { kind: "cas" });
    });
    const lost = (why: string) => {
      if (this.client !== client) return;
      this.client = undefined;
      client.removeAllListeners("error");
      client.on("error", () => undefined);
      client.end().catch(() => undefined);
      if (this.closed) return;
      this.opts.logger.warn({ reason: why, retryInMs: backoffDelay(this.failures, FleetEvents.RETRY) }, "fleet: lost the LISTEN connection; reconnecting");
      this.scheduleReconnect();
    };
    client.on("error", (e) => lost(e.message));
    client.on("end", () => lost("connection ended"));
    this.client = client;
    try {
      await client.connect();
      await client.query(`LISTEN ${FLEET_CHANNEL}`);
    } catch (e) {
      lost((e as Error).message);
      return;
    }
    this.failures = 0;
  }

  private scheduleReconnect(): void {
    if (this.reconnectTimer || this.closed) return;
    const wait = backoffDelay(this.failures++, FleetEvents.RETRY);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.listen().then(() => {
        // Notifications sent while we were away are gone: re-read what they would have told us.
        if (this.client) void this.apply({ kind: "resync" });
      });
    }, wait);
    this.reconnectTimer.unref();
  }

  private apply(e: FleetEvent | { kind: "resync" }): Promise<void> {
    this.reloading = this.reloading.then(async () => {
      try {
        if (e.kind === "cas" || e.kind === "resync") {
          const before = this.opts.ca.current().record.id;
          await this.opts.ca.reload();
          this.casSignature = await this.signature();
          const after = this.opts.ca.current().record.id;
          if (before !== after || e.kind === "cas") this.opts.logger.info({ event: e.kind, currentIssuer: after, issuingCas: this.opts.ca.issuers().length }, "fleet: issuing CAs reloaded");
        }
        this.opts.onEvent?.(e);
      } catch (err) {
        this.opts.logger.warn({ event: e.kind, err: (err as Error).message }, "fleet: could not apply an event (the next poll retries)");
        this.casSignature = "";
      }
    });
    return this.reloading;
  }

  /** Wait until every event received so far is applied (tests). */
  settled(): Promise<void> {
    return this.reloading;
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.poller) clearInterval(this.poller);
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    const c = this.client;
    this.client = undefined;
    if (c) await c.end().catch(() => undefined);
  }
}
