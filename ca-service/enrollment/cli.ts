import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { Command, Option } from "commander";
import { EdgeTrustError, action, emit, type ConfigReader } from "../../common/index.js";
import type { CaConfig } from "../config.js";
import { openCaStore } from "../store-identity.js";
import { detectFormat, parseImport, progressBar, type ImportFormat } from "./import.js";
import { ENROLLMENT_PROFILES, INDIVIDUAL_ATTESTATIONS, type EnrollmentProfile, type IndividualAttestation, type IndividualEnrollment } from "./model.js";
import { EnrollmentStore, LINE_SCOPES, type LineScope, type ProvisioningLine } from "./store.js";

/** The sections of edgetrust.yaml these commands read (the command tree hands in a reader of the whole file). */
type EnrollmentCliConfig = { ca: CaConfig };

interface Common {
  config?: string;
  json?: boolean;
}

const configOpt = () => new Option("-c, --config <file>", "edgetrust.yaml (default: built-in defaults + EDGETRUST_* environment)");
const jsonOpt = () => new Option("--json", "machine-readable output");

async function withStore<T>(readConfig: ConfigReader<EnrollmentCliConfig>, o: Common, fn: (es: EnrollmentStore) => Promise<T>): Promise<T> {
  const cfg = readConfig(o.config ? { file: o.config, required: true } : {});
  const store = await openCaStore(cfg.ca, { ...(o.config ? { configFile: o.config } : {}) });
  try {
    return await fn(new EnrollmentStore(store));
  } finally {
    await store.close();
  }
}

const int = (name: string) => (v: string): number => {
  if (!/^[0-9]{1,10}$/.test(v)) throw new EdgeTrustError("INVALID_INPUT", `${name} must be a non-negative integer`);
  return Number(v);
};

function lineText(l: ProvisioningLine): string {
  return `${l.id}  ${l.name}  ${l.kind}  scopes=${l.scopes.join(",")}  ${l.enrollmentsCreated}/${l.maxEnrollments} enrollments  ${l.ratePerMinute}/min${l.revokedAt ? `  REVOKED ${l.revokedAt}` : ""}`;
}

function enrollmentView(e: IndividualEnrollment): Omit<IndividualEnrollment, "credential" | "rowHash"> {
  const { credential: _c, rowHash: _h, ...rest } = e;
  return rest;
}

/** `edgetrust ca line create`. */
function lineCreateCommand(readConfig: ConfigReader<EnrollmentCliConfig>): Command {
  return new Command("create")
    .description("create a line; its token is printed once (only its sha256 is stored)")
    .addOption(configOpt()).addOption(jsonOpt())
    .requiredOption("--name <name>", "which factory line")
    .option("--scopes <list>", `comma-separated: ${LINE_SCOPES.join(", ")}`, "enroll,read")
    .option("--max-enrollments <n>", "quota: enrollments the line may create", int("--max-enrollments"), 1_000_000)
    .option("--rate <n>", "requests per minute", int("--rate"), 600)
    .option("--cert-fingerprint <sha256>", "authenticate with this client certificate instead of a token")
    .action(action(async (o: Common & { name: string; scopes: string; maxEnrollments: number; rate: number; certFingerprint?: string }) => {
      const r = await withStore(readConfig, o, (es) => es.createLine({
        name: o.name, scopes: o.scopes.split(",").map((s) => s.trim()) as LineScope[], maxEnrollments: o.maxEnrollments, ratePerMinute: o.rate,
        ...(o.certFingerprint ? { certFingerprintSha256: o.certFingerprint } : {}),
      }, "cli:line-create"));
      emit(Boolean(o.json), r, () => `${lineText(r.line)}${r.token ? `\ntoken (shown once): ${r.token}` : ""}`);
    }));
}

/** `edgetrust ca line list`. */
function lineListCommand(readConfig: ConfigReader<EnrollmentCliConfig>): Command {
  return new Command("list")
    .description("list provisioning lines")
    .addOption(configOpt()).addOption(jsonOpt())
    .action(action(async (o: Common) => {
      const lines = await withStore(readConfig, o, (es) => es.listLines());
      emit(Boolean(o.json), { lines }, () => lines.map(lineText).join("\n") || "no provisioning lines");
    }));
}

/** `edgetrust ca line revoke`. */
function lineRevokeCommand(readConfig: ConfigReader<EnrollmentCliConfig>): Command {
  return new Command("revoke")
    .description("revoke a line: its credential stops working at once (its enrollments stay)")
    .addOption(configOpt()).addOption(jsonOpt())
    .argument("<id>", "line id")
    .action(action(async (id: string, o: Common) => {
      const l = await withStore(readConfig, o, (es) => es.revokeLine(id, "cli:line-revoke"));
      emit(Boolean(o.json), l, () => `revoked ${l.id} (${l.name})`);
    }));
}

/** `edgetrust ca enroll add`. */
function enrollAddCommand(readConfig: ConfigReader<EnrollmentCliConfig>): Command {
  return new Command("add")
    .description("create or update one individual enrollment (the same values again change nothing)")
    .addOption(configOpt()).addOption(jsonOpt())
    .argument("<registrationId>", "registration id (= device id)")
    .addOption(new Option("--attestation <kind>", "credential kind").choices([...INDIVIDUAL_ATTESTATIONS]).default("publicKey"))
    .requiredOption("--credential <file>", "PEM or base64 DER: SPKI (publicKey, tpm) or the bootstrap certificate (x509)")
    .addOption(new Option("--profile <name>", "certificate profile").choices([...ENROLLMENT_PROFILES]).default("device-identity"))
    .option("--lifetime-days <n>", "shorter certificate lifetime than the profile's", int("--lifetime-days"))
    .option("--no-edge-ca", "do not issue an Edge CA certificate at registration")
    .option("--dns <name...>", "the device's DNS names (Edge CA name constraints)")
    .option("--label <k=v...>", "initial device labels")
    .option("--disabled", "create it disabled")
    .action(action(async (registrationId: string, o: Common & { attestation: IndividualAttestation; credential: string; profile: EnrollmentProfile; lifetimeDays?: number; edgeCa: boolean; dns?: string[]; label?: string[]; disabled?: boolean }) => {
      const labels: Record<string, string> = {};
      for (const kv of o.label ?? []) {
        const i = kv.indexOf("=");
        if (i <= 0) throw new EdgeTrustError("INVALID_INPUT", `--label ${kv}: expected key=value`);
        labels[kv.slice(0, i)] = kv.slice(i + 1);
      }
      const r = await withStore(readConfig, o, (es) => es.putIndividual({
        registrationId, attestation: o.attestation, credential: readFileSync(o.credential, "utf8"), profile: o.profile,
        edgeCa: o.profile === "leaf-device" ? false : o.edgeCa, ...(o.lifetimeDays ? { lifetimeDays: o.lifetimeDays } : {}),
        ...(o.dns ? { dnsNames: o.dns } : {}), labels, status: o.disabled ? "disabled" : "enabled",
      }, { actor: "cli:enroll-add", lineId: null }));
      emit(Boolean(o.json), { outcome: r.outcome, enrollment: enrollmentView(r.enrollment) }, () => `${r.outcome} ${r.enrollment.registrationId} (${r.enrollment.attestation}, ${r.enrollment.status})`);
    }));
}

/** `edgetrust ca enroll import`. */
function enrollImportCommand(readConfig: ConfigReader<EnrollmentCliConfig>): Command {
  return new Command("import")
    .description("bulk import a CSV or JSON file; idempotent, all-or-nothing per batch; progress on stderr")
    .addOption(configOpt()).addOption(jsonOpt())
    .argument("<file>", "CSV (header: registrationId,attestation,credential,...) or JSON array")
    .addOption(new Option("--format <fmt>", "file format (default: by extension or content)").choices(["csv", "json"]))
    .option("--batch-size <n>", "rows per transaction", int("--batch-size"), 1000)
    .option("--line <id>", "import on behalf of this provisioning line (quota and ownership apply)")
    .option("--no-progress", "no progress bar")
    .action(action(async (file: string, o: Common & { format?: ImportFormat; batchSize: number; line?: string; progress: boolean }) => {
      const text = readFileSync(file, "utf8");
      const rows = parseImport(text, o.format ?? detectFormat(file, text));
      const report = await withStore(readConfig, o, async (es) => {
        if (o.line && !(await es.getLine(o.line))) throw new EdgeTrustError("NOT_FOUND", `no provisioning line ${o.line}`);
        return es.importIndividuals(rows, { actor: o.line ? `cli:enroll-import(line ${o.line})` : "cli:enroll-import", lineId: o.line ?? null }, {
          batchSize: o.batchSize, ...(o.progress ? { onProgress: progressBar(process.stderr, `import ${basename(file)}`) } : {}),
        });
      });
      emit(Boolean(o.json), report, () => [
        `${report.total} rows: ${report.inserted} inserted, ${report.updated} updated, ${report.unchanged} unchanged, ${report.notWritten} not written`,
        `batches: ${report.batches.committed}/${report.batches.total} committed`,
        ...report.batches.rejected.map((b) => `  batch ${b.index} (rows ${b.firstRow}-${b.lastRow}) rejected: ${b.reason}`),
        ...report.rejected.slice(0, 50).map((r) => `  row ${r.row}${r.registrationId ? ` (${r.registrationId})` : ""}: ${r.reason}`),
        ...(report.rejected.length > 50 ? [`  ... and ${report.rejected.length - 50} more (use --json for all)`] : []),
      ].join("\n"));
      if (report.rejected.length) process.exitCode = 1;
    }));
}

/** `edgetrust ca enroll list`. */
function enrollListCommand(readConfig: ConfigReader<EnrollmentCliConfig>): Command {
  return new Command("list")
    .description("list individual enrollments (paged by registration id)")
    .addOption(configOpt()).addOption(jsonOpt())
    .option("--after <id>", "start after this registration id")
    .option("--limit <n>", "at most this many (<= 1000)", int("--limit"), 100)
    .option("--line <id>", "only this line's")
    .action(action(async (o: Common & { after?: string; limit: number; line?: string }) => {
      const list = await withStore(readConfig, o, (es) => es.listIndividuals({ ...(o.after ? { after: o.after } : {}), limit: o.limit, lineId: o.line ?? null }));
      emit(Boolean(o.json), { enrollments: list.map(enrollmentView) }, () => list.map((e) => `${e.registrationId}  ${e.attestation}  ${e.profile}  ${e.status}${e.lineId ? `  line=${e.lineId}` : ""}`).join("\n") || "no enrollments");
    }));
}

/** `edgetrust ca enroll disable` and `edgetrust ca enroll enable`. */
function enrollStatusCommand(readConfig: ConfigReader<EnrollmentCliConfig>, verb: "disable" | "enable", status: "disabled" | "enabled"): Command {
  return new Command(verb)
    .description(`${verb} an individual enrollment (${verb === "disable" ? "the device can no longer register" : "registration allowed again"})`)
    .addOption(configOpt()).addOption(jsonOpt())
    .argument("<registrationId>", "registration id")
    .action(action(async (registrationId: string, o: Common) => {
      const e = await withStore(readConfig, o, (es) => es.setIndividualStatus(registrationId, status, { actor: `cli:enroll-${verb}`, lineId: null }));
      emit(Boolean(o.json), enrollmentView(e), () => `${e.registrationId} ${e.status}`);
    }));
}

/** `edgetrust ca line create|list|revoke`. */
export function lineCommand(readConfig: ConfigReader<EnrollmentCliConfig>): Command {
  const line = new Command("line").description("provisioning lines: factory API principals with scoped credentials, quotas and rate limits");
  line.addCommand(lineCreateCommand(readConfig));
  line.addCommand(lineListCommand(readConfig));
  line.addCommand(lineRevokeCommand(readConfig));
  return line;
}

/** `edgetrust ca enroll add|import|list|disable|enable`. */
export function enrollCommand(readConfig: ConfigReader<EnrollmentCliConfig>): Command {
  const enroll = new Command("enroll").description("individual enrollments (registration id + public key, bootstrap certificate or TPM EK)");
  enroll.addCommand(enrollAddCommand(readConfig));
  enroll.addCommand(enrollImportCommand(readConfig));
  enroll.addCommand(enrollListCommand(readConfig));
  enroll.addCommand(enrollStatusCommand(readConfig, "disable", "disabled"));
  enroll.addCommand(enrollStatusCommand(readConfig, "enable", "enabled"));
  return enroll;
}
