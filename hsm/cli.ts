import { createPublicKey } from "node:crypto";
import { Command, Option } from "commander";
import { EdgeTrustError, createLogger, type Logger, action, emit, type ConfigReader } from "../common/index.js";
import type { HsmConfig } from "./config.js";
import { runDoctor } from "./doctor.js";
import { openKeyStore } from "./open.js";
import { readPin } from "./pin.js";
import { isPkcs11Uri, parseKeyRef, parsePkcs11Uri } from "./pkcs11-uri.js";
import { initToken } from "./token-setup.js";
import { KEY_ALGORITHMS, type KeyAlgorithm, type KeyInfo, type KeyRef, type KeyStore } from "./types.js";

/** The sections of edgetrust.yaml these commands read (the command tree hands in a reader of the whole file). */
type HsmCliConfig = { hsm: HsmConfig };

interface CommonOpts {
  config?: string;
  module?: string;
  token?: string;
  pinFile?: string;
  pinEnv?: string;
  backend?: "pkcs11" | "software";
  json?: boolean;
}

function withCommon(cmd: Command): Command {
  return cmd
    .option("--config <file>", "edgetrust.yaml to read the hsm: section from (defaults and EDGETRUST_HSM_* apply)")
    .addOption(new Option("--backend <backend>", "key store backend").choices(["pkcs11", "software"]))
    .option("--module <path>", "PKCS#11 module (.so) to load (hsm.module)")
    .option("--token <label>", "token label (hsm.tokenLabel)")
    .option("--pin-file <file>", "file whose first line is the user PIN (hsm.pinFile)")
    .option("--pin-env <name>", "environment variable holding the user PIN when no PIN file is given (hsm.pinEnv)")
    .option("--json", "machine-readable output");
}

/** The effective hsm: section: config file < env < command-line flags < attributes of a pkcs11: URI key name. */
function resolveConfig(readConfig: ConfigReader<HsmCliConfig>, o: CommonOpts, keyName?: string): HsmConfig {
  const cfg = { ...readConfig(o.config ? { file: o.config, required: true } : {}).hsm };
  if (o.backend) cfg.backend = o.backend;
  if (o.module) cfg.module = o.module;
  if (o.token) cfg.tokenLabel = o.token;
  if (o.pinFile) cfg.pinFile = o.pinFile;
  if (o.pinEnv) cfg.pinEnv = o.pinEnv;
  if (keyName && isPkcs11Uri(keyName)) {
    const u = parsePkcs11Uri(keyName);
    if (u.modulePath) cfg.module = u.modulePath;
    if (u.token && !o.token) cfg.tokenLabel = u.token;
    if (u.pinSource && !o.pinFile) cfg.pinFile = u.pinSource.replace(/^file:(\/\/)?/, "");
  }
  return cfg;
}

function keyRef(name: string, cfg: HsmConfig): KeyRef {
  const ref = parseKeyRef(name);
  if (ref.token !== undefined && ref.token !== cfg.tokenLabel) {
    throw new EdgeTrustError("INVALID_INPUT", `the key URI names token ${JSON.stringify(ref.token)} but --token is ${JSON.stringify(cfg.tokenLabel)}`, {
      hint: "drop --token or make it match the URI",
    });
  }
  const out: KeyRef = {};
  if (ref.label !== undefined) out.label = ref.label;
  if (ref.id !== undefined) out.id = ref.id;
  return out;
}

/** Commands print their own results; the store's info logs only show with EDGETRUST_LOG_LEVEL=info or lower. */
function cliLogger(): Logger {
  return createLogger("hsm", { level: process.env.EDGETRUST_LOG_LEVEL ?? "warn" });
}

async function withStore<T>(cfg: HsmConfig, fn: (s: KeyStore) => Promise<T>): Promise<T> {
  const store = await openKeyStore(cfg, { logger: cliLogger() });
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

function infoLine(k: KeyInfo): string {
  return `${k.label}  ${k.algorithm}  id=${k.id}  ${k.extractable ? "EXTRACTABLE" : "non-extractable"}${k.sensitive ? ", sensitive" : ""}  ${k.uri}`;
}

/** `edgetrust hsm init`. */
function hsmInitCommand(readConfig: ConfigReader<HsmCliConfig>): Command {
  return withCommon(new Command("init"))
    .description("initialise a token in a free slot and set its user PIN (SoftHSM2 and other tokens that allow C_InitToken)")
    .option("--so-pin-file <file>", "file whose first line is the security officer PIN")
    .option("--so-pin-env <name>", "environment variable holding the SO PIN", "EDGETRUST_HSM_SO_PIN")
    .option("--softhsm-conf <file>", "SOFTHSM2_CONF to use (SoftHSM only)")
    .action(action(async (o: CommonOpts & { soPinFile?: string; soPinEnv?: string; softhsmConf?: string }) => {
      const cfg = resolveConfig(readConfig, o);
      const soPin = readPin({ pinFile: o.soPinFile ?? "", pinEnv: o.soPinEnv ?? "EDGETRUST_HSM_SO_PIN" });
      const userPin = readPin({ pinFile: cfg.pinFile, pinEnv: cfg.pinEnv });
      const opts: Parameters<typeof initToken>[0] = { module: cfg.module, label: cfg.tokenLabel, soPin, userPin };
      if (o.softhsmConf) opts.softhsmConf = o.softhsmConf;
      const r = initToken(opts);
      emit(Boolean(o.json), { ok: true, token: r.label, module: cfg.module }, () => `token ${JSON.stringify(r.label)} initialised in ${cfg.module}; user PIN set`);
    }));
}

/** `edgetrust hsm keygen`. */
function hsmKeygenCommand(readConfig: ConfigReader<HsmCliConfig>): Command {
  return withCommon(new Command("keygen"))
    .description("generate a key pair in the token (private key sensitive, non-extractable)")
    .argument("<label>", "label of the new key (CKA_LABEL)")
    .addOption(new Option("--alg <algorithm>", "key algorithm").choices([...KEY_ALGORITHMS]).default("EC-P256"))
    .option("--id <hex>", "CKA_ID as hex (default: 16 random bytes)")
    .action(action(async (label: string, o: CommonOpts & { alg: KeyAlgorithm; id?: string }) => {
      const cfg = resolveConfig(readConfig, o);
      const info = await withStore(cfg, (s) => s.generateKey(label, o.alg, o.id === undefined ? {} : { id: o.id }));
      emit(Boolean(o.json), info, () => infoLine(info));
    }));
}

/** `edgetrust hsm list`. */
function hsmListCommand(readConfig: ConfigReader<HsmCliConfig>): Command {
  return withCommon(new Command("list"))
    .description("list the private keys in the token")
    .action(action(async (o: CommonOpts) => {
      const cfg = resolveConfig(readConfig, o);
      const keys = await withStore(cfg, (s) => s.list());
      emit(Boolean(o.json), { token: cfg.tokenLabel, keys }, () => (keys.length ? keys.map(infoLine).join("\n") : `no keys in ${JSON.stringify(cfg.tokenLabel)}`));
    }));
}

/** `edgetrust hsm pubkey`. */
function hsmPubkeyCommand(readConfig: ConfigReader<HsmCliConfig>): Command {
  return withCommon(new Command("pubkey"))
    .description("print a key's public key (PEM SPKI by default)")
    .argument("<key>", "label, id:<hex> or pkcs11: URI")
    .addOption(new Option("--format <format>", "output format").choices(["pem", "jwk", "der-hex"]).default("pem"))
    .action(action(async (name: string, o: CommonOpts & { format: "pem" | "jwk" | "der-hex" }) => {
      const cfg = resolveConfig(readConfig, o, name);
      const pub = await withStore(cfg, (s) => s.getPublicKey(keyRef(name, cfg)));
      const pem = createPublicKey({ key: pub.spki, format: "der", type: "spki" }).export({ type: "spki", format: "pem" }).toString();
      emit(Boolean(o.json), { algorithm: pub.algorithm, jwk: pub.jwk, spki: pub.spki.toString("base64") }, () =>
        o.format === "jwk" ? JSON.stringify(pub.jwk) : o.format === "der-hex" ? pub.spki.toString("hex") : pem);
    }));
}

/** `edgetrust hsm delete`. */
function hsmDeleteCommand(readConfig: ConfigReader<HsmCliConfig>): Command {
  return withCommon(new Command("delete"))
    .description("delete a key pair from the token")
    .argument("<key>", "label, id:<hex> or pkcs11: URI")
    .action(action(async (name: string, o: CommonOpts) => {
      const cfg = resolveConfig(readConfig, o, name);
      await withStore(cfg, async (s) => {
        const ref = keyRef(name, cfg);
        const info = await s.getKey(ref);
        await s.delete({ id: info.id, label: info.label });
      });
      emit(Boolean(o.json), { ok: true, deleted: name }, () => `deleted ${name}`);
    }));
}

/** `edgetrust hsm doctor`. */
function hsmDoctorCommand(readConfig: ConfigReader<HsmCliConfig>): Command {
  return withCommon(new Command("doctor"))
    .description("check, in order: module loads, token exists, PIN works, mechanisms supported, the named key signs")
    .option("--key <key>", "key to find and sign with (label, id:<hex> or pkcs11: URI)")
    .action(action(async (o: CommonOpts & { key?: string }) => {
      const cfg = resolveConfig(readConfig, o, o.key);
      const res = await runDoctor(cfg, o.key ? { key: keyRef(o.key, cfg), logger: cliLogger() } : { logger: cliLogger() });
      if (o.json) {
        emit(true, res, () => "");
      } else {
        const lines = res.checks.map((c) => (c.ok ? `ok    ${c.name.padEnd(10)} ${c.detail}` : `FAIL  ${c.name.padEnd(10)} ${c.detail}${c.code ? ` (${c.code})` : ""}\n      fix: ${c.fix ?? ""}`));
        if (!o.key && res.ok) lines.push("skip  key        no --key given: name the device key to check that it signs");
        process.stdout.write(lines.join("\n") + "\n");
      }
      if (!res.ok) {
        const first = res.checks.find((c) => !c.ok);
        if (!o.json && first) process.stderr.write(`edgetrust: hsm doctor: ${first.name} check failed: ${first.fix ?? first.detail}\n`);
        process.exitCode = 1;
      }
    }));
}

export function hsmCommand(readConfig: ConfigReader<HsmCliConfig>): Command {
  const hsm = new Command("hsm").description("Key store: PKCS#11 tokens (SoftHSM2, TPM, HSM) and the development software store");
  hsm.addCommand(hsmInitCommand(readConfig));
  hsm.addCommand(hsmKeygenCommand(readConfig));
  hsm.addCommand(hsmListCommand(readConfig));
  hsm.addCommand(hsmPubkeyCommand(readConfig));
  hsm.addCommand(hsmDeleteCommand(readConfig));
  hsm.addCommand(hsmDoctorCommand(readConfig));
  return hsm;
}
