import type { Policy } from "./schema.js";
import { CERT_KINDS } from "./schema.js";
import { decideImage, decideModuleOptions, decideTopic, type Decision } from "./decide.js";
import type { CaseFile } from "./schema.js";

/** What a policy allows, in words. Deterministic (golden-tested). */
export function explainPolicy(p: Policy): string {
  const out: string[] = [];
  const list = (xs: readonly string[] | undefined, none = "nothing") => (xs && xs.length > 0 ? xs.join(", ") : none);
  out.push(`Mode: ${p.mode === "enforce" ? "enforce — anything not allowed below is refused" : "audit — denials are reported but not enforced (digest pinning and signatures are always enforced)"}.`);
  out.push("");
  out.push("Manifest signers:");
  if ("trustRoot" in p.trust) out.push(`  - the keys and threshold of the trust root ${p.trust.trustRoot}`);
  else {
    out.push(`  - ${p.trust.threshold} of these ${p.trust.keys.length} keys must sign:`);
    for (const k of p.trust.keys) out.push(`    - ${k.kid} (${k.alg})`);
  }
  out.push("");
  out.push("Images:");
  out.push("  - always pinned by sha256 digest (tags are refused)");
  out.push(`  - from registries: ${list(p.images.registries)}`);
  if (p.images.repositories) out.push(`  - from repositories: ${list(p.images.repositories)}`);
  out.push("");
  out.push("Modules:");
  out.push(`  - names allowed to run: ${list(p.modules.allow)}`);
  const describePerms = (indent: string, perm: NonNullable<Policy["modules"]["defaults"]>, isDefault: boolean) => {
    const show = (label: string, v: string | undefined) => {
      if (v !== undefined) out.push(`${indent}${label}: ${v}`);
    };
    const d = isDefault;
    show("privileged", perm.privileged !== undefined ? (perm.privileged ? "allowed" : "refused") : d ? "refused" : undefined);
    show("capabilities it may add", perm.capabilities ? list(perm.capabilities, "none") : d ? "none" : undefined);
    if (perm.binds) {
      if (perm.binds.length === 0) out.push(`${indent}bind mounts: none`);
      for (const b of perm.binds) out.push(`${indent}bind mount: ${b.source} -> ${b.target ?? "(any target)"} ${b.readOnly === false ? "(read-write allowed)" : "(read-only)"}`);
    } else if (d) out.push(`${indent}bind mounts: none`);
    show("devices", perm.devices ? list(perm.devices, "none") : d ? "none" : undefined);
    show("network modes", perm.network ? list(perm.network) : d ? "none" : undefined);
    show("users", perm.users ? list(perm.users, "none (no module can start)") : d ? "none: every module must set a user, and none is allowed" : undefined);
    show("read-only root filesystem", perm.readOnlyRootfs ?? (d ? "required" : undefined));
    show("image repositories", perm.images ? list(perm.images) : undefined);
    show("hub authentication", perm.auth === "sas" ? "sas (Azure IoT Edge SDK: SAS tokens signed with a module key in the HSM)" : perm.auth === "x509" || d ? "x509 (module certificate)" : undefined);
  };
  out.push("  - every module, unless overridden:");
  describePerms("      ", p.modules.defaults ?? {}, true);
  for (const [name, o] of Object.entries(p.modules.overrides ?? {}).sort(([a], [b]) => a.localeCompare(b))) {
    out.push(`  - module ${name} (replaces the defaults for the keys listed):`);
    describePerms("      ", o, false);
  }
  out.push("");
  out.push("Hub (MQTT) — {device} and {module} are the client's own certified ids:");
  for (const action of ["publish", "subscribe"] as const) {
    const rules = p.hub?.[action] ?? [];
    if (rules.length === 0) out.push(`  - nobody may ${action}`);
    for (const r of rules) {
      const who = r.principals.join("/") + (r.modules ? ` (modules ${r.modules.join(", ")})` : "");
      out.push(`  - ${who} may ${action} [${r.id}]: ${r.topics.join(", ")}`);
    }
  }
  out.push("");
  out.push("Certificates:");
  let anyCert = false;
  for (const kind of CERT_KINDS) {
    const c = p.certificates?.[kind];
    if (!c) continue;
    anyCert = true;
    out.push(`  - ${kind}: lifetime ${c.lifetime}, renewed at ${c.renewAt}% of it, keys ${c.keyTypes.join(", ")}`);
  }
  if (!anyCert) out.push("  - no profile set: the issuing components' defaults apply");
  out.push("");
  out.push("Privacy (before messages go upstream):");
  const red = p.privacy?.redact ?? [];
  if (red.length === 0) out.push("  - nothing is redacted");
  for (const r of red) out.push(`  - ${r.action === "remove" ? "remove" : "hash (SHA-256)"} ${r.path}${r.topics ? ` on ${r.topics.join(", ")}` : ""}`);
  out.push("");
  out.push("Attestation (reference values a verifier appraises device evidence against):");
  const a = p.attestation;
  if (!a) out.push("  - none: every measurement is only a warning");
  else {
    const sev = (k: keyof NonNullable<typeof a.mismatch>) => a.mismatch?.[k] ?? "contraindicated";
    const digests = (xs: readonly string[]) => xs.length === 1 ? `${xs[0] ?? ""}` : `one of ${xs.length} digests (${xs.map((x) => `${x.slice(0, 19)}…`).join(", ")})`;
    out.push(a.agent ? `  - agent build: ${digests(a.agent)}; otherwise ${sev("agent")}` : "  - agent build: not appraised (warning)");
    out.push(a.policy === undefined ? "  - policy: not appraised (warning)" : `  - policy: ${a.policy === "self" ? "exactly this policy file" : digests(a.policy)}; otherwise ${sev("policy")}`);
    out.push(a.trustRoot === undefined ? "  - trust root: not appraised (warning)" : `  - trust root: ${a.trustRoot === "policy" ? "exactly the trust root file this policy names" : digests(a.trustRoot)}; otherwise ${sev("trustRoot")}`);
    if (!a.manifest) out.push("  - deployment manifest: not appraised (warning)");
    else {
      const from = a.manifest.digests === undefined ? "" : a.manifest.digests === "deployments" ? ", one the verifier's deployment store serves" : `, ${digests(a.manifest.digests)}`;
      out.push(`  - deployment manifest: version ${a.manifest.minVersion} or newer${from}; otherwise ${sev("manifest")}; no deployment yet: ${a.manifest.absent ?? "warning"}`);
    }
    if (!a.modules) out.push("  - module images: not appraised (warning)");
    else if (a.modules === "manifest") out.push(`  - module images: exactly the digests the attested manifest pins; otherwise ${sev("modules")}`);
    else for (const [name, ds] of Object.entries(a.modules).sort(([x], [y]) => x.localeCompare(y))) out.push(`  - module ${name}: ${digests(ds)}; otherwise ${sev("modules")}`);
    if (a.modules && a.modules !== "manifest") out.push(`  - any other module: ${sev("modules")}`);
  }
  return out.join("\n") + "\n";
}

interface CaseResult {
  name: string;
  expect: "allow" | "deny";
  got: "allow" | "deny";
  pass: boolean;
  decisions: Decision[];
}

/** Run a case file against a policy (like OPA's tests). The policy's answer is tested, regardless of audit mode. */
export function runCases(p: Policy, file: CaseFile): CaseResult[] {
  return file.cases.map((c) => {
    let decisions: Decision[];
    let expect: "allow" | "deny";
    if ("module" in c) {
      const m = c.module;
      decisions = [decideModuleOptions(p, m.name, m.options ?? {})];
      if (m.image !== undefined) decisions.push(decideImage(p, m.image, m.name));
      expect = m.expect;
    } else if ("topic" in c) {
      const t = c.topic;
      const id = t.module === undefined ? { principal: t.principal, device: t.device } : { principal: t.principal, device: t.device, module: t.module };
      decisions = [decideTopic(p, id, t.action, t.topic)];
      expect = t.expect;
    } else {
      decisions = [decideImage(p, c.image.image, c.image.module)];
      expect = c.image.expect;
    }
    const got = decisions.every((d) => d.allowed) ? "allow" : "deny";
    return { name: c.name, expect, got, pass: got === expect, decisions };
  });
}
