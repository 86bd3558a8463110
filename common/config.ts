import { readFileSync, existsSync } from "node:fs";
import { Value } from "@sinclair/typebox/value";
import type { TSchema, Static, TObject } from "@sinclair/typebox";
import { stringify } from "yaml";
import { parseYamlStrict, formatLocated } from "./yaml-validate.js";
import { EdgeTrustError } from "./errors.js";
import { unixSocketPathProblem } from "./net.js";

/**
 * The one config loader. Each component describes its section as a TypeBox object whose every property has a
 * `default` and a `description`; that schema is the documentation (`edgetrust config defaults`). Precedence, lowest
 * first: schema defaults < the YAML file < environment (`EDGETRUST_<SECTION>_<KEY>`, e.g. EDGETRUST_HSM_MODULE).
 * Unknown keys and wrong types fail with file:line:col.
 */
export interface LoadConfigOptions {
  /** Path of the YAML file. Missing file is fine when `required` is false (the defaults apply). */
  file?: string;
  required?: boolean;
  env?: NodeJS.ProcessEnv;
}

export function loadConfig<S extends TObject>(schema: S, opts: LoadConfigOptions = {}): Static<S> {
  const env = opts.env ?? process.env;
  let raw: Record<string, unknown> = {};
  let parsed: ReturnType<typeof parseYamlStrict> | undefined;
  if (opts.file) {
    if (existsSync(opts.file)) {
      const text = readFileSync(opts.file, "utf8");
      parsed = parseYamlStrict(text, schema, opts.file, "INVALID_CONFIG");
      raw = (parsed.value ?? {}) as Record<string, unknown>;
    } else if (opts.required) {
      throw new EdgeTrustError("INVALID_CONFIG", `config file ${opts.file} does not exist`, {
        hint: "create it (see `edgetrust config defaults`) or omit --config to use the defaults",
      });
    }
  }
  const merged = applyEnv(schema, Value.Default(schema, structuredClone(raw)) as Record<string, unknown>, env);
  const errors = [...Value.Errors(schema, merged)];
  if (errors.length > 0) {
    throw new EdgeTrustError("INVALID_CONFIG", errors.map((e) => `config${e.path}: ${e.message}`).join("; "));
  }
  const sockets = socketPathProblems(schema, merged, env);
  if (sockets.length > 0) {
    const where = (p: SocketProblem): string => {
      if (p.fromEnv) return `config/${p.path.join("/")} (${envName(p.path)}): ${p.message}`;
      const node = parsed?.doc.getIn(p.path, true) as { range?: [number, number, number] } | undefined;
      if (!parsed || !opts.file || !node?.range) return `config/${p.path.join("/")}: ${p.message}`;
      const pos = parsed.lineCounter.linePos(node.range[0]);
      return formatLocated({ file: opts.file, line: pos.line, col: pos.col, path: "/" + p.path.join("/"), message: p.message });
    };
    throw new EdgeTrustError("INVALID_CONFIG", sockets.map(where).join("; "), { hint: "choose a shorter path" });
  }
  return merged as Static<S>;
}

interface SocketProblem {
  path: string[];
  message: string;
  fromEnv: boolean;
}

/**
 * Unix socket paths the kernel cannot take, found through the schema: a property with `unixSocket: true` is a socket
 * path; one with `unixSocketUnder: "/<module>/workload.sock"` is a directory whose sockets end so (the shortest,
 * a one-character `<...>`, is checked; the daemon checks each real one when it makes it). Checked here so a daemon
 * refuses its config before it writes anything, instead of failing later with a generic error.
 */
function socketPathProblems(schema: TSchema, value: Record<string, unknown>, env: NodeJS.ProcessEnv, path: string[] = []): SocketProblem[] {
  const out: SocketProblem[] = [];
  for (const [key, sub] of Object.entries((schema as TObject).properties ?? {})) {
    const p = [...path, key];
    const v = value[key];
    const s = sub as TSchema & { unixSocket?: boolean; unixSocketUnder?: string };
    if (s.type === "object" && (s as TObject).properties && v && typeof v === "object") {
      out.push(...socketPathProblems(s, v as Record<string, unknown>, env, p));
    } else if (typeof v === "string" && v !== "" && (s.unixSocket || s.unixSocketUnder)) {
      const shortest = v.replace(/\/+$/, "") + (s.unixSocketUnder ?? "").replace(/<[^>]*>/g, "m");
      const problem = unixSocketPathProblem(shortest);
      if (problem) {
        const message = s.unixSocketUnder ? `sockets under this directory (<dir>${s.unixSocketUnder}) cannot fit even with a one-character name: ${problem}` : problem;
        out.push({ path: p, message, fromEnv: env[envName(p)] !== undefined });
      }
    }
  }
  return out;
}

function envName(path: string[]): string {
  return "EDGETRUST_" + path.map((p) => p.replace(/([a-z0-9])([A-Z])/g, "$1_$2").toUpperCase()).join("_");
}

function applyEnv(schema: TSchema, value: Record<string, unknown>, env: NodeJS.ProcessEnv, path: string[] = []): Record<string, unknown> {
  const props = (schema as TObject).properties ?? {};
  for (const [key, sub] of Object.entries(props)) {
    const p = [...path, key];
    if ((sub as TSchema).type === "object" && (sub as TObject).properties) {
      const child = (value[key] ?? {}) as Record<string, unknown>;
      value[key] = applyEnv(sub as TSchema, child, env, p);
      continue;
    }
    const v = env[envName(p)];
    if (v === undefined) continue;
    const t = (sub as TSchema).type;
    value[key] = t === "integer" || t === "number" ? Number(v) : t === "boolean" ? v === "true" || v === "1" : v;
  }
  return value;
}

/** The documented defaults as commented YAML: what `edgetrust config defaults` prints and the golden test pins. */
export function renderDefaults(schema: TObject): string {
  const lines: string[] = [];
  const walk = (s: TObject, indent: string, path: string[]) => {
    for (const [key, sub] of Object.entries(s.properties)) {
      const desc = (sub as TSchema).description as string | undefined;
      const p = [...path, key];
      if (desc) lines.push(`${indent}# ${desc}`);
      if ((sub as TSchema).type === "object" && (sub as TObject).properties) {
        lines.push(`${indent}${key}:`);
        walk(sub as TObject, indent + "  ", p);
      } else {
        const def = (sub as TSchema).default;
        const rendered = def === undefined ? "~" : stringify(def, { lineWidth: 0 }).trimEnd();
        lines.push(`${indent}# env: ${envName(p)}`);
        lines.push(`${indent}${key}: ${rendered}`);
      }
    }
  };
  walk(schema, "", []);
  return lines.join("\n") + "\n";
}
