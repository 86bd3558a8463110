import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, connect, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { createLogger } from "../../common/index.js";
import type { KeyStore } from "../../hsm/index.js";
import { CertificateAuthority } from "../ca.js";
import { SqliteDb } from "../db.js";
import { rolloverIssuingCa } from "../init.js";
import { CaStore } from "../store.js";
import { RefusalAudit, type Refusal } from "../enrollment/refusals.js";
import { DATABASE_URL, announcePgSkip, makeTestCa, PG_SKIP_REASON, quietLogger, softHsm, testConfig, twoPgStores, uniqueSchema, type SoftHsm, type TestCa, type TwoStores } from "../test-helpers.js";
import { FleetEvents } from "./events.js";
import { SingleUseTokens } from "./single-use.js";

/**
 * Issue 13: the state a `ca serve` process used to keep in memory lives in the store, so two processes on one store
 * behave as one CA. Each "process" here is its own store handle (its own connection pool / SQLite connection) on the
 * same database: what one process writes, the other can only see through the store.
 */
announcePgSkip("ca-service/shared/shared-state.test.ts");

type TwoProcesses = TwoStores;

async function sqlitePair(): Promise<TwoProcesses> {
  const dir = mkdtempSync(join(tmpdir(), "et-shared-"));
  const a = await CaStore.fromDb(new SqliteDb(join(dir, "ca.db")));
  const b = await CaStore.fromDb(new SqliteDb(join(dir, "ca.db")));
  return { a, b, close: async () => { await a.close(); await b.close(); rmSync(dir, { recursive: true, force: true }); } };
}

const pgPair = (schema = uniqueSchema("et_shared")): Promise<TwoProcesses> => twoPgStores(schema);

const pairs: Array<[string, () => Promise<TwoProcesses>]> = [["SQLite", sqlitePair]];
if (DATABASE_URL) pairs.push(["PostgreSQL", () => pgPair()]);

const T0 = Date.parse("2030-01-01T00:00:00Z");

describe.each(pairs)("state shared by two processes on one store (%s)", (_name, open) => {
  let p: TwoProcesses;
  beforeAll(async () => {
    p = await open();
  });
  afterAll(async () => {
    await p?.close();
  });

  it("a single-use token made by one process is taken by the other exactly once; a replay on either finds nothing", async () => {
    const now = () => T0;
    const a = new SingleUseTokens(p.a.db, "nonce-once", { ttlMs: 60_000, maxPerSource: 100, now });
    const b = new SingleUseTokens(p.b.db, "nonce-once", { ttlMs: 60_000, maxPerSource: 100, now });
    await a.put("t1", "10.0.0.1", "payload-1");
    expect(await b.take("t1")).toMatchObject({ payload: "payload-1", source: "10.0.0.1", expired: false });
    expect(await a.take("t1")).toBeUndefined();
    expect(await b.take("t1")).toBeUndefined();
    // Twenty tokens, each raced by both processes at once: every token is handed out once, never twice.
    for (let i = 0; i < 20; i++) await (i % 2 ? a : b).put(`race-${i}`, "10.0.0.1", `p${i}`);
    const won = await Promise.all(Array.from({ length: 20 }, async (_, i) => {
      const [x, y] = await Promise.all([a.take(`race-${i}`), b.take(`race-${i}`)]);
      return [x, y].filter(Boolean).length;
    }));
    expect(won).toEqual(Array.from({ length: 20 }, () => 1));
    // Another kind (TPM challenges vs nonces) is another namespace.
    await a.put("shared-id", "10.0.0.1", "nonce");
    expect(await new SingleUseTokens(p.b.db, "tpm-once", { ttlMs: 60_000, maxPerSource: 100, now }).take("shared-id")).toBeUndefined();
    expect(await b.take("shared-id")).toMatchObject({ payload: "nonce" });
  });

  it("a token redeemed after its lifetime is refused as expired by the other process, and is gone", async () => {
    let t = T0;
    const a = new SingleUseTokens(p.a.db, "nonce-expiry", { ttlMs: 30_000, maxPerSource: 100, now: () => t });
    const b = new SingleUseTokens(p.b.db, "nonce-expiry", { ttlMs: 30_000, maxPerSource: 100, now: () => t });
    const expiresAt = await a.put("late", "10.0.0.1", "");
    expect(expiresAt).toBe(T0 + 30_000);
    t = T0 + 30_001;
    expect(await b.take("late")).toMatchObject({ expired: true });
    expect(await a.take("late")).toBeUndefined();
  });

  it("the per-source bound on outstanding tokens holds for both processes together, not once per process", async () => {
    const now = () => T0 + 3_600_000;
    const a = new SingleUseTokens(p.a.db, "nonce-bound", { ttlMs: 60_000, maxPerSource: 4, now });
    const b = new SingleUseTokens(p.b.db, "nonce-bound", { ttlMs: 60_000, maxPerSource: 4, now });
    const outcomes: string[] = [];
    for (let i = 0; i < 8; i++) {
      try {
        await (i % 2 ? b : a).put(`bound-${i}`, "10.0.0.7", "");
        outcomes.push("ok");
      } catch (e) {
        outcomes.push((e as { code?: string }).code ?? "?");
      }
    }
    // Four granted in all (two by each); with a bound per process each would have granted four.
    expect(outcomes).toEqual(["ok", "ok", "ok", "ok", "RATE_LIMITED", "RATE_LIMITED", "RATE_LIMITED", "RATE_LIMITED"]);
    // Another source is bounded on its own.
    await b.put("bound-other", "10.0.0.8", "");
  });

  it("refusal-audit budgets are spent by both processes together, and one summary covers both processes' suppressed refusals", async () => {
    let now = T0 + 7_200_000;
    const opts = { perSource: 3, total: 5, windowMs: 60_000, graceMs: 1000, now: () => now };
    const ra = new RefusalAudit(p.a, opts);
    const rb = new RefusalAudit(p.b, opts);
    const refusal = (source: string, target: string): Refusal => ({
      action: "registration.refused", actor: `unauthenticated(${source})`, target, code: "UNAUTHENTICATED", status: 401, reason: "no enrollment accepts this credential", source,
    });
    const out: string[] = [];
    // One source, alternating processes: its budget of 3 is one budget (per process it would have been 3 each).
    for (let i = 0; i < 6; i++) out.push(await (i % 2 ? rb : ra).record(refusal("10.0.1.1", `flood-${i}`)));
    expect(out).toEqual(["written", "written", "written", "suppressed", "suppressed", "suppressed"]);
    // The total budget (5) is shared too: two more sources get 2 entries between them, then nothing.
    const more: string[] = [];
    for (const s of ["10.0.1.2", "10.0.1.3"]) for (let i = 0; i < 2; i++) more.push(await (i % 2 ? ra : rb).record(refusal(s, `dev-${s}-${i}`)));
    expect(more.filter((o) => o === "written")).toHaveLength(2);
    const written = await p.a.db.query<{ n: number | string }>("SELECT count(*) AS n FROM audit_log WHERE action = 'registration.refused'");
    expect(Number(written[0]?.n)).toBe(5);
    // The window ends: within its grace period each process adds what it suppressed to the store; past it both roll
    // at once, and exactly one summary is written, holding what each of them suppressed.
    // (On SQLite the two handles live in one process, where one's open transaction and the other's busy wait would
    // block each other's event loop: they roll one after the other there.)
    const both = async () => {
      if (p.a.dialect === "postgres") await Promise.all([ra.roll(), rb.roll()]);
      else for (const r of [ra, rb]) await r.roll();
    };
    now += 60_500;
    await both();
    expect((await p.a.listAudit()).filter((x) => x.action === "refusals.suppressed")).toHaveLength(0);
    now += 1_000;
    await both();
    const summaries = (await p.b.listAudit()).filter((x) => x.action === "refusals.suppressed");
    expect(summaries).toHaveLength(1);
    expect(summaries[0]?.details).toMatchObject({ written: 5, suppressed: 5, byCode: { UNAUTHENTICATED: 5 } });
    await ra.close();
    await rb.close();
    expect((await p.a.verifyAudit()).ok).toBe(true);
  });
});

/**
 * A TCP proxy in front of PostgreSQL for one process's LISTEN connection: the shared server must not be restarted,
 * and this is the fault a restart is to a listener (its connection cut, reconnects refused for a while).
 */
async function pgProxy(target: URL): Promise<{ url: string; cut(): void; restore(): void; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  let up = true;
  const server: Server = createServer((c) => {
    if (!up) {
      c.destroy();
      return;
    }
    const u = connect(Number(target.port || 5432), target.hostname);
    sockets.add(c);
    sockets.add(u);
    const end = () => {
      c.destroy();
      u.destroy();
      sockets.delete(c);
      sockets.delete(u);
    };
    for (const s of [c, u]) {
      s.on("error", end);
      s.on("close", end);
    }
    c.pipe(u);
    u.pipe(c);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as { port: number }).port;
  const url = new URL(target.href);
  url.hostname = "127.0.0.1";
  url.port = String(port);
  return {
    url: url.href,
    cut: () => {
      up = false;
      for (const s of sockets) s.destroy();
    },
    restore: () => { up = true; },
    close: () => new Promise((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }),
  };
}

/** Poll `check` until it holds; a liveness bound (the machine is shared and slow), not a timing assertion. */
async function eventually(what: string, check: () => boolean | Promise<boolean>, boundMs = 30_000): Promise<void> {
  const end = Date.now() + boundMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`${what}: not within ${boundMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe.skipIf(!DATABASE_URL)(`rollover and CRL announcements reach another process (PostgreSQL LISTEN/NOTIFY)${DATABASE_URL ? "" : ` (skipped: ${PG_SKIP_REASON})`}`, () => {
  let p: TwoProcesses;
  let hsm: SoftHsm;
  let keys: KeyStore;
  let caA: TestCa;
  let caB: CertificateAuthority;
  let events: FleetEvents;
  let proxy: Awaited<ReturnType<typeof pgProxy>>;
  const seen: Array<{ kind: string; issuerId?: string; crlNumber?: number }> = [];
  const warnings: string[] = [];
  const schema = uniqueSchema("et_shared_ev");

  beforeAll(async () => {
    p = await pgPair(schema);
    hsm = softHsm("et-shared-events");
    keys = await hsm.open();
    caA = await makeTestCa(p.a, keys, testConfig());
    caB = await CertificateAuthority.load(p.b, keys, { trustDomain: caA.config.trustDomain, publicBaseUrl: caA.config.publicBaseUrl, logger: quietLogger() });
    proxy = await pgProxy(new URL(DATABASE_URL));
    const logger = createLogger("shared-state-test", { level: "warn", destination: new Writable({ write(c: Buffer, _e, cb) { warnings.push(c.toString()); cb(); } }) });
    // The safety-net poll is an hour away: only the LISTEN connection (and its resync after a reconnect) can move B.
    events = new FleetEvents({ db: p.b.db, ca: caB, databaseUrl: proxy.url, schema, logger, pollMs: 3_600_000, onEvent: (e) => seen.push({ ...e }) });
    await events.start();
  }, 120_000);

  afterAll(async () => {
    await events?.close();
    await proxy?.close();
    await keys?.close();
    hsm?.cleanup();
    await p?.close();
  });

  it("a CRL signed by one process is announced to the other (issuer and CRL number)", async () => {
    const issuer = caA.ca.current().record.id;
    const crl = await caA.ca.generateCrl(issuer);
    await eventually("the CRL event", () => seen.some((e) => e.kind === "crl" && e.issuerId === issuer && e.crlNumber === crl.crlNumber));
  });

  it("a rollover made through one process is the other's current issuing CA without a restart or a poll", async () => {
    const before = caB.current().record.id;
    const rec = await rolloverIssuingCa(p.a, keys, { logger: quietLogger() });
    expect(rec.id).not.toBe(before);
    await eventually("process B serving the new issuing CA", () => caB.current().record.id === rec.id);
    await events.settled();
    expect(seen.some((e) => e.kind === "cas")).toBe(true);
  }, 60_000);

  it("after its LISTEN connection is lost, the other process reconnects and re-reads what it missed (a rollover made meanwhile)", async () => {
    const before = caB.current().record.id;
    proxy.cut();
    await eventually("the listener noticing it lost its connection", () => warnings.some((w) => w.includes("lost the LISTEN connection")));
    const rec = await rolloverIssuingCa(p.a, keys, { logger: quietLogger() });
    // Its NOTIFY had nobody to reach in B, and nothing else updates B: B still serves the previous CA.
    await new Promise((r) => setTimeout(r, 500));
    await events.settled();
    expect(caB.current().record.id).toBe(before);
    proxy.restore();
    await eventually("process B re-reading the issuing CAs after reconnecting", () => caB.current().record.id === rec.id);
    await events.settled();
    expect(seen.some((e) => e.kind === "resync")).toBe(true);
  }, 90_000);
});
