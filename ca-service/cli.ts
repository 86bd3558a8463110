import { readFileSync, writeFileSync } from "node:fs";
import { Command, Option } from "commander";
import { EdgeTrustError, createLogger, action, emit, reportFailure, type ConfigReader, type LogSection } from "../common/index.js";
import { KEY_ALGORITHMS, type HsmConfig, type KeyAlgorithm } from "../hsm/index.js";
import type { CaConfig } from "./config.js";
import { CA_PROFILES, type CaProfileName } from "./ca.js";
import { initCa, rolloverIssuingCa } from "./init.js";
import { createCaServer } from "./server.js";
import { isServeWorker, resolveWorkers, servePrimary, serveWorker } from "./cluster.js";
import { openCa, openCaStores } from "./service.js";
import { identityFilePath, openCaStore, writeIdentity } from "./store-identity.js";
import { REVOCATION_REASONS, type RevocationReason, type Role } from "./store.js";
import { enrollCommand, lineCommand } from "./enrollment/cli.js";
import type { FastifyInstance } from "fastify";
import type { CertificateAuthority } from "./ca.js";
import type { CaStore } from "./store.js";

/** The sections of edgetrust.yaml these commands read (the command tree hands in a reader of the whole file). */
export type CaCliConfig = { log: LogSection; hsm: HsmConfig; ca: CaConfig };

interface Common {
  config?: string;
  json?: boolean;
}

function load<C extends CaCliConfig>(readConfig: ConfigReader<C>, opts: Common): C {
  const cfg = readConfig(opts.config ? { file: opts.config, required: true } : {});
  return cfg;
}

const configOpt = () => new Option("-c, --config <file>", "edgetrust.yaml (default: built-in defaults + EDGETRUST_* environment)");
const jsonOpt = () => new Option("--json", "machine-readable output");

/**
 * What the command tree adds to `ca serve` before it listens (the security console): ca-service cannot import the
 * components that read it, so they are handed in.
 */
export type ServeExtension<C extends CaCliConfig = CaCliConfig> = (app: FastifyInstance, deps: { ca: CertificateAuthority; store: CaStore; config: C }) => Promise<void>;

interface CaCommandOptions<C extends CaCliConfig> {
  serveExtensions?: ServeExtension<C>[];
  /** A script running this command tree, for `ca serve --workers` when the process has no script (started with `node -e`). */
  workerEntry?: string;
}

/** `edgetrust ca init`. */
function caInitCommand<C extends CaCliConfig>(readConfig: ConfigReader<C>): Command {
  return new Command("init")
    .description("create the offline root and the online issuing CA (keys in the HSM) and the first admin token")
    .addOption(configOpt()).addOption(jsonOpt())
    .addOption(new Option("--algorithm <alg>", "issuing CA key (root: EC-P384 for EC-P256, else the same)").choices([...KEY_ALGORITHMS]).default("EC-P256"))
    .option("--root-name <cn>", "root CA common name", "edgetrust Root CA")
    .option("--issuing-name <cn>", "issuing CA common name", "edgetrust Issuing CA 1")
    .option("--root-out <file>", "also write the root certificate (PEM) here")
    .action(action(async (o: Common & { algorithm: KeyAlgorithm; rootName: string; issuingName: string; rootOut?: string }) => {
      const cfg = load(readConfig, o);
      const { store, keys } = await openCaStores(cfg.ca, cfg.hsm, { ...(o.config ? { configFile: o.config } : {}) });
      try {
        const r = await initCa(store, keys, { algorithm: o.algorithm, rootName: o.rootName, issuingName: o.issuingName, actor: "cli:ca-init", publicBaseUrl: cfg.ca.publicBaseUrl });
        const idFile = identityFilePath(cfg.ca, o.config);
        if (idFile) writeIdentity(idFile, cfg.ca, r.root.certPem);
        if (o.rootOut) writeFileSync(o.rootOut, r.root.certPem, { mode: 0o644 });
        emit(Boolean(o.json), { ok: true, root: r.root.id, issuing: r.issuing.id, rootCertificatePem: r.root.certPem, adminToken: r.adminToken, adminTokenId: r.adminTokenId, keyStore: keys.kind },
          () => `root CA ${r.root.id}\nissuing CA ${r.issuing.id}\nkey store: ${keys.kind}${keys.kind === "software" ? " (DEVELOPMENT ONLY)" : ""}\nadmin token (shown once): ${r.adminToken}`);
      } finally {
        await store.close();
        await keys.close();
      }
    }));
}

/** `edgetrust ca serve`. */
function caServeCommand<C extends CaCliConfig>(readConfig: ConfigReader<C>, opts: CaCommandOptions<C>): Command {
  return new Command("serve")
    .description("serve the HTTPS API (and CRL/OCSP over plain HTTP on ca.revocationPort) from N worker processes on one port; SIGTERM shuts every worker down gracefully")
    .addOption(configOpt())
    .option("--workers <n>", "worker processes (each terminates TLS, checks CSRs, signs, writes the store); 0 = one per core, 1 = a single process; default: ca.workers (0)")
    .action(action(async (o: Common & { workers?: string }) => {
      const cfg = load(readConfig, o);
      const logger = createLogger("ca-service", { level: cfg.log.level });
      const configFile = o.config ? { configFile: o.config } : {};
      const extend = async (server: { app: FastifyInstance }, deps: { ca: CertificateAuthority; store: CaStore }) => {
        for (const ext of opts.serveExtensions ?? []) await ext(server.app, { ...deps, config: cfg });
      };
      if (isServeWorker()) {
        // A worker that fails before it listens must exit, not just report: its IPC channel would keep it alive, and
        // the primary waits until every worker listens or one exits — `ca serve` hung for good, silently.
        try {
          await serveWorker({ config: cfg.ca, hsm: cfg.hsm, logger, ...configFile, extend });
        } catch (e) {
          process.exit(reportFailure(e));
        }
        process.exit(process.exitCode ?? 0);
      }
      const workers = resolveWorkers(o.workers, cfg.ca);
      if (workers > 1) {
        const code = await servePrimary({
          config: cfg.ca, hsm: cfg.hsm, logger, ...configFile, workers, extend,
          worker: { args: ["ca", "serve", ...(o.config ? ["-c", o.config] : []), "--workers", String(workers)], ...(opts.workerEntry ? { entry: opts.workerEntry } : {}) },
        });
        process.exit(code);
      }
      const opened = await openCa(cfg.ca, cfg.hsm, { logger, ...configFile });
      const server = await createCaServer(cfg.ca, { ca: opened.ca, store: opened.store, logger });
      await extend(server, { ca: opened.ca, store: opened.store });
      const addr = await server.listen();
      logger.info({ ...addr, database: opened.store.dialect, keyStore: opened.keys.kind, workers: 1 }, "ca-service listening");
      process.stdout.write(JSON.stringify({ listening: addr.url, revocation: addr.revocationUrl ?? null, workers: 1, pid: process.pid }) + "\n");
      await new Promise<void>((resolve) => {
        const stop = (sig: string) => {
          logger.info({ signal: sig }, "shutting down");
          // In-flight requests finish; anything still open after 10 s is cut off.
          setTimeout(() => { logger.error("graceful shutdown timed out"); process.exit(1); }, 10_000).unref();
          server.close().then(() => opened.close()).then(resolve, (e: unknown) => { logger.error({ err: e }, "shutdown failed"); resolve(); });
        };
        process.once("SIGTERM", () => stop("SIGTERM"));
        process.once("SIGINT", () => stop("SIGINT"));
      });
    }));
}

/** `edgetrust ca issue`. */
function caIssueCommand<C extends CaCliConfig>(readConfig: ConfigReader<C>): Command {
  return new Command("issue")
    .description("issue a certificate from a CSR for an enrolled device (subject and SANs from the record)")
    .addOption(configOpt()).addOption(jsonOpt())
    .requiredOption("--device <id>", "device id of the enrollment record")
    .addOption(new Option("--profile <name>", "certificate profile").choices([...CA_PROFILES]).default("device-identity"))
    .requiredOption("--csr <file>", "PKCS#10 request, PEM")
    .option("--host-name <name>", "edge-hub-server: the device host name")
    .option("--out <file>", "write the certificate chain (PEM) here")
    .action(action(async (o: Common & { device: string; profile: CaProfileName; csr: string; hostName?: string; out?: string }) => {
      const cfg = load(readConfig, o);
      const opened = await openCa(cfg.ca, cfg.hsm, { ...(o.config ? { configFile: o.config } : {}) });
      try {
        const r = await opened.ca.issue({ csrPem: readFileSync(o.csr, "utf8"), profile: o.profile, deviceId: o.device, ...(o.hostName ? { hostName: o.hostName } : {}) }, "cli:ca-issue");
        if (o.out) writeFileSync(o.out, r.chainPem);
        emit(Boolean(o.json), { serial: r.record.serial, notAfter: r.record.notAfter, chainPem: r.chainPem }, () => o.out ? `issued ${r.record.serial} → ${o.out}` : r.chainPem);
      } finally {
        await opened.close();
      }
    }));
}

/** `edgetrust ca revoke`. */
function caRevokeCommand<C extends CaCliConfig>(readConfig: ConfigReader<C>): Command {
  return new Command("revoke")
    .description("revoke a certificate by serial and publish a new CRL")
    .addOption(configOpt()).addOption(jsonOpt())
    .argument("<serial>", "hex serial")
    .addOption(new Option("--reason <reason>", "RFC 5280 reason").choices([...REVOCATION_REASONS]).default("unspecified"))
    .action(action(async (serial: string, o: Common & { reason: RevocationReason }) => {
      const cfg = load(readConfig, o);
      const opened = await openCa(cfg.ca, cfg.hsm, { ...(o.config ? { configFile: o.config } : {}) });
      try {
        const r = await opened.ca.revoke(serial, o.reason, "cli:ca-revoke");
        emit(Boolean(o.json), { serial: r.serial, status: r.status, reason: r.revocationReason, revokedAt: r.revokedAt }, () => `revoked ${r.serial} (${o.reason})`);
      } finally {
        await opened.close();
      }
    }));
}

/** `edgetrust ca rollover`. */
function caRolloverCommand<C extends CaCliConfig>(readConfig: ConfigReader<C>): Command {
  return new Command("rollover")
    .description("add a new issuing CA under the root (overlapping validity; devices need nothing new)")
    .addOption(configOpt()).addOption(jsonOpt())
    .option("--name <cn>", "common name of the new issuing CA")
    .option("--retire-previous", "stop issuing from the previous issuing CAs (they keep serving CRL/OCSP)")
    .action(action(async (o: Common & { name?: string; retirePrevious?: boolean }) => {
      const cfg = load(readConfig, o);
      const { store, keys } = await openCaStores(cfg.ca, cfg.hsm, { ...(o.config ? { configFile: o.config } : {}) });
      try {
        const r = await rolloverIssuingCa(store, keys, { ...(o.name ? { name: o.name } : {}), retirePrevious: Boolean(o.retirePrevious), actor: "cli:ca-rollover", publicBaseUrl: cfg.ca.publicBaseUrl });
        emit(Boolean(o.json), { id: r.id, name: r.name, notAfter: r.notAfter }, () => `issuing CA ${r.id} (${r.name}) added`);
      } finally {
        await store.close();
        await keys.close();
      }
    }));
}

/** `edgetrust ca audit verify`. */
function caAuditVerifyCommand<C extends CaCliConfig>(readConfig: ConfigReader<C>): Command {
  return new Command("verify")
    .description("walk the chain; exit 1 on an edited, deleted, reordered or truncated entry; with --checkpoint also on a rewrite of head and tail together")
    .addOption(configOpt()).addOption(jsonOpt())
    .option("--checkpoint <file>", "a checkpoint written earlier by `ca audit checkpoint` (kept outside the CA)")
    .action(action(async (o: Common & { checkpoint?: string }) => {
      const cfg = load(readConfig, o);
      if (o.checkpoint) {
        const jws = readFileSync(o.checkpoint, "utf8");
        const opened = await openCa(cfg.ca, cfg.hsm, { ...(o.config ? { configFile: o.config } : {}) });
        try {
          const { verifyCheckpoint } = await import("./audit-checkpoint.js");
          const v = await verifyCheckpoint(opened.ca, opened.store, jws);
          if (!v.ok && !o.json) throw new EdgeTrustError("CONFLICT", `audit log does not match checkpoint ${o.checkpoint}: ${v.reason ?? "unknown"}`, { hint: "the log was rewritten after the checkpoint: restore it from a backup and investigate" });
          emit(Boolean(o.json), v, () => `audit chain ok and matches checkpoint seq ${v.checkpoint?.seq ?? "?"} of ${v.checkpoint?.at ?? "?"}`);
          if (!v.ok) process.exitCode = 1;
        } finally {
          await opened.close();
        }
        return;
      }
      const store = await openCaStore(cfg.ca, { ...(o.config ? { configFile: o.config } : {}) });
      try {
        const v = await store.verifyAudit();
        if (!v.ok && !o.json) throw new EdgeTrustError("CONFLICT", `audit chain broken at entry ${v.problem?.seq ?? "?"}: ${v.problem?.reason ?? "unknown"}`, { hint: "restore the audit log from a backup and investigate" });
        emit(Boolean(o.json), v, () => `audit chain ok: ${v.entries} entries`);
        if (!v.ok) process.exitCode = 1;
      } finally {
        await store.close();
      }
    }));
}

/** `edgetrust ca audit checkpoint`. */
function caAuditCheckpointCommand<C extends CaCliConfig>(readConfig: ConfigReader<C>): Command {
  return new Command("checkpoint")
    .description("sign the audit head (seq, hash, time) with the issuing CA key; keep the output outside the CA (file, ticket, log shipper)")
    .addOption(configOpt()).addOption(jsonOpt())
    .option("--out <file>", "write the checkpoint (compact JWS) to this file; default stdout")
    .action(action(async (o: Common & { out?: string }) => {
      const cfg = load(readConfig, o);
      const opened = await openCa(cfg.ca, cfg.hsm, { ...(o.config ? { configFile: o.config } : {}) });
      try {
        const { createCheckpoint } = await import("./audit-checkpoint.js");
        const { jws, checkpoint } = await createCheckpoint(opened.ca, opened.store);
        if (o.out) writeFileSync(o.out, jws + "\n", { mode: 0o644 });
        emit(Boolean(o.json), { ...checkpoint, jws }, () => (o.out ? `checkpoint seq ${checkpoint.seq} → ${o.out}` : jws));
      } finally {
        await opened.close();
      }
    }));
}

/** `edgetrust ca token create`. */
function caTokenCreateCommand<C extends CaCliConfig>(readConfig: ConfigReader<C>): Command {
  return new Command("create")
    .description("create an API token (printed once; only its sha256 is stored)")
    .addOption(configOpt()).addOption(jsonOpt())
    .requiredOption("--name <name>", "who or what holds it")
    .addOption(new Option("--role <role>", "role").choices(["admin", "auditor"]).default("auditor"))
    .action(action(async (o: Common & { name: string; role: Role }) => {
      const cfg = load(readConfig, o);
      const store = await openCaStore(cfg.ca, { ...(o.config ? { configFile: o.config } : {}) });
      try {
        const t = await store.createToken(o.name, o.role, "cli:token-create");
        emit(Boolean(o.json), t, () => `${t.role} token ${t.id} (shown once): ${t.token}`);
      } finally {
        await store.close();
      }
    }));
}

/** `edgetrust ca admin-cert add`. */
function caAdminCertAddCommand<C extends CaCliConfig>(readConfig: ConfigReader<C>): Command {
  return new Command("add")
    .description("let whoever holds this certificate's key act with a role (TLS client certificate on the admin API)")
    .addOption(configOpt()).addOption(jsonOpt())
    .requiredOption("--name <name>", "who holds it")
    .requiredOption("--cert <file>", "the client certificate (PEM)")
    .addOption(new Option("--role <role>", "role").choices(["admin", "auditor"]).default("auditor"))
    .action(action(async (o: Common & { name: string; cert: string; role: Role }) => {
      const cfg = load(readConfig, o);
      const { X509Certificate } = await import("node:crypto");
      let fingerprint: string;
      try {
        fingerprint = new X509Certificate(readFileSync(o.cert)).fingerprint256.replace(/:/g, "").toLowerCase();
      } catch (e) {
        throw new EdgeTrustError("INVALID_INPUT", `${o.cert} is not a PEM certificate: ${(e as Error).message}`);
      }
      const store = await openCaStore(cfg.ca, { ...(o.config ? { configFile: o.config } : {}) });
      try {
        const r = await store.addAdminCertificate(o.name, o.role, fingerprint, "cli:admin-cert-add");
        emit(Boolean(o.json), { ...r, role: o.role, fingerprint }, () => `${o.role} certificate ${r.id} (sha256 ${fingerprint}) added for ${o.name}`);
      } finally {
        await store.close();
      }
    }));
}

/** `edgetrust ca enrollment set`. */
function caEnrollmentSetCommand<C extends CaCliConfig>(readConfig: ConfigReader<C>): Command {
  return new Command("set")
    .description("create or update a device record")
    .addOption(configOpt()).addOption(jsonOpt())
    .argument("<deviceId>", "device id")
    .addOption(new Option("--kind <kind>", "record kind").choices(["device", "leaf"]).default("device"))
    .option("--common-name <cn>", "subject CN (default: the device id)")
    .option("--dns <name...>", "the device's DNS names (Edge CA name constraints, hub server SANs)")
    .action(action(async (deviceId: string, o: Common & { kind: "device" | "leaf"; commonName?: string; dns?: string[] }) => {
      const cfg = load(readConfig, o);
      const store = await openCaStore(cfg.ca, { ...(o.config ? { configFile: o.config } : {}) });
      try {
        const r = await store.upsertEnrollment({ deviceId, kind: o.kind, commonName: o.commonName ?? deviceId, dnsNames: (o.dns ?? []).map((d) => d.toLowerCase()) }, "cli:enrollment-set");
        emit(Boolean(o.json), r, () => `record ${r.deviceId} (${r.kind}) saved`);
      } finally {
        await store.close();
      }
    }));
}

/** `edgetrust ca audit`. */
function caAuditCommand<C extends CaCliConfig>(readConfig: ConfigReader<C>): Command {
  const audit = new Command("audit").description("the hash-chained audit log");
  audit.addCommand(caAuditVerifyCommand(readConfig));
  audit.addCommand(caAuditCheckpointCommand(readConfig));
  return audit;
}

/** `edgetrust ca token`. */
function caTokenCommand<C extends CaCliConfig>(readConfig: ConfigReader<C>): Command {
  const token = new Command("token").description("admin and auditor API tokens");
  token.addCommand(caTokenCreateCommand(readConfig));
  return token;
}

/** `edgetrust ca admin-cert`. */
function caAdminCertCommand<C extends CaCliConfig>(readConfig: ConfigReader<C>): Command {
  const adminCert = new Command("admin-cert").description("admin and auditor client certificates, pinned by their SHA-256 fingerprint");
  adminCert.addCommand(caAdminCertAddCommand(readConfig));
  return adminCert;
}

/** `edgetrust ca enrollment`. */
function caEnrollmentCommand<C extends CaCliConfig>(readConfig: ConfigReader<C>): Command {
  const enr = new Command("enrollment").description("device records issuance reads subject and SANs from (the enrollment API is a later component)");
  enr.addCommand(caEnrollmentSetCommand(readConfig));
  return enr;
}

export function caCommand<C extends CaCliConfig>(readConfig: ConfigReader<C>, opts: CaCommandOptions<C> = {}): Command {
  const cmd = new Command("ca").description("Cloud CA: init the hierarchy, serve the HTTPS API, issue, revoke, audit");
  cmd.addCommand(caInitCommand(readConfig));
  cmd.addCommand(caServeCommand(readConfig, opts));
  cmd.addCommand(caIssueCommand(readConfig));
  cmd.addCommand(caRevokeCommand(readConfig));
  cmd.addCommand(caRolloverCommand(readConfig));
  cmd.addCommand(caAuditCommand(readConfig));
  cmd.addCommand(caTokenCommand(readConfig));
  cmd.addCommand(caAdminCertCommand(readConfig));
  cmd.addCommand(caEnrollmentCommand(readConfig));
  cmd.addCommand(lineCommand(readConfig));
  cmd.addCommand(enrollCommand(readConfig));
  return cmd;
}
