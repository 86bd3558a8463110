import { afterAll, describe, expect, it } from "vitest";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { Agent } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { execFileSync, spawnSync } from "node:child_process";
import { SOFTHSM_MODULE } from "../hsm/index.js";
import { PostgresDb } from "./db.js";
import { runCli } from "../test/fixtures/cli.js";
import { DATABASE_URL, PG_SKIP_REASON, announcePgSkip, callJson as call, csrFor, softHsm, startCaServe, TEST_PIN, uniqueSchema, within, type CaServe, type JsonReply, type SoftHsm } from "./test-helpers.js";

/**
 * A PostgreSQL store whose server-side backends are terminated (what a fast shutdown, a failover or an administrator
 * does: FATAL 57P01 "terminating connection due to administrator command") while `ca serve --workers 2` is idle and
 * while it issues under load. The service's connections carry an application_name of this test's own, and only those
 * backends are terminated — never another user's of the shared server. No process may die (an unhandled 'error' of a
 * pg client ends it): every answer is the certificate or 503 STORAGE_UNAVAILABLE problem+json, and it issues after.
 */
const CLIENTS = 12;

announcePgSkip("ca-service/pg-backend-loss.test.ts");
// The race case terminates the backend while it holds the event loop, so it needs a synchronous client: psql.
const PSQL_MISSING = spawnSync("psql", ["--version"]).error ? "psql (Debian postgresql-client) is not installed" : "";
if (DATABASE_URL && PSQL_MISSING) process.stderr.write(`ca-service/pg-backend-loss.test.ts: the pooled-connection race case is skipped: ${PSQL_MISSING}\n`);

describe.skipIf(!DATABASE_URL || Boolean(PSQL_MISSING))(`a pooled PostgreSQL connection whose backend is terminated${DATABASE_URL ? (PSQL_MISSING ? ` (skipped: ${PSQL_MISSING})` : "") : ` (${PG_SKIP_REASON})`}`, () => {
  it("handed to a waiting transaction while the FATAL 57P01 is still unread: the transaction fails as 503 STORAGE_UNAVAILABLE, nothing is thrown", async () => {
    const appName = `et_pgloss_${randomBytes(6).toString("hex")}`;
    const db = new PostgresDb(`${DATABASE_URL}${DATABASE_URL.includes("?") ? "&" : "?"}application_name=${appName}`, uniqueSchema("et_pgloss"));
    const uncaught: Error[] = [];
    const onUncaught = (e: Error) => { uncaught.push(e); };
    // vitest reports an uncaught exception as an error of the run; counting it here names it in this test.
    process.prependListener("uncaughtException", onUncaught);
    let open!: () => void;
    const gate = new Promise<void>((r) => { open = r; });
    try {
      await db.init();
      // Seven connections held in transactions; the eighth (the pool's last) runs one statement.
      const holders = Array.from({ length: 7 }, () => db.transaction(async (tx) => { await tx.query("SELECT 1"); await gate; }));
      await new Promise((r) => setTimeout(r, 300));
      const single = db.query("SELECT pg_sleep(0.2)");
      // A transaction waiting for a connection: it gets the eighth as soon as that statement's answer is read.
      const waiting = db.transaction((tx) => tx.query("SELECT 1"));
      await new Promise((r) => setTimeout(r, 50));
      // With the event loop held, the answer and then the FATAL of the terminated backend both arrive unread, and
      // are parsed in one go: the connection is released and handed to the waiter before the FATAL is parsed.
      // On a loaded machine the statement may still be running: look again (the loop stays held) until it is idle.
      const pause = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
      let killed = "0";
      for (let i = 0; i < 50 && killed !== "1"; i++) {
        pause(i === 0 ? 400 : 200);
        killed = execFileSync("psql", [DATABASE_URL, "-Atc", `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '${appName}' AND state = 'idle'`]).toString().trim();
      }
      expect(killed).toBe("1");
      pause(300);
      await single;
      const outcome = await waiting.then(() => "committed", (e: unknown) => `${(e as { code?: string }).code}`);
      expect(["committed", "STORAGE_UNAVAILABLE"]).toContain(outcome);
      open();
      await Promise.all(holders);
      await new Promise((r) => setTimeout(r, 200));
      expect(uncaught.map((e) => e.message)).toEqual([]);
      // The pool drops the broken connection and serves on a new one.
      expect(await db.query<{ one: number }>("SELECT 1 AS one")).toEqual([{ one: 1 }]);
    } finally {
      open();
      process.off("uncaughtException", onUncaught);
      await db.dropSchema().catch(() => undefined);
      await db.close();
    }
  }, 60_000);
});

describe.skipIf(!DATABASE_URL)(`ca serve --workers 2 on PostgreSQL whose backends are terminated${DATABASE_URL ? "" : ` (${PG_SKIP_REASON})`}`, () => {
  const schema = uniqueSchema("et_pgloss");
  const appName = `et_pgloss_${randomBytes(6).toString("hex")}`;
  const url = `${DATABASE_URL}${DATABASE_URL.includes("?") ? "&" : "?"}application_name=${appName}`;
  let hsm: SoftHsm | undefined;
  let dir = "";
  let cfg = "";
  let serve: CaServe | undefined;
  const env = (): NodeJS.ProcessEnv => ({ ...process.env, SOFTHSM2_CONF: hsm?.conf, CA_TEST_PIN: TEST_PIN });
  // The test's own connection (another application_name): it terminates the service's backends and only those.
  const admin = new PostgresDb(DATABASE_URL, schema);
  const terminate = async (): Promise<number> => {
    const rows = await admin.query<{ n: string }>("SELECT count(*) AS n FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ? AND pid <> pg_backend_pid()) t", [appName]);
    return Number(rows[0]?.n ?? 0);
  };

  afterAll(async () => {
    if (serve) await serve.stop().catch(() => undefined);
    await admin.dropSchema().catch(() => undefined);
    await admin.close();
    hsm?.cleanup();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("idle and under issuance load: no process dies, every answer is a certificate or 503 STORAGE_UNAVAILABLE problem+json, and it issues after", async () => {
    hsm = softHsm(`et-pgloss-${randomBytes(3).toString("hex")}`);
    dir = mkdtempSync(join(tmpdir(), "et-pgloss-"));
    cfg = join(dir, "edgetrust.yaml");
    writeFileSync(cfg, [
      "log:", "  level: warn",
      "hsm:", "  backend: pkcs11", `  module: ${SOFTHSM_MODULE}`, `  tokenLabel: ${hsm.tokenLabel}`, "  pinEnv: CA_TEST_PIN",
      "ca:", "  host: 127.0.0.1", "  port: 0", "  revocationPort: -1", "  trustDomain: pgloss.edgetrust", "  rateLimitPerMinute: 1000000",
      `  databaseUrl: ${url}`, `  databaseSchema: ${schema}`, "",
    ].join("\n"));
    const cli = (args: string[]) => runCli(["ca", ...args, "-c", cfg], env(), 180_000);
    const init = await cli(["init", "--json"]);
    expect(init.code, init.stderr).toBe(0);
    const { adminToken: token, rootCertificatePem } = JSON.parse(init.stdout) as { adminToken: string; rootCertificatePem: string };
    expect((await cli(["enrollment", "set", "pgloss-dev"])).code).toBe(0);
    const csrs = await Promise.all(Array.from({ length: 4 }, (_, i) => csrFor(`pgloss-${i}`)));

    serve = startCaServe(["-c", cfg, "--workers", "2"], env(), { detached: true });
    const base = await serve.listening;
    const agent = new Agent({ keepAlive: true, maxSockets: CLIENTS, ca: rootCertificatePem });
    const issue = (i: number) => call(agent, "POST", `${base}/v1/certificates`, token, { csr: csrs[i % csrs.length], profile: "device-identity", deviceId: "pgloss-dev" });
    const unexpected: string[] = [];
    const check = (r: JsonReply) => {
      if (r.status === 201) return;
      if (r.status === 503 && r.json.code === "STORAGE_UNAVAILABLE" && r.type.startsWith("application/problem+json")) return;
      unexpected.push(`${r.status} ${r.type} ${JSON.stringify(r.json).slice(0, 300)}`);
    };
    const issuesAgain = async (what: string) => {
      // The pool finds its broken connections on use: a few answers may still be 503 before one issues.
      for (let i = 0; i < 40; i++) {
        const r = await issue(i);
        check(r);
        if (r.status === 201) return;
        await new Promise((res) => setTimeout(res, 250));
      }
      throw new Error(`${what}: no certificate issued after the backends were terminated\n${serve?.stderr() ?? ""}`);
    };
    try {
      // Warm every worker's pool and LISTEN connection, then let them sit idle.
      for (let i = 0; i < 8; i++) check(await issue(i));
      expect(unexpected).toEqual([]);

      // 1. Idle: every pooled connection and the LISTEN connections are terminated with nothing in flight.
      await new Promise((res) => setTimeout(res, 500));
      expect(await terminate()).toBeGreaterThan(0);
      await new Promise((res) => setTimeout(res, 1_000));
      await issuesAgain("idle");

      // 2. Under load: backends terminated again and again while every client keeps an issuance in flight.
      let stop = false;
      let issued = 0;
      let refused = 0;
      const clientErrors: string[] = [];
      const client = async (c: number) => {
        for (let n = 0; !stop; n++) {
          try {
            const r = await issue(c + n);
            check(r);
            if (r.status === 201) issued++;
            else refused++;
          } catch (e) {
            clientErrors.push((e as Error).message);
            return;
          }
        }
      };
      const clients = Array.from({ length: CLIENTS }, (_, c) => client(c));
      let terminated = 0;
      for (let round = 0; round < 6; round++) {
        await new Promise((res) => setTimeout(res, 400));
        terminated += await terminate();
      }
      stop = true;
      await within(Promise.all(clients), 60_000, "clients ending after the terminations", () => serve?.stderr() ?? "");
      expect(terminated).toBeGreaterThan(0);
      process.stderr.write(`pg-backend-loss: under load ${issued} issued, ${refused} answered 503, ${terminated} backends terminated\n`);
      await issuesAgain("under load");

      // No worker died (the primary replaces a dead one and says so) and no connection was cut.
      expect(clientErrors).toEqual([]);
      expect(unexpected).toEqual([]);
      expect(serve.proc.exitCode).toBeNull();
      expect(serve.stderr()).not.toMatch(/worker died|Unhandled 'error' event|uncaught/i);
    } finally {
      agent.destroy();
    }
    expect(await serve.stop()).toBe(0);
    serve = undefined;
  }, 300_000);
});
