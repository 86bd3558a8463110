import { readFileSync, statSync } from "node:fs";
import { isMap, isSeq, type Document, type LineCounter, type Node as YamlNode } from "yaml";
import { EdgeTrustError, formatLocated, isEdgeTrustError, parseYamlStrict, type Located } from "../common/index.js";
import { PolicySchema, type Policy, type TrustKey } from "./schema.js";
import { nameGlobMatch, topicFilterProblem } from "./match.js";

/** Largest policy file read (a policy is hand-written; anything bigger is a mistake or an attack). */
const MAX_POLICY_BYTES = 1024 * 1024;

interface LoadedPolicy {
  policy: Policy;
  /** The file it came from (for resolving `trust.trustRoot`). */
  file: string;
}

/** Read and validate a policy file; every problem is reported as file:line:col with the offending value. */
export function loadPolicy(file: string): LoadedPolicy {
  let size: number;
  try {
    size = statSync(file).size;
  } catch (e) {
    throw new EdgeTrustError("POLICY_INVALID", `cannot read policy ${file}: ${(e as Error).message}`, { cause: e });
  }
  if (size > MAX_POLICY_BYTES) throw new EdgeTrustError("POLICY_INVALID", `${file}: policy is ${size} bytes, more than ${MAX_POLICY_BYTES}`);
  return { policy: parsePolicy(readFileSync(file, "utf8"), file), file };
}

/** Validate policy text. Throws POLICY_INVALID whose message lists every problem, one `file:line:col: ...` per line. */
export function parsePolicy(text: string, file: string): Policy {
  if (Buffer.byteLength(text) > MAX_POLICY_BYTES) throw new EdgeTrustError("POLICY_INVALID", `${file}: policy larger than ${MAX_POLICY_BYTES} bytes`);
  let parsed;
  try {
    parsed = parseYamlStrict(text, PolicySchema, file, "POLICY_INVALID");
  } catch (e) {
    if (isEdgeTrustError(e)) {
      // A missing key's "value" is the whole parent object: noise in a one-line-per-problem report.
      const problems = ((e.details?.problems ?? []) as Located[]).map((pr) => {
        if (!pr.message.startsWith("missing required key")) return pr;
        const { value: _v, ...rest } = pr;
        return rest;
      });
      const message = problems.length > 0 ? problems.map(formatLocated).join("\n") : e.message;
      throw new EdgeTrustError("POLICY_INVALID", message, { details: { problems }, hint: "fix the listed lines (schema: policy/policy.schema.json)" });
    }
    throw e;
  }
  const problems = semanticProblems(parsed.value, parsed.doc, parsed.lineCounter, file);
  if (problems.length > 0) {
    problems.sort((a, b) => a.line - b.line || a.col - b.col);
    throw new EdgeTrustError("POLICY_INVALID", problems.map(formatLocated).join("\n"), {
      details: { problems },
      hint: "fix the listed lines (schema: policy/policy.schema.json)",
    });
  }
  return parsed.value;
}

type Seg = string | number;

function locate(doc: Document, lc: LineCounter, path: Seg[]): { line: number; col: number } {
  // Walk as far as the document goes; report the deepest node found.
  let node: unknown = doc.contents;
  let best: YamlNode | undefined = (doc.contents as YamlNode | null) ?? undefined;
  for (const seg of path) {
    if (isMap(node)) {
      const pair = node.items.find((it) => (it.key as { value?: unknown } | null)?.value === seg);
      if (!pair) break;
      node = pair.value;
    } else if (isSeq(node) && typeof seg === "number") {
      node = node.items[seg];
    } else break;
    if (node && typeof node === "object" && "range" in node) best = node as YamlNode;
  }
  const pos = best?.range ? lc.linePos(best.range[0]) : { line: 1, col: 1 };
  return { line: pos.line, col: pos.col };
}

function pointer(path: Seg[]): string {
  return path.map((s) => "/" + String(s).replace(/~/g, "~0").replace(/\//g, "~1")).join("");
}

const ALG_KEY: Record<TrustKey["alg"], { kty: string; crv: string; y: boolean }> = {
  ES256: { kty: "EC", crv: "P-256", y: true },
  ES384: { kty: "EC", crv: "P-384", y: true },
  EdDSA: { kty: "OKP", crv: "Ed25519", y: false },
};

/** Problems with a set of signer keys (shared by inline policy keys and trust-root.json). */
export function trustKeyProblems(keys: TrustKey[], threshold: number): { index: number | undefined; field: string; message: string; value?: unknown }[] {
  const out: { index: number | undefined; field: string; message: string; value?: unknown }[] = [];
  const kids = new Set<string>();
  const xs = new Set<string>();
  keys.forEach((k, i) => {
    const want = ALG_KEY[k.alg];
    if (k.kty !== want.kty || k.crv !== want.crv) out.push({ index: i, field: "alg", message: `alg ${k.alg} needs kty ${want.kty} crv ${want.crv}`, value: `${k.kty}/${k.crv}` });
    if (want.y !== (k.y !== undefined)) out.push({ index: i, field: "y", message: want.y ? "EC key needs y" : "OKP key has no y" });
    if (kids.has(k.kid)) out.push({ index: i, field: "kid", message: "duplicate kid", value: k.kid });
    kids.add(k.kid);
    const id = `${k.crv}:${k.x}:${k.y ?? ""}`;
    if (xs.has(id)) out.push({ index: i, field: "x", message: "the same key is listed twice (would count twice toward the threshold)" });
    xs.add(id);
  });
  if (threshold > keys.length) out.push({ index: undefined, field: "threshold", message: `threshold ${threshold} is more than the ${keys.length} keys listed`, value: threshold });
  return out;
}

function semanticProblems(p: Policy, doc: Document, lc: LineCounter, file: string): Located[] {
  const out: Located[] = [];
  const add = (path: Seg[], message: string, value?: unknown) => {
    const pos = locate(doc, lc, path);
    const l: Located = { file, line: pos.line, col: pos.col, path: pointer(path), message };
    if (value !== undefined) l.value = value;
    out.push(l);
  };

  if ("keys" in p.trust) {
    for (const pr of trustKeyProblems(p.trust.keys, p.trust.threshold)) {
      add(pr.index === undefined ? ["trust", pr.field] : ["trust", "keys", pr.index, pr.field], pr.message, pr.value);
    }
  }

  const registries = new Set(p.images.registries);
  const checkRepo = (path: Seg[], glob: string) => {
    const reg = glob.split("/")[0] ?? "";
    if (!glob.includes("/")) add(path, "repository glob must start with a registry host and a `/`", glob);
    else if (!registries.has(reg)) add(path, `registry ${reg} is not in images.registries`, glob);
  };
  (p.images.repositories ?? []).forEach((g, i) => checkRepo(["images", "repositories", i], g));

  const perms: [Seg[], NonNullable<Policy["modules"]["defaults"]>][] = [];
  if (p.modules.defaults) perms.push([["modules", "defaults"], p.modules.defaults]);
  for (const [name, o] of Object.entries(p.modules.overrides ?? {})) perms.push([["modules", "overrides", name], o]);
  for (const name of Object.keys(p.modules.overrides ?? {})) {
    if (!p.modules.allow.some((g) => nameGlobMatch(g, name))) add(["modules", "overrides", name], `override for module "${name}" which modules.allow does not allow`, name);
  }
  for (const [base, perm] of perms) {
    (perm.binds ?? []).forEach((b, i) => {
      for (const f of ["source", "target"] as const) {
        const v = b[f];
        if (v === undefined) continue;
        if (v.split("/").some((s) => s === ".." || s === ".")) add([...base, "binds", i, f], "`.` and `..` are not allowed in paths", v);
        const vars = v.match(/\{[^}]*\}/g) ?? [];
        for (const x of vars) if (x !== "{module}") add([...base, "binds", i, f], `unknown variable ${x} (only {module})`, v);
        if (v.replace(/\{module\}/g, "").match(/[{}]/)) add([...base, "binds", i, f], "unbalanced `{` or `}`", v);
      }
    });
    (perm.devices ?? []).forEach((d, i) => {
      if (!d.startsWith("/dev/")) add([...base, "devices", i], "device paths must be under /dev/", d);
    });
    (perm.images ?? []).forEach((g, i) => checkRepo([...base, "images", i], g));
  }

  const att = p.attestation;
  if (att) {
    if (att.trustRoot === "policy" && !("trustRoot" in p.trust)) add(["attestation", "trustRoot"], "`policy` needs `trust.trustRoot` (a trust root file to measure); inline keys have no file", att.trustRoot);
    if (att.modules && att.modules !== "manifest") {
      for (const name of Object.keys(att.modules)) {
        if (!p.modules.allow.some((g) => nameGlobMatch(g, name))) add(["attestation", "modules", name], `reference digests for module "${name}" which modules.allow does not allow`, name);
      }
    }
    if (att.mismatch?.manifest && !att.manifest) add(["attestation", "mismatch", "manifest"], "a severity for the manifest claim without `attestation.manifest` reference values", att.mismatch.manifest);
    if (att.mismatch?.modules && !att.modules) add(["attestation", "mismatch", "modules"], "a severity for module claims without `attestation.modules` reference values", att.mismatch.modules);
    for (const k of ["agent", "policy", "trustRoot"] as const) {
      if (att.mismatch?.[k] && att[k] === undefined) add(["attestation", "mismatch", k], `a severity for the ${k} claim without \`attestation.${k}\` reference values`, att.mismatch[k]);
    }
  }

  for (const action of ["publish", "subscribe"] as const) {
    const rules = p.hub?.[action] ?? [];
    const ids = new Set<string>();
    rules.forEach((r, i) => {
      if (ids.has(r.id)) add(["hub", action, i, "id"], "duplicate rule id", r.id);
      ids.add(r.id);
      if (r.modules && !r.principals.includes("module")) add(["hub", action, i, "modules"], "`modules` only applies to the module principal", r.modules);
      r.topics.forEach((t, j) => {
        const vars = t.match(/\{[^}]*\}/g) ?? [];
        for (const x of vars) {
          if (x !== "{device}" && x !== "{module}") add(["hub", action, i, "topics", j], `unknown variable ${x} (only {device}, {module})`, t);
          if (x === "{module}" && r.principals.some((pr) => pr !== "module")) add(["hub", action, i, "topics", j], "{module} used in a rule for a principal that has no module", t);
        }
        const problem = topicFilterProblem(t.replace(/\{(device|module)\}/g, "x"));
        if (problem) add(["hub", action, i, "topics", j], problem, t);
      });
    });
  }
  return out;
}
