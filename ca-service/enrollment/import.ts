import { parse } from "csv-parse/sync";
import { EdgeTrustError } from "../../common/index.js";
import type { IndividualEnrollmentInput } from "./model.js";
import type { ImportRow } from "./store.js";

/**
 * Bulk import files: JSON (an array of enrollment objects, or `{ "enrollments": [...] }`) or CSV (RFC 4180, header
 * row required). CSV columns: registrationId, attestation, credential (base64 DER or quoted PEM), profile,
 * lifetimeDays, edgeCa (true/false), dnsNames (`;`-separated), labels (`k=v;k=v`), status. Unknown columns are an
 * error for the whole file; a bad field makes that row bad (reported with its row number), never the whole file.
 */
const CSV_COLUMNS = ["registrationId", "attestation", "credential", "profile", "lifetimeDays", "edgeCa", "dnsNames", "labels", "status"] as const;
const REQUIRED = ["registrationId", "attestation", "credential"];

export type ImportFormat = "csv" | "json";

export function detectFormat(name: string, text: string): ImportFormat {
  if (/\.json$/i.test(name)) return "json";
  if (/\.csv$/i.test(name)) return "csv";
  return /^\s*[[{]/.test(text) ? "json" : "csv";
}

/**
 * RFC 4180 records (csv-parse): quoted fields may hold commas, quotes ("") and newlines; CRLF or LF; a BOM is dropped;
 * blank lines are skipped. Each record carries the line it starts on, which is what an operator's editor shows.
 */
export function parseCsvRecords(text: string): { line: number; fields: string[] }[] {
  let records: { record: string[]; info: { lines: number } }[];
  try {
    records = parse(text, { bom: true, relax_column_count: true, skip_empty_lines: true, info: true, record_delimiter: ["\r\n", "\n"] }) as unknown as typeof records;
  } catch (e) {
    throw new EdgeTrustError("INVALID_INPUT", `CSV: ${(e as Error).message}`);
  }
  // info.lines is the line a record ends on; newlines inside its quoted fields say how many lines it spans.
  return records.map(({ record, info }) => ({ line: info.lines - record.reduce((n, f) => n + (f.match(/\n/g)?.length ?? 0), 0), fields: record }));
}

function csvRow(header: string[], rec: { line: number; fields: string[] }): ImportRow {
  const v: Record<string, string> = {};
  header.forEach((h, i) => { v[h] = (rec.fields[i] ?? "").trim(); });
  const input: IndividualEnrollmentInput = {
    registrationId: v.registrationId ?? "",
    attestation: (v.attestation ?? "") as IndividualEnrollmentInput["attestation"],
    credential: v.credential ?? "",
  };
  const row: ImportRow = { row: rec.line, input };
  if (rec.fields.length !== header.length) return { ...row, error: `expected ${header.length} fields, found ${rec.fields.length}` };
  if (v.profile) input.profile = v.profile as NonNullable<IndividualEnrollmentInput["profile"]>;
  if (v.status) input.status = v.status as NonNullable<IndividualEnrollmentInput["status"]>;
  if (v.lifetimeDays) {
    if (!/^[0-9]{1,6}$/.test(v.lifetimeDays)) return { ...row, error: "lifetimeDays must be an integer" };
    input.lifetimeDays = Number(v.lifetimeDays);
  }
  if (v.edgeCa) {
    if (v.edgeCa !== "true" && v.edgeCa !== "false") return { ...row, error: "edgeCa must be true or false" };
    input.edgeCa = v.edgeCa === "true";
  }
  if (v.dnsNames) input.dnsNames = v.dnsNames.split(";").map((d) => d.trim()).filter(Boolean);
  if (v.labels) {
    const labels: Record<string, string> = {};
    for (const kv of v.labels.split(";").filter(Boolean)) {
      const i = kv.indexOf("=");
      if (i <= 0) return { ...row, error: `label ${JSON.stringify(kv.slice(0, 40))} is not key=value` };
      labels[kv.slice(0, i).trim()] = kv.slice(i + 1).trim();
    }
    input.labels = labels;
  }
  return row;
}

function jsonRow(x: unknown, row: number): ImportRow {
  if (typeof x !== "object" || x === null || Array.isArray(x)) {
    return { row, input: { registrationId: "", attestation: "publicKey", credential: "" }, error: "row is not a JSON object" };
  }
  const o = x as Record<string, unknown>;
  const unknownKeys = Object.keys(o).filter((k) => !(CSV_COLUMNS as readonly string[]).includes(k));
  const input = o as unknown as IndividualEnrollmentInput;
  if (unknownKeys.length) return { row, input, error: `unknown field(s): ${unknownKeys.slice(0, 5).join(", ")}` };
  return { row, input };
}

/** Rows of an already parsed JSON import document. */
export function rowsFromJson(doc: unknown): ImportRow[] {
  const arr = Array.isArray(doc) ? doc : (doc as { enrollments?: unknown } | null)?.enrollments;
  if (!Array.isArray(arr)) throw new EdgeTrustError("INVALID_INPUT", "a JSON import is an array of enrollments, or { \"enrollments\": [...] }");
  return arr.map((x, i) => jsonRow(x, i + 1));
}

/** Parse an import file into rows (row numbers: CSV physical line of the record; JSON: 1-based array index). */
export function parseImport(text: string, format: ImportFormat): ImportRow[] {
  if (format === "json") {
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch (e) {
      throw new EdgeTrustError("INVALID_INPUT", `import file is not JSON: ${(e as Error).message}`);
    }
    return rowsFromJson(doc);
  }
  const recs = parseCsvRecords(text);
  const head = recs.shift();
  if (!head) return [];
  const header = head.fields.map((h) => h.trim());
  const unknown = header.filter((h) => !(CSV_COLUMNS as readonly string[]).includes(h));
  if (unknown.length) throw new EdgeTrustError("INVALID_INPUT", `CSV header has unknown column(s): ${unknown.join(", ")}`, { hint: `columns: ${CSV_COLUMNS.join(", ")}` });
  const missing = REQUIRED.filter((h) => !header.includes(h));
  if (missing.length) throw new EdgeTrustError("INVALID_INPUT", `CSV header lacks ${missing.join(", ")}`);
  return recs.map((r) => csvRow(header, r));
}

/** A one-line progress bar for a TTY (or a plain line every 10% otherwise), written to `out` (stderr). */
export function progressBar(out: NodeJS.WriteStream, label: string): (done: number, total: number) => void {
  let lastPct = -1;
  const start = Date.now();
  return (done, total) => {
    const pct = total ? Math.floor((done * 100) / total) : 100;
    if (pct === lastPct) return;
    const rate = Math.round(done / Math.max(0.001, (Date.now() - start) / 1000));
    if (out.isTTY) {
      const w = 30;
      const fill = Math.round((pct / 100) * w);
      out.write(`\r${label} [${"#".repeat(fill)}${"-".repeat(w - fill)}] ${pct}% ${done}/${total} (${rate} rows/s)${done >= total ? "\n" : ""}`);
    } else if (pct % 10 === 0 || done >= total) {
      out.write(`${label}: ${pct}% ${done}/${total} (${rate} rows/s)\n`);
    }
    lastPct = pct;
  };
}
