import { afterAll, describe, expect, it } from "vitest";
import type { ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { Agent } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SOFTHSM_MODULE } from "../hsm/index.js";
import { PostgresDb } from "./db.js";
import { CaStore } from "./store.js";
import { runCli } from "../test/fixtures/cli.js";
import { DATABASE_URL, PG_SKIP_REASON, announcePgSkip, callJson as call, csrFor, softHsm, startCaServe, TEST_PIN, uniqueSchema, within, type CaServe, type JsonReply, type SoftHsm } from "./test-helpers.js";

/**
 * Issue 12: `kill -9` of `ca serve` under concurrent HTTPS issuance. Group commit answers a caller only after the
 * transaction holding its certificate committed, so every certificate a client received must be in the store after
 * the crash, each with its audit entry, and `ca audit verify` must pass. Certificates of the batch the process died
 * in may be committed without an answer (allowed) or lost (allowed: nobody holds them); never answered-and-lost.
 */
/** Concurrent clients, each with a request always in flight. */
const CLIENTS = 24;
/** Certificates received before the kill: a few seconds of load on a busy machine. */
const RECEIVED_BEFORE_KILL = 150;
const CSRS = 16;

interface Backend {
  name: string;
  /** `ca serve --workers` under load: 1 = the writing process itself is killed; more = the whole group is. */
  workers: number;
  config: (dir: string) => string[];
  open: (dir: string) => Promise<CaStore>;
  cleanup: () => Promise<void>;
}

function suite(b: Backend) {
  describe(`kill -9 of ca serve --workers ${b.workers} under load (${b.name})`, () => {
    let hsm: SoftHsm | undefined;
    let dir = "";
    let cfg = "";
    const procs: ChildProcess[] = [];
    const env = (): NodeJS.ProcessEnv => ({ ...process.env, SOFTHSM2_CONF: hsm?.conf, CA_TEST_PIN: TEST_PIN });

    const cli = (args: string[]): Promise<{ code: number; stdout: string; stderr: string }> => runCli(["ca", ...args, "-c", cfg], env(), 180_000);

    // Its own process group, so `kill -9` of the group takes the primary and every worker at once (a machine crash).
    const serve = async (workers: number): Promise<CaServe & { url: string }> => {
      const server = startCaServe(["-c", cfg, "--workers", String(workers)], env(), { detached: true });
      procs.push(server.proc);
      return { ...server, url: await server.listening };
    };

    afterAll(async () => {
      for (const p of procs) if (p.pid !== undefined && p.exitCode === null && p.signalCode === null) process.kill(-p.pid, "SIGKILL");
      await b.cleanup();
      hsm?.cleanup();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    it("every certificate a client received is in the store with its audit entry; the audit chain verifies; the restarted CA issues", async () => {
      hsm = softHsm(`et-ca-crash-${b.name}`);
      dir = mkdtempSync(join(tmpdir(), `et-ca-crash-store-${b.name}-`));
      cfg = join(dir, "edgetrust.yaml");
      writeFileSync(cfg, [
        "log:", "  level: warn",
        "hsm:", "  backend: pkcs11", `  module: ${SOFTHSM_MODULE}`, `  tokenLabel: ${hsm.tokenLabel}`, "  pinEnv: CA_TEST_PIN",
        "ca:", "  host: 127.0.0.1", "  port: 0", "  revocationPort: -1", "  trustDomain: crash.edgetrust", "  rateLimitPerMinute: 1000000",
        ...b.config(dir), "",
      ].join("\n"));
      const init = await cli(["init", "--json"]);
      expect(init.code, init.stderr).toBe(0);
      const { adminToken: token, rootCertificatePem } = JSON.parse(init.stdout) as { adminToken: string; rootCertificatePem: string };
      expect((await cli(["enrollment", "set", "crash-dev"])).code).toBe(0);
      const csrs = await Promise.all(Array.from({ length: CSRS }, (_, i) => csrFor(`crash-${i}`)));

      const first = await serve(b.workers);
      const agent = new Agent({ keepAlive: true, maxSockets: CLIENTS, ca: rootCertificatePem });
      const received: string[] = [];
      const refused: JsonReply[] = [];
      let inFlight = 0;
      let inFlightAtKill = -1;
      let connectionErrors = 0;
      let killed = false;
      let reachedTarget!: () => void;
      const target = new Promise<void>((r) => { reachedTarget = r; });
      const client = async (c: number): Promise<void> => {
        for (let n = 0; !killed; n++) {
          inFlight++;
          try {
            const r = await call(agent, "POST", `${first.url}/v1/certificates`, token, { csr: csrs[(c + n) % CSRS], profile: "device-identity", deviceId: "crash-dev" });
            if (r.status === 201) received.push(String(r.json.serial));
            else refused.push(r);
            if (received.length >= RECEIVED_BEFORE_KILL) reachedTarget();
          } catch {
            connectionErrors++;
            return;
          } finally {
            inFlight--;
          }
        }
      };
      const clients = Array.from({ length: CLIENTS }, (_, c) => client(c));
      // Every client ended on an error before the target: the service is gone, and the target would never come.
      const allEnded = Promise.all(clients).then(() => { throw new Error(`every client ended after ${received.length} certificates (${connectionErrors} connection errors)`); });
      await within(Promise.race([target, allEnded]), 150_000, `${RECEIVED_BEFORE_KILL} certificates before the kill (${received.length} so far)`, first.stderr);
      inFlightAtKill = inFlight;
      const exited = new Promise<NodeJS.Signals | null>((resolve) => first.proc.once("exit", (_code, signal) => resolve(signal)));
      process.kill(-(first.proc.pid as number), "SIGKILL");
      expect(await within(exited, 30_000, "exit after kill -9 of the group")).toBe("SIGKILL");
      killed = true;
      await within(Promise.all(clients), 60_000, "clients ending after the kill");
      agent.destroy();
      expect(refused.map((r) => r.json)).toEqual([]);
      expect(inFlightAtKill).toBeGreaterThan(0);
      expect(new Set(received).size).toBe(received.length);

      // The store after the crash: every received serial, each with exactly one issuance audit entry.
      const store = await b.open(dir);
      try {
        const missing: string[] = [];
        for (const s of received) if (!(await store.getCertificate(s))) missing.push(s);
        expect(missing).toEqual([]);
        const issued = new Set((await store.db.query<{ target: string }>("SELECT target FROM audit_log WHERE action = 'cert.issue'")).map((r) => r.target));
        expect(received.filter((s) => !issued.has(s))).toEqual([]);
        // Batch atomicity: no certificate row without its audit entry, and no audit entry without its row.
        const rows = (await store.db.query<{ serial: string }>("SELECT serial FROM certificates WHERE profile = 'device-identity'")).map((r) => r.serial);
        expect(rows.length).toBe(issued.size);
        expect(rows.filter((s) => !issued.has(s))).toEqual([]);
        process.stderr.write(`serve-crash (${b.name}): ${received.length} certificates received, ${inFlightAtKill} requests in flight at the kill (${connectionErrors} cut off), ${rows.length - received.length} committed but never answered\n`);
      } finally {
        await store.close();
      }

      const verify = await cli(["audit", "verify", "--json"]);
      expect(verify.code).toBe(0);
      expect(JSON.parse(verify.stdout)).toMatchObject({ ok: true });

      // The restarted CA opens the same store and issues on the same chain.
      const second = await serve(1);
      const again = new Agent({ keepAlive: false, ca: rootCertificatePem });
      try {
        const r = await call(again, "POST", `${second.url}/v1/certificates`, token, { csr: csrs[0], profile: "device-identity", deviceId: "crash-dev" });
        expect(r.status).toBe(201);
      } finally {
        again.destroy();
      }
      expect(await second.stop()).toBe(0);
      const after = await cli(["audit", "verify", "--json"]);
      expect(JSON.parse(after.stdout)).toMatchObject({ ok: true });
    }, 300_000);
  });
}

suite({
  name: "sqlite",
  workers: 1,
  config: (dir) => [`  sqlitePath: ${join(dir, "ca.db")}`],
  open: (dir) => CaStore.open({ sqlitePath: join(dir, "ca.db") }),
  cleanup: async () => undefined,
});

announcePgSkip("ca-service/serve-crash.test.ts");
const schema = uniqueSchema("et_crash");
if (DATABASE_URL) {
  suite({
    name: "postgres",
    workers: 2,
    config: () => [`  databaseUrl: ${DATABASE_URL}`, `  databaseSchema: ${schema}`],
    open: () => CaStore.open({ databaseUrl: DATABASE_URL, schema }),
    cleanup: async () => {
      const db = new PostgresDb(DATABASE_URL, schema);
      await db.dropSchema();
      await db.close();
    },
  });
} else {
  describe.skip(`kill -9 of ca serve under load (postgres: ${PG_SKIP_REASON})`, () => { it("skipped", () => undefined); });
}
