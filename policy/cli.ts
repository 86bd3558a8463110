import { readFileSync, writeFileSync } from "node:fs";
import { Command } from "commander";
import { EdgeTrustError, parseYamlStrict, action, emit, type ConfigReader } from "../common/index.js";
import { openKeyStore, parseKeyRef, type HsmConfig } from "../hsm/index.js";
import { loadPolicy } from "./policy.js";
import { explainPolicy, runCases } from "./explain.js";
import { CaseFileSchema, type Manifest } from "./schema.js";
import { policyJsonSchemaText } from "./json-schema.js";
import { loadTrustRoot, resolveTrust, signTrustRoot, verifyTrustRootRotation, parseTrustRoot } from "./trust-root.js";
import { ManifestStateStore, signManifest, verifyManifest } from "./manifest.js";
import { signerFromKeyFile, signerFromKeyStore, parseJwsForSigning, type JwsSigner } from "./sign.js";
import type { GeneralJws } from "./jws.js";
import type { TrustRootBody } from "./schema.js";

/** The sections of edgetrust.yaml these commands read (the command tree hands in a reader of the whole file). */
type PolicyCliConfig = { hsm: HsmConfig };

function readText(file: string, max = 1024 * 1024): string {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new EdgeTrustError("INVALID_INPUT", `cannot read ${file}: ${(e as Error).message}`);
  }
  if (Buffer.byteLength(text) > max) throw new EdgeTrustError("TOO_LARGE", `${file} is larger than ${max} bytes`);
  return text;
}

function writeOut(out: string | undefined, text: string): void {
  if (out) writeFileSync(out, text, { mode: 0o644 });
  else process.stdout.write(text);
}

/** `edgetrust policy check`. */
function policyCheckCommand(): Command {
  return new Command("check")
    .description("validate a policy file strictly (every problem as file:line:col) and its trust root")
    .argument("<file>", "policy YAML file")
    .option("--json", "machine-readable result")
    .action(action(async (file: string, o: { json?: boolean }) => {
      const { policy } = loadPolicy(file);
      const trust = await resolveTrust(policy, file);
      emit(Boolean(o.json), { ok: true, file, mode: policy.mode, trust: { source: trust.source, version: trust.body.version, threshold: trust.body.threshold, keys: trust.body.keys.map((k) => k.kid) } }, () => `${file}: ok (${policy.mode}, ${trust.body.threshold} of ${trust.body.keys.length} signer keys)`);
    }));
}

/** `edgetrust policy explain`. */
function policyExplainCommand(): Command {
  return new Command("explain")
    .description("say in words what a policy allows")
    .argument("<file>", "policy YAML file")
    .option("--json", "the validated policy as JSON")
    .action(action((file: string, o: { json?: boolean }) => {
      const { policy } = loadPolicy(file);
      emit(Boolean(o.json), policy, () => explainPolicy(policy));
    }));
}

/** `edgetrust policy test`. */
function policyTestCommand(): Command {
  return new Command("test")
    .description("run a case file (modules with options, topics, images; each with expect: allow|deny) against a policy")
    .argument("<file>", "policy YAML file")
    .argument("<cases>", "case YAML file")
    .option("--json", "every case with its decisions")
    .action(action((file: string, cases: string, o: { json?: boolean }) => {
      const { policy } = loadPolicy(file);
      const cf = parseYamlStrict(readText(cases), CaseFileSchema, cases, "INVALID_INPUT").value;
      const results = runCases(policy, cf);
      const failed = results.filter((r) => !r.pass);
      emit(Boolean(o.json), { ok: failed.length === 0, passed: results.length - failed.length, failed: failed.length, results }, () =>
        results
          .map((r) => {
            const why = r.decisions.flatMap((d) => d.rules.filter((x) => (r.got === "deny" ? x.effect === "deny" : true)).map((x) => `${x.reason} [${x.rule}]`));
            return `${r.pass ? "PASS" : "FAIL"} ${r.name}: expected ${r.expect}, got ${r.got}${r.pass ? "" : ` — ${why.join("; ")}`}`;
          })
          .concat(`${results.length - failed.length}/${results.length} passed`)
          .join("\n"));
      if (failed.length > 0) process.exitCode = 1;
    }));
}

/** `edgetrust policy schema`. */
function policySchemaCommand(): Command {
  return new Command("schema")
    .description("print the policy JSON Schema (the same as policy/policy.schema.json)")
    .action(action(() => { process.stdout.write(policyJsonSchemaText()); }));
}

/** `edgetrust policy trust-root sign`. */
function trustRootSignCommand(readConfig: ConfigReader<PolicyCliConfig>): Command {
  return new Command("sign")
    .description("add one signature to a trust root (start from an unsigned body JSON, or a signed trust-root.json)")
    .requiredOption("--in <file>", "body JSON {type, version, expires, threshold, keys} or trust-root.json")
    .option("--key <file>", "private key file (PKCS#8 PEM or JWK)")
    .option("--hsm-key <name>", "key in the key store (label or pkcs11: URI); hsm: config applies")
    .option("--config <file>", "edgetrust.yaml (for --hsm-key)")
    .option("--kid <kid>", "key id (default: JWK thumbprint)")
    .option("--out <file>", "write here instead of stdout")
    .action(action(async (o: SignOpts & { in: string; out?: string }) => {
      const v = JSON.parse(readText(o.in)) as unknown;
      const signer = await signerFrom(o, readConfig);
      const target = typeof v === "object" && v !== null && "payload" in v ? parseJwsForSigning(JSON.stringify(v)) : (v as TrustRootBody);
      writeOut(o.out, JSON.stringify(await signTrustRoot(target, signer), null, 2) + "\n");
    }));
}

/** `edgetrust policy trust-root verify`. */
function trustRootVerifyCommand(): Command {
  return new Command("verify")
    .description("check a trust root is signed by its own threshold; with --current, check it as a rotation N -> N+1")
    .argument("<file>", "trust-root.json")
    .option("--current <file>", "the trust root in force now")
    .option("--now <iso>", "reference time (default: now)")
    .option("--json", "machine-readable result")
    .action(action(async (file: string, o: { current?: string; now?: string; json?: boolean }) => {
      const now = o.now ? new Date(o.now) : new Date();
      if (o.current) {
        const r = await verifyTrustRootRotation(await loadTrustRoot(o.current), readText(file), { now });
        emit(Boolean(o.json), r, () => (r.ok ? `${file}: rotation to version ${r.root?.body.version} accepted` : `${file}: rotation rejected:\n  ${r.reasons.join("\n  ")}`));
        if (!r.ok) process.exitCode = 1;
        return;
      }
      const root = await parseTrustRoot(readText(file));
      emit(Boolean(o.json), { ok: true, version: root.body.version, expires: root.body.expires, threshold: root.body.threshold, keys: root.body.keys.map((k) => ({ kid: k.kid, alg: k.alg })) }, () =>
        `${file}: version ${root.body.version}, ${root.body.threshold} of ${root.body.keys.length} keys, expires ${root.body.expires}`);
    }));
}

/** `edgetrust policy trust-root`. */
function trustRootCommand(readConfig: ConfigReader<PolicyCliConfig>): Command {
  const tr = new Command("trust-root").description("trust-root.json: sign, verify, rotate");
  tr.addCommand(trustRootSignCommand(readConfig));
  tr.addCommand(trustRootVerifyCommand());
  return tr;
}

export function policyCommand(readConfig: ConfigReader<PolicyCliConfig>): Command {
  const cmd = new Command("policy").description("Policy files: validate, explain in words, run test cases; the JSON Schema for editors");
  cmd.addCommand(policyCheckCommand());
  cmd.addCommand(policyExplainCommand());
  cmd.addCommand(policyTestCommand());
  cmd.addCommand(policySchemaCommand());
  cmd.addCommand(trustRootCommand(readConfig));
  return cmd;
}

interface SignOpts {
  key?: string;
  hsmKey?: string;
  config?: string;
  kid?: string;
}

async function signerFrom(o: SignOpts, readConfig: ConfigReader<PolicyCliConfig>): Promise<JwsSigner> {
  if (Boolean(o.key) === Boolean(o.hsmKey)) throw new EdgeTrustError("INVALID_INPUT", "give exactly one of --key FILE or --hsm-key NAME");
  if (o.key) return signerFromKeyFile(o.key, o.kid);
  const cfg = readConfig(o.config ? { file: o.config, required: true } : {}).hsm;
  const store = await openKeyStore(cfg);
  const ref = parseKeyRef(o.hsmKey ?? "");
  const s = await signerFromKeyStore(store, ref, o.kid);
  const sign = s.sign;
  return { ...s, sign: sign ? async (d) => { try { return await sign(d); } finally { await store.close(); } } : undefined };
}

/** `edgetrust manifest sign`. */
function manifestSignCommand(readConfig: ConfigReader<PolicyCliConfig>): Command {
  return new Command("sign")
    .description("add one signature: to an unsigned manifest JSON (starting the JWS) or to a signed one")
    .requiredOption("--in <file>", "manifest JSON, or a JWS General JSON to co-sign")
    .option("--key <file>", "private key file (PKCS#8 PEM or JWK)")
    .option("--hsm-key <name>", "key in the key store (label or pkcs11: URI); hsm: config applies")
    .option("--config <file>", "edgetrust.yaml (for --hsm-key)")
    .option("--kid <kid>", "key id (default: JWK thumbprint)")
    .option("--out <file>", "write here instead of stdout")
    .action(action(async (o: SignOpts & { in: string; out?: string }) => {
      const text = readText(o.in, 512 * 1024);
      const v = JSON.parse(text) as unknown;
      const target: Manifest | GeneralJws = typeof v === "object" && v !== null && "signatures" in v ? parseJwsForSigning(text) : (v as Manifest);
      const signer = await signerFrom(o, readConfig);
      writeOut(o.out, JSON.stringify(await signManifest(target, signer), null, 2) + "\n");
    }));
}

/** `edgetrust manifest verify`. */
function manifestVerifyCommand(): Command {
  return new Command("verify")
    .description("verify a signed manifest for this device against a policy and its trust root; prints every reason")
    .argument("<file>", "signed manifest (JWS General JSON)")
    .requiredOption("--policy <file>", "policy YAML (its trust section names the signers)")
    .requiredOption("--device <id>", "this device's id")
    .option("--trust-root <file>", "trust-root.json (overrides the policy's trust section)")
    .option("--state <file>", "accepted-manifest state file (rollback/replay protection)")
    .option("--accept", "on success, record the manifest as accepted in --state (atomically)")
    .option("--now <iso>", "reference time (default: now, read once)")
    .option("--json", "the verdict as JSON")
    .action(action(async (file: string, o: { policy: string; device: string; trustRoot?: string; state?: string; accept?: boolean; now?: string; json?: boolean }) => {
      const { policy } = loadPolicy(o.policy);
      const trustRoot = o.trustRoot ? await loadTrustRoot(o.trustRoot) : await resolveTrust(policy, o.policy);
      const store = o.state ? new ManifestStateStore(o.state) : undefined;
      const now = o.now ? new Date(o.now) : new Date();
      if (Number.isNaN(now.getTime())) throw new EdgeTrustError("INVALID_INPUT", `--now ${o.now} is not a time`);
      const v = await verifyManifest(readFileSync(file), { policy, trustRoot, deviceId: o.device, state: store?.read(), now });
      if (v.ok && o.accept) {
        if (!store) throw new EdgeTrustError("INVALID_INPUT", "--accept needs --state");
        store.accept(v, o.device, now);
      }
      emit(Boolean(o.json), v, () => {
        const lines = [v.ok ? `${file}: ok — ${v.deploymentId} version ${v.version}, signed by ${v.signers.join(", ")}` : `${file}: REJECTED`];
        for (const r of v.reasons) lines.push(`  ${r.check}: ${r.message}`);
        for (const w of v.warnings) lines.push(`  warning ${w.check}: ${w.message}`);
        return lines.join("\n");
      });
      if (!v.ok) {
        if (!o.json) process.stderr.write(`edgetrust: manifest rejected: ${v.reasons.map((r) => r.check).join(", ")} (MANIFEST_REJECTED)\n`);
        process.exitCode = 1;
      }
    }));
}

export function manifestCommand(readConfig: ConfigReader<PolicyCliConfig>): Command {
  const cmd = new Command("manifest").description("Deployment manifests: sign (N-of-M, JWS General JSON) and verify");
  cmd.addCommand(manifestSignCommand(readConfig));
  cmd.addCommand(manifestVerifyCommand());
  return cmd;
}
