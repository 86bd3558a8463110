import "reflect-metadata";
import { createHash, randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import Fastify from "fastify";
import { Value } from "@sinclair/typebox/value";
import { CaConfig, CaStore, type CertificateAuthority } from "../ca-service/index.js";
import { ConsoleConfig, consolePlugin } from "../console/index.js";
import type { Benchmark, BenchRow } from "./types.js";
import { row } from "./types.js";
import { interleaved, timed } from "./measure.js";

const DEVICES = 100_000;

/**
 * Fill a CA database with a fleet of `n` devices straight through SQL (this measures reading, not writing): device
 * records, enrollments by three lines with labels, one identity certificate each (expiries spread over a year), one
 * attestation result each over the last 14 days (90% affirming, 7% warning, 3% contraindicated with a failing claim),
 * the latest status row and a rollout row.
 */
function populate(file: string, n: number): void {
  const db = new Database(file);
  db.pragma("journal_mode = WAL");
  const now = Date.now();
  const iso = (ms: number): string => new Date(ms).toISOString();
  const issuer = (db.prepare("SELECT id FROM cas WHERE kind = 'issuing'").get() as { id: string } | undefined)?.id ?? "bench-issuer";
  if (!db.prepare("SELECT 1 FROM cas WHERE id = ?").get(issuer)) {
    db.prepare("INSERT INTO cas (id, kind, name, parent_id, cert_pem, key_label, key_algorithm, not_before, not_after, status, created_at) VALUES (?, 'issuing', 'bench', NULL, '', 'k', 'EC-P256', ?, ?, 'active', ?)")
      .run(issuer, iso(now - 86400e3), iso(now + 3650 * 86400e3), iso(now));
  }
  const lines = ["line-a", "line-b", "line-c"];
  const enr = db.prepare("INSERT INTO enrollments (device_id, kind, common_name, dns_names, status, created_at, updated_at) VALUES (?, 'device', ?, '[]', 'enabled', ?, ?)");
  const ind = db.prepare("INSERT INTO individual_enrollments (registration_id, attestation, credential_sha256, credential, profile, lifetime_days, edge_ca, dns_names, labels, status, line_id, row_hash, created_at, updated_at) VALUES (?, 'publicKey', ?, '', 'device-identity', NULL, 1, '[]', ?, 'enabled', ?, '', ?, ?)");
  const cert = db.prepare("INSERT INTO certificates (serial, issuer_id, profile, subject, sans, device_id, spki_sha256, fingerprint_sha256, not_before, not_after, cert_pem, status, replaces_serial, created_at) VALUES (?, ?, 'device-identity', ?, '[]', ?, '', ?, ?, ?, '', 'good', NULL, ?)");
  const att = db.prepare("INSERT INTO attestation_results (id, device_id, at, status, claims, reference) VALUES (?, ?, ?, ?, ?, 'policy /etc/edgetrust/policy.yaml')");
  const st = db.prepare("INSERT INTO device_status (device_id, attestation_status, attestation_at, failing, deployment_id, deployment_version, report_kind, report_at) VALUES (?, ?, ?, ?, 'line-sensors', 4, 'manifest-accepted', ?)");
  const roll = db.prepare("INSERT INTO deployment_rollout (deployment_id, version, device_id, outcome, reasons, at) VALUES ('line-sensors', 4, ?, 'applied', '[]', ?)");
  const failing = JSON.stringify([{ claim: "module:sensor", status: "contraindicated", reason: "module sensor runs image sha256:eeee…, the manifest pins sha256:1a1a…", reference: "policy /etc/edgetrust/policy.yaml: attestation.modules: manifest" }]);
  const warn = JSON.stringify([{ claim: "agent", status: "warning", reason: "agent digest sha256:7777… is not a reference value", reference: "policy /etc/edgetrust/policy.yaml: attestation.agent" }]);
  db.transaction(() => {
    for (let i = 0; i < n; i++) {
      const id = `dev-${String(i).padStart(6, "0")}`;
      const created = iso(now - (i % 14) * 86400e3 - (i % 1000) * 1000);
      enr.run(id, id, created, created);
      ind.run(id, createHash("sha256").update(id).digest("hex"), JSON.stringify({ site: `plant-${i % 40}`, role: "gateway" }), lines[i % 3] ?? null, created, created);
      cert.run(createHash("sha256").update(`s${i}`).digest("hex").slice(0, 32), issuer, `CN=${id}`, id, createHash("sha256").update(`f${i}`).digest("hex"), created, iso(now + ((i * 37) % 365) * 86400e3 + 3600e3), created);
      const status = i % 100 < 90 ? "affirming" : i % 100 < 97 ? "warning" : "contraindicated";
      const at = iso(now - (i % 14) * 86400e3 - (i % 977) * 1000);
      att.run(randomUUID(), id, at, status, "{}");
      st.run(id, status, at, status === "affirming" ? "[]" : status === "warning" ? warn : failing, at);
      roll.run(id, at);
    }
  })();
  db.exec("ANALYZE");
  db.close();
}

/**
 * The console's fleet page with 100,000 devices in the store (SQLite): `GET /console/fleet` through the plugin
 * (session lookup, every query the page runs — counts, both charts, the lines, one page of 50 — and the rendering)
 * against the same SQL statements with the same parameters replayed as raw better-sqlite3 prepared statements
 * (recorded from one page render). Alternating rounds; first page, a status-filtered page and a deep page.
 */
export const consoleBenchmark: Benchmark = {
  id: "console",
  description: "security console fleet page with 100,000 devices vs the same SQL replayed raw (SQLite)",
  async run(progress) {
    const dir = mkdtempSync(join(tmpdir(), "et-bench-console-"));
    const file = join(dir, "ca.db");
    try {
      (await CaStore.open({ sqlitePath: file })).close();
      progress.step(`populating ${DEVICES} devices`);
      populate(file, DEVICES);
      const store = await CaStore.open({ sqlitePath: file });
      const { token } = await store.createToken("bench", "auditor", "bench");
      const app = Fastify();
      const caConfig = Value.Default(CaConfig, {}) as CaConfig;
      await app.register(consolePlugin, { ca: undefined as unknown as CertificateAuthority, store, caConfig, console: Value.Default(ConsoleConfig, {}) as ConsoleConfig });
      await app.ready();
      const signin = await app.inject({ method: "POST", url: "/console/signin", headers: { host: "bench", origin: "https://bench" }, payload: { token } });
      const cookie = String(signin.headers["set-cookie"] ?? "").split(";")[0] ?? "";
      if (signin.statusCode !== 303 || !cookie) throw new Error(`console sign-in failed: ${signin.statusCode} ${signin.body}`);

      const raw = new Database(file, { readonly: true });
      const rows: BenchRow[] = [];
      const pages: Array<[string, string]> = [
        ["first page", "/console/fleet"],
        ["status = contraindicated", "/console/fleet?status=contraindicated"],
        ["deep page (after dev-090000)", "/console/fleet?after=dev-090000"],
      ];
      for (const [label, url] of pages) {
        // Record the statements one render runs, to replay them raw.
        const recorded: Array<{ sql: string; params: unknown[] }> = [];
        const orig = store.db.query.bind(store.db);
        store.db.query = (async (sql: string, params: (string | number | null)[] = []) => { recorded.push({ sql, params }); return orig(sql, params); }) as typeof store.db.query;
        const probe = await app.inject({ method: "GET", url, headers: { cookie } });
        store.db.query = orig;
        if (probe.statusCode !== 200 || !probe.body.includes("<table class=\"fleet\">")) throw new Error(`fleet page ${url}: ${probe.statusCode}`);
        const statements = recorded.map((r) => ({ stmt: raw.prepare(r.sql), params: r.params }));
        const each = statements.map((st) => { const t0 = performance.now(); for (let i = 0; i < 3; i++) st.stmt.all(...(st.params as (string | number | null)[])); return { sql: st.stmt.source.replace(/\s+/g, " ").slice(0, 90), ms: (performance.now() - t0) / 3 }; });
        progress.step(`fleet page, ${label}: ${statements.length} statements; slowest: ${[...each].sort((a, b) => b.ms - a.ms).slice(0, 3).map((e) => `${e.ms.toFixed(1)} ms ${e.sql}`).join(" | ")}`);
        const [page, sql] = await interleaved(6,
          () => timed(0.5, 1, async () => { const r = await app.inject({ method: "GET", url, headers: { cookie } }); if (r.statusCode !== 200) throw new Error(String(r.statusCode)); }),
          () => timed(0.5, 1, async () => { for (const s of statements) s.stmt.all(...(s.params as (string | number | null)[])); }));
        rows.push(row({
          name: `console fleet page, ${DEVICES.toLocaleString("en")} devices, ${label} (HTTP via inject: session, ${statements.length} queries, render)`,
          value: 1000 / page, unit: "ms",
          reference: { name: `the same ${statements.length} SQL statements replayed raw (better-sqlite3 prepared, same parameters)`, value: 1000 / sql },
          higherIsBetter: false, target: 0.5, source: "issue 16 (console/README.md#performance)",
        }));
      }
      raw.close();
      await app.close();
      await store.close();
      return rows;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
