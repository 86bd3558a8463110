import { generateKeyPairSync, randomBytes, sign, verify } from "node:crypto";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { CaStore } from "../ca-service/index.js";
import { runCli } from "../fleet/index.js";
import { BUILT_BIN } from "./paths.js";
import { row, skippedRow, type Benchmark, type BenchRow, type Progress } from "./types.js";

/**
 * Issue 12's service rows: `edgetrust ca serve --workers <cores>` as a real process (primary + one worker per core,
 * issuing key in the software key store, i.e. Node crypto as in the crypto floor), driven over HTTPS by a load
 * generator in its own process.
 *
 * - stored issuance (`POST /v1/certificates`, keep-alive connections) on SQLite and on PostgreSQL, as a ratio to the
 *   crypto floor (Node P-256 sign + verify of one certificate, one core, measured in this run) × cores;
 * - (device registrations on new TLS connections, issue 12's other service row, are in bench/enroll.ts,
 *   `enroll-register`, with a load generator of their own);
 * - Vault's published 2,200 certs/s as context.
 *
 * On a 2-core machine the load generator shares the cores with the server: nothing is pinned (pinning would give the
 * server fewer cores than --workers). Instead both sides' CPU time is read during the measured window (/proc for the
 * server's primary and workers, process.cpuUsage() in the generator) and printed with the load average, and one more
 * row gives issuance per second of server CPU — what the service would do on cores of its own.
 */

const SOURCE = "issue 12";
const SECONDS = Number(process.env.ET_BENCH_SERVE_SECONDS ?? 5);
const WARMUP_SECONDS = 1;
/** Keep-alive connections for the issuance rows (one request in flight on each). */
const CONNECTIONS = 32;
const CSRS = 256;
const PG_URL = process.env.DATABASE_URL ?? "";
const VAULT = 2200;
const CLK_TCK = 100;
/** ET_BENCH_SERVE_PROFILE=<dir>: every server process (primary and workers) writes a V8 CPU profile there when it stops. */
const PROFILE_DIR = process.env.ET_BENCH_SERVE_PROFILE ?? "";
/** ET_BENCH_SERVE_BACKENDS=sqlite,postgresql narrows a run (profiling one path). */
/** ET_BENCH_SERVE_BIN=<another checkout>/bin/edgetrust.js: measure that build's ca serve (before/after in the same minutes). */
const SERVE_BIN = process.env.ET_BENCH_SERVE_BIN ?? BUILT_BIN;
const BACKENDS = new Set((process.env.ET_BENCH_SERVE_BACKENDS ?? "sqlite,postgresql").toLowerCase().split(","));

export interface CaProcess { url: string; proc: ChildProcess; stop(): Promise<number | null>; kill9(): Promise<void> }

/** A store a built `ca serve` bench runs on: its config lines, and how the bench opens and drops it afterwards. */
export interface ServeStore { name: "SQLite" | "PostgreSQL"; db(dir: string): { yaml: string[]; open(): Promise<CaStore>; drop(): Promise<void> } }

/** SQLite in the run's directory and, with DATABASE_URL, a PostgreSQL schema of the run's own (`<prefix>_<pid>_<hex>`). */
export function serveStores(schemaPrefix: string): ServeStore[] {
  return [
    { name: "SQLite", db: (d) => ({ yaml: [`  sqlitePath: ${join(d, "ca.db")}`], open: () => CaStore.open({ sqlitePath: join(d, "ca.db") }), drop: async () => undefined }) },
    ...(PG_URL ? [{
      name: "PostgreSQL" as const, db: () => {
        const schema = `${schemaPrefix}_${process.pid}_${randomBytes(3).toString("hex")}`;
        return {
          yaml: [`  databaseUrl: ${PG_URL}`, `  databaseSchema: ${schema}`],
          open: () => CaStore.open({ databaseUrl: PG_URL, schema }),
          drop: async () => { const s = await CaStore.open({ databaseUrl: PG_URL, schema }); try { await s.db.script(`DROP SCHEMA IF EXISTS ${schema} CASCADE`); } finally { await s.close(); } },
        };
      },
    }] : []),
  ];
}

/** `<dir>/edgetrust.yaml` for `ca serve --workers`: a software issuing key, no rate limit in the way, errors-only log. */
export function writeServeConfig(dir: string, workers: number, dbYaml: string[]): string {
  const cfg = join(dir, "edgetrust.yaml");
  writeFileSync(cfg, [
    "log:", "  level: error",
    "hsm:", "  backend: software", `  softwareDir: ${join(dir, "keys")}`,
    "ca:", "  host: 127.0.0.1", "  port: 0", "  revocationPort: -1", "  allowSoftwareKeys: true", "  rateLimitPerMinute: 1000000",
    `  workers: ${workers}`, ...dbYaml, "",
  ].join("\n"));
  return cfg;
}

/**
 * The built `edgetrust ca serve --workers <n>` as its unit runs it (bin/edgetrust.js, a real script the cluster
 * workers re-run; the fleet harness starts `node -e` children with --workers 1, which is not what is measured here).
 */
export async function startServe(config: string, env: NodeJS.ProcessEnv, workers: number): Promise<CaProcess> {
  // On node's command line (NODE_OPTIONS refuses --cpu-prof); cluster workers inherit the primary's execArgv.
  const profile = PROFILE_DIR ? ["--cpu-prof", `--cpu-prof-dir=${PROFILE_DIR}`] : [];
  const proc = spawn(process.execPath, [...profile, SERVE_BIN, "ca", "serve", "-c", config, "--workers", String(workers)], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let err = "";
  proc.stderr.on("data", (c: Buffer) => { err = (err + c.toString()).slice(-4000); });
  const exited = new Promise<number | null>((r) => proc.once("exit", (c) => r(c)));
  const url = await new Promise<string>((resolve, reject) => {
    let out = "";
    proc.stdout.on("data", (c: Buffer) => {
      out += c.toString();
      const m = /"listening":"([^"]+)"/.exec(out);
      if (m?.[1]) resolve(m[1]);
    });
    void exited.then((code) => reject(new Error(`ca serve exited ${code}: ${err.slice(-1500)}`)));
  });
  return {
    url, proc,
    stop: async () => { if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGTERM"); return exited; },
    kill9: async () => { proc.kill("SIGKILL"); await exited; },
  };
}

/**
 * The load generator (plain ESM, no TypeScript loader): keeps `connections` keep-alive connections busy. After the
 * warm-up it prints "measure" and its CPU so far, at the end its counts and CPU; the parent reads the server's CPU at
 * both lines.
 */
const LOAD_SCRIPT = `
import { Agent, request } from "node:https";
import { createSecureContext } from "node:tls";
let input = "";
for await (const c of process.stdin) input += c;
const o = JSON.parse(input);
const agent = new Agent({ keepAlive: true, maxSockets: o.concurrency, ca: o.ca });
const secureContext = createSecureContext({ ca: o.ca });
let next = 0;
const one = () => new Promise((resolve, reject) => {
  const i = next++;
  const path = "/v1/certificates", method = "POST";
  const body = Buffer.from(JSON.stringify({ csr: o.csrs[i % o.csrs.length], profile: "device-identity", deviceId: o.deviceId }));
  const req = request(o.url + path, { method, agent, secureContext, headers: { authorization: "Bearer " + o.token, "content-type": "application/json", "content-length": String(body.length) } }, (res) => {
    const chunks = [];
    res.on("data", (c) => chunks.push(c));
    res.on("end", () => res.statusCode === 201 ? resolve(true) : reject(new Error(method + " " + path + ": HTTP " + res.statusCode + " " + Buffer.concat(chunks).toString().slice(0, 300))));
  });
  req.on("error", reject);
  req.end(body);
});
const run = async (seconds) => {
  const t0 = performance.now(), end = t0 + seconds * 1000;
  let ops = 0;
  await Promise.all(Array.from({ length: o.concurrency }, async () => { while (performance.now() < end) { if (!(await one())) return; ops++; } }));
  return { ops, ms: performance.now() - t0 };
};
await run(o.warmup);
const cpu0 = process.cpuUsage();
process.stdout.write("measure\\n");
const r = await run(o.seconds);
const cpu = process.cpuUsage(cpu0);
agent.destroy();
process.stdout.write(JSON.stringify({ ...r, cpuMs: (cpu.user + cpu.system) / 1000 }) + "\\n");
`;

/** CPU seconds (user + system) of a process and of its children (the primary and its workers), from /proc. */
export function treeCpuSeconds(pid: number): { primary: number; workers: number } {
  const one = (p: number): number => {
    try {
      const stat = readFileSync(`/proc/${p}/stat`, "utf8");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      return (Number(f[11]) + Number(f[12])) / CLK_TCK;
    } catch {
      return 0;
    }
  };
  let kids: number[] = [];
  try {
    kids = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    kids = [];
  }
  return { primary: one(pid), workers: kids.reduce((a, k) => a + one(k), 0) };
}

interface Load { rate: number; ops: number; serverCores: number; primaryCores: number; loadCores: number; serverCpuPerOpMs: number }

async function drive(server: CaProcess, o: Record<string, unknown>): Promise<Load> {
  const pid = server.proc.pid ?? 0;
  const child = spawn(process.execPath, ["--input-type=module", "-e", LOAD_SCRIPT], { stdio: ["pipe", "pipe", "pipe"] });
  let out = "";
  let err = "";
  let serverCpu0: { primary: number; workers: number } | undefined;
  child.stdout.on("data", (c: Buffer) => {
    out += c.toString();
    if (!serverCpu0 && out.startsWith("measure\n")) serverCpu0 = treeCpuSeconds(pid);
  });
  child.stderr.on("data", (c: Buffer) => { err += c.toString(); });
  const done = new Promise<number | null>((resolve) => child.on("close", resolve));
  child.stdin.end(JSON.stringify({ ...o, url: server.url, warmup: WARMUP_SECONDS, seconds: SECONDS }));
  const code = await done;
  const cpu1 = treeCpuSeconds(pid);
  if (code !== 0 || !serverCpu0) throw new Error(`load generator exited ${code}: ${err.slice(-600)}`);
  const r = JSON.parse(out.split("\n")[1] ?? "{}") as { ops: number; ms: number; cpuMs: number };
  const seconds = r.ms / 1000;
  const primary = cpu1.primary - serverCpu0.primary;
  const serverCpu = primary + cpu1.workers - serverCpu0.workers;
  return { rate: r.ops / seconds, ops: r.ops, serverCores: serverCpu / seconds, primaryCores: primary / seconds, loadCores: r.cpuMs / 1000 / seconds, serverCpuPerOpMs: (serverCpu * 1000) / Math.max(1, r.ops) };
}

/** Node P-256 sign + verify per certificate on this thread: per second of wall clock, and per second of its own CPU. */
function cryptoFloor(seconds: number): { wall: number; perCpuSecond: number } {
  const ca = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const tbs = randomBytes(420);
  const sig = sign("sha256", tbs, { key: ca.privateKey, dsaEncoding: "der" });
  const end = performance.now() + seconds * 1000;
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  let n = 0;
  while (performance.now() < end) {
    for (let k = 0; k < 20; k++) {
      sign("sha256", tbs, { key: ca.privateKey, dsaEncoding: "der" });
      verify("sha256", tbs, { key: ca.publicKey, dsaEncoding: "der" }, sig);
      n++;
    }
  }
  const cpu = process.cpuUsage(cpu0);
  return { wall: n / ((performance.now() - t0) / 1000), perCpuSecond: n / ((cpu.user + cpu.system) / 1e6) };
}

async function keyAndCsr(id: string): Promise<{ csr: string; spki: string }> {
  const keys = (await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"])) as CryptoKeyPair;
  const csr = (await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=${id}`, keys, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } })).toString("pem");
  return { csr, spki: Buffer.from(await crypto.subtle.exportKey("spki", keys.publicKey)).toString("base64") };
}

const describeLoad = (l: Load) =>
  `${l.rate.toFixed(0)}/s (${l.ops} in ${SECONDS}s); server ${l.serverCores.toFixed(2)} cores (primary ${l.primaryCores.toFixed(2)}; ${l.serverCpuPerOpMs.toFixed(2)} ms CPU each), load generator ${l.loadCores.toFixed(2)} cores; load average ${loadavg().map((x) => x.toFixed(1)).join(" ")}`;

export const serveBenchmark: Benchmark = {
  id: "serve",
  description: "ca serve --workers <cores> as a process: HTTPS issuance (SQLite, PostgreSQL) vs crypto floor × cores; Vault context",
  async run(progress: Progress): Promise<BenchRow[]> {
    const cores = availableParallelism();
    const rows: BenchRow[] = [];
    const dir = mkdtempSync(join(tmpdir(), "et-bench-serve-"));
    try {
      progress.step(`crypto floor: Node P-256 sign + verify of one certificate, 1 core, 3s (load average ${loadavg()[0]?.toFixed(1)})`);
      const floor = cryptoFloor(3);
      const floorRef = { name: `crypto floor × ${cores} cores (Node P-256 sign + verify per certificate: ${floor.wall.toFixed(0)}/s on 1 core)`, value: floor.wall * cores };
      // The per-CPU-second rows against the floor per CPU-second: on a shared machine the wall-clock floor drops with the
      // share of a core this process gets, while the server's CPU per certificate does not.
      const floorCpuRef = { name: `crypto floor × ${cores} cores per CPU-second (${floor.perCpuSecond.toFixed(0)} per CPU-second of 1 core)`, value: floor.perCpuSecond * cores };

      progress.step(`${CSRS} issuance CSRs`);
      const csrs = await Promise.all(Array.from({ length: CSRS }, async (_, i) => (await keyAndCsr(`bench-dev-${i}`)).csr));

      const backends = serveStores("et_bench_serve");
      const issued: Record<string, number> = {};
      for (const b of backends.filter((x) => BACKENDS.has(x.name.toLowerCase()))) {
        const bdir = join(dir, b.name.toLowerCase());
        rmSync(bdir, { recursive: true, force: true });
        mkdirSync(bdir);
        const db = b.db(bdir);
        const env = { EDGETRUST_KEYSTORE_PASSPHRASE: randomBytes(12).toString("hex") };
        const cfg = writeServeConfig(bdir, cores, db.yaml);
        let server: CaProcess | undefined;
        try {
          progress.step(`${b.name}: ca init (software issuing key)`);
          const init = JSON.parse(await runCli(["ca", "init", "-c", cfg, "--json"], env)) as { adminToken: string; rootCertificatePem: string };
          {
            const store = await db.open();
            try {
              await store.upsertEnrollment({ deviceId: "bench-dev", kind: "device", commonName: "bench-dev", dnsNames: [] }, "bench");
            } finally {
              await store.close();
            }
          }
          progress.step(`${b.name}: ca serve --workers ${cores}`);
          server = await startServe(cfg, env, cores);

          {
            progress.step(`${b.name}: HTTPS issuance, ${CONNECTIONS} keep-alive connections from another process, ${WARMUP_SECONDS}s warm-up + ${SECONDS}s`);
            const iss = await drive(server, { mode: "issue", concurrency: CONNECTIONS, csrs, deviceId: "bench-dev", token: init.adminToken, ca: init.rootCertificatePem });
            progress.step(`  ${b.name} issuance: ${describeLoad(iss)}`);
            issued[b.name] = iss.rate;
            rows.push(row({ name: `HTTPS issuance stored in ${b.name}, ca serve --workers ${cores} (software issuing key; load generator on the same cores)`, value: iss.rate, unit: "certs/s", reference: floorRef, target: 0.25, source: SOURCE }));
            rows.push(row({
              name: `(context) HTTPS issuance in ${b.name} per second of server CPU × ${cores} cores (what --workers ${cores} would do with the cores to itself)`,
              value: (1000 / iss.serverCpuPerOpMs) * cores, unit: "certs/s", reference: floorCpuRef, target: 0.25, source: SOURCE,
            }));
          }

          const code = await server.stop();
          server = undefined;
          if (code !== 0) throw new Error(`${b.name}: ca serve exited ${code} on SIGTERM`);
          const store = await db.open();
          try {
            const v = await store.verifyAudit();
            if (!v.ok) throw new Error(`${b.name}: audit chain broken at ${v.problem?.seq}: ${v.problem?.reason}`);
            const dup = await store.db.query("SELECT serial FROM certificates GROUP BY serial HAVING count(*) > 1");
            if (dup.length > 0) throw new Error(`${b.name}: ${dup.length} duplicate serials`);
            progress.step(`  ${b.name}: audit verified (${v.entries} entries), no duplicate serial`);
          } finally {
            await store.close();
          }
        } finally {
          if (server) await server.kill9();
          await db.drop().catch(() => undefined);
        }
      }
      if (!PG_URL) {
        const reason = "DATABASE_URL is not set (e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/test)";
        progress.step(`PostgreSQL skipped: ${reason}`);
        rows.push(skippedRow({ name: `HTTPS issuance stored in PostgreSQL, ca serve --workers ${cores}`, unit: "certs/s", reference: floorRef.name, target: 0.25, source: SOURCE, reason }));
      }
      if (issued.SQLite !== undefined) {
        rows.push(row({ name: `(context) HTTPS issuance stored in SQLite, ca serve --workers ${cores}, vs Vault`, value: issued.SQLite, unit: "certs/s", reference: { name: "HashiCorp Vault PKI, published (stored certs/s)", value: VAULT }, target: 1, source: SOURCE }));
      }
      return rows;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
