import "reflect-metadata";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import type { Benchmark } from "./types.js";
import { row } from "./types.js";
import { CaStore, EnrollmentStore, normalizeIndividual, parseImport } from "../ca-service/index.js";

const ROWS = 100_000;

/**
 * Bulk import of 100,000 individual enrollments from CSV on SQLite (parse, validate every SPKI, hash, per-batch
 * transactions of 1,000 with ownership/idempotency checks and one audit entry each) against the floor: the same
 * already-normalised rows inserted into the same table with one raw better-sqlite3 prepared statement in one
 * transaction. A second row measures re-importing the same file (nothing changes).
 */
export const enrollBenchmark: Benchmark = {
  id: "enroll-import",
  description: "100k-row enrollment CSV import (SQLite) vs raw better-sqlite3 prepared-statement inserts of the same rows",
  async run(progress) {
    const dir = mkdtempSync(join(tmpdir(), "et-bench-enroll-"));
    try {
      progress.step("generating 100k rows");
      const keys = Array.from({ length: 256 }, () => generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey.export({ type: "spki", format: "der" }).toString("base64"));
      const lines = ["registrationId,attestation,credential,profile,lifetimeDays,edgeCa,dnsNames,labels,status"];
      for (let i = 0; i < ROWS; i++) lines.push(`bench-${i},publicKey,${keys[i % keys.length] ?? ""},device-identity,,true,,site=plant-1,enabled`);
      const csv = lines.join("\n");

      progress.step("reference: raw prepared-statement transaction");
      const refStore = await CaStore.open({ sqlitePath: join(dir, "ref.db") });
      await refStore.close();
      const normalized = parseImport(csv, "csv").map((r) => normalizeIndividual(r.input));
      const raw = new Database(join(dir, "ref.db"));
      raw.pragma("journal_mode = WAL");
      raw.pragma("synchronous = NORMAL");
      const ins = raw.prepare("INSERT INTO individual_enrollments (registration_id, attestation, credential_sha256, credential, profile, lifetime_days, edge_ca, dns_names, labels, status, line_id, row_hash, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
      const now = new Date().toISOString();
      let t = performance.now();
      raw.transaction(() => {
        for (const n of normalized) ins.run(n.registrationId, n.attestation, n.credentialSha256, n.credential, n.profile, n.lifetimeDays, n.edgeCa ? 1 : 0, JSON.stringify(n.dnsNames), JSON.stringify(n.labels), n.status, null, n.rowHash, now, now);
      })();
      const reference = ROWS / ((performance.now() - t) / 1000);
      raw.close();

      progress.step("edgetrust import (CSV → store)");
      const store = await CaStore.open({ sqlitePath: join(dir, "ca.db") });
      const es = new EnrollmentStore(store);
      t = performance.now();
      const first = await es.importIndividuals(parseImport(csv, "csv"), { actor: "bench", lineId: null });
      const value = ROWS / ((performance.now() - t) / 1000);
      if (first.inserted !== ROWS) throw new Error(`bench import inserted ${first.inserted} of ${ROWS}`);
      progress.step("edgetrust re-import (idempotent)");
      t = performance.now();
      const second = await es.importIndividuals(parseImport(csv, "csv"), { actor: "bench", lineId: null });
      const again = ROWS / ((performance.now() - t) / 1000);
      if (second.unchanged !== ROWS) throw new Error("bench re-import changed rows");
      await store.close();
      return [
        row({
          name: "enrollment import, 100k CSV rows (parse + validate + batched writes + audit)", value, unit: "rows/s",
          reference: { name: "raw better-sqlite3 prepared INSERT, one transaction, pre-normalised rows", value: reference },
          target: 0.1, source: "issue 4 (ca-service/README.md#enrollment)",
        }),
        row({
          name: "enrollment re-import, same 100k rows (nothing written)", value: again, unit: "rows/s",
          reference: { name: "raw better-sqlite3 prepared INSERT, one transaction, pre-normalised rows", value: reference },
          target: 0.1, source: "issue 4 (ca-service/README.md#enrollment)",
        }),
      ];
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
