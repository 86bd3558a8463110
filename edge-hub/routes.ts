import { EdgeTrustError } from "../common/index.js";

/**
 * Routes, in the IoT Edge syntax:
 *   FROM <source> [WHERE <condition>] INTO <sink>
 * source: /messages/*                         every message (modules and leaf devices)
 *         /messages/modules/*                 every module message
 *         /messages/modules/<m>/*             anything module <m> sends
 *         /messages/modules/<m>/outputs/*     any output of <m>
 *         /messages/modules/<m>/outputs/<o>   output <o> of <m>
 * sink:   $upstream | BrokeredEndpoint("/modules/<m>/inputs/<i>")
 * condition: comparisons (= != <> < <= > >=) of properties and literals ('text', 12.5, true, false), AND, OR, NOT,
 *   parentheses, IS_DEFINED(<property>), <property> IS NULL, <property> IS NOT NULL. Properties: application
 *   properties by name, `$connectionDeviceId`, `$connectionModuleId`, `$outputName`, `$contentType`,
 *   `$contentEncoding`, `$messageId`, `$correlationId`, `$userId`, `$to`, `$body.<path>` (JSON bodies).
 *   Message properties are never null, only absent: `IS NULL` is true when the property is not defined (so
 *   `$connectionModuleId IS NULL` selects leaf-device messages, as `NOT IS_DEFINED($connectionModuleId)` does).
 * A comparison with an undefined side is false (as in IoT Hub).
 */

export type Sink = { kind: "upstream" } | { kind: "module"; module: string; input: string };
export interface Source { module?: string; output?: string; modulesOnly: boolean }

export type Expr =
  | { op: "and" | "or"; left: Expr; right: Expr }
  | { op: "not"; expr: Expr }
  | { op: "defined"; prop: string }
  | { op: "cmp"; cmp: "=" | "!=" | "<" | "<=" | ">" | ">="; left: Operand; right: Operand };
type Operand = { prop: string } | { value: string | number | boolean };

export interface Route {
  name: string;
  text: string;
  source: Source;
  where?: Expr;
  sink: Sink;
}

/** What a route is evaluated against. */
interface RoutableMessage {
  deviceId: string;
  moduleId?: string;
  output?: string;
  properties: Record<string, string>;
  contentType?: string;
  /** System properties of the message (`$.`-keys of the topic's property bag, without the prefix: mid, cid, ce, uid, to). */
  system?: Record<string, string>;
  body: Buffer;
}

type Tok = { t: "word" | "str" | "num" | "op" | "punct" | "path"; v: string; pos: number };

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

function tokenize(s: string, fail: (pos: number, msg: string) => never): Tok[] {
  const out: Tok[] = [];
  let i = 0;
  while (i < s.length) {
    const c = s[i] ?? "";
    if (/\s/.test(c)) { i++; continue; }
    if (c === "'" || c === '"') {
      let j = i + 1;
      let v = "";
      while (j < s.length && s[j] !== c) {
        if (s[j] === "\\" && j + 1 < s.length) j++;
        v += s[j];
        j++;
      }
      if (j >= s.length) fail(i, "unterminated string");
      out.push({ t: "str", v, pos: i });
      i = j + 1;
      continue;
    }
    if (c === "/") {
      const m = /^\/[A-Za-z0-9._*$/-]*/.exec(s.slice(i));
      out.push({ t: "path", v: m?.[0] ?? "/", pos: i });
      i += (m?.[0] ?? "/").length;
      continue;
    }
    const num = /^-?[0-9]+(\.[0-9]+)?/.exec(s.slice(i));
    if (num && (c === "-" || /[0-9]/.test(c))) {
      out.push({ t: "num", v: num[0], pos: i });
      i += num[0].length;
      continue;
    }
    const op = /^(<=|>=|<>|!=|=|<|>)/.exec(s.slice(i));
    if (op) {
      out.push({ t: "op", v: op[0] === "<>" ? "!=" : op[0], pos: i });
      i += op[0].length;
      continue;
    }
    if (c === "(" || c === ")") {
      out.push({ t: "punct", v: c, pos: i });
      i++;
      continue;
    }
    const w = /^[$A-Za-z_][$A-Za-z0-9_.-]*/.exec(s.slice(i));
    if (w) {
      out.push({ t: "word", v: w[0], pos: i });
      i += w[0].length;
      continue;
    }
    fail(i, `unexpected character ${JSON.stringify(c)}`);
  }
  return out;
}

/** Parse one route. Errors say which route, at which column, what was expected. */
export function parseRoute(name: string, text: string): Route {
  const fail = (pos: number, msg: string): never => {
    throw new EdgeTrustError("HUB_ROUTE_INVALID", `route ${name}: column ${pos + 1}: ${msg}`, {
      hint: 'syntax: FROM /messages/modules/<m>/outputs/<o> [WHERE <condition>] INTO $upstream | BrokeredEndpoint("/modules/<m>/inputs/<i>")',
      details: { route: name, column: pos + 1, text },
    });
  };
  if (text.length > 4096) fail(0, "route longer than 4096 characters");
  const toks = tokenize(text, fail);
  let k = 0;
  const peek = (): Tok | undefined => toks[k];
  const describe = (t: Tok | undefined) => (t ? JSON.stringify(t.v) : "the end");
  const kw = (t: Tok | undefined, w: string) => t?.t === "word" && t.v.toUpperCase() === w;
  const expectKw = (w: string): void => {
    const t = peek();
    if (!kw(t, w)) fail(t?.pos ?? text.length, `expected ${w}, found ${describe(t)}`);
    k++;
  };

  expectKw("FROM");
  const srcTok = peek();
  if (srcTok?.t !== "path") fail(srcTok?.pos ?? text.length, `expected a source like /messages/*, found ${describe(srcTok)}`);
  k++;
  const source = parseSource(srcTok?.v ?? "", (m) => fail(srcTok?.pos ?? 0, m));

  let where: Expr | undefined;
  if (kw(peek(), "WHERE")) {
    k++;
    const parseOr = (): Expr => {
      let left = parseAnd();
      while (kw(peek(), "OR")) { k++; left = { op: "or", left, right: parseAnd() }; }
      return left;
    };
    const parseAnd = (): Expr => {
      let left = parseNot();
      while (kw(peek(), "AND")) { k++; left = { op: "and", left, right: parseNot() }; }
      return left;
    };
    const parseNot = (): Expr => {
      if (kw(peek(), "NOT")) { k++; return { op: "not", expr: parseNot() }; }
      return parsePrimary();
    };
    const parseOperand = (): Operand => {
      const t = peek();
      if (!t) return fail(text.length, "expected a property or a literal, found the end");
      k++;
      if (t.t === "str") return { value: t.v };
      if (t.t === "num") return { value: Number(t.v) };
      if (t.t === "word") {
        const up = t.v.toUpperCase();
        if (up === "TRUE" || up === "FALSE") return { value: up === "TRUE" };
        if (["AND", "OR", "NOT", "INTO", "WHERE", "FROM"].includes(up)) fail(t.pos, `expected a property or a literal, found ${t.v}`);
        return { prop: t.v };
      }
      return fail(t.pos, `expected a property or a literal, found ${describe(t)}`);
    };
    const parsePrimary = (): Expr => {
      const t = peek();
      if (t?.t === "punct" && t.v === "(") {
        k++;
        const e = parseOr();
        const c = peek();
        if (!(c?.t === "punct" && c.v === ")")) fail(c?.pos ?? text.length, `expected ")", found ${describe(c)}`);
        k++;
        return e;
      }
      if (kw(t, "IS_DEFINED")) {
        k++;
        const o = peek();
        if (!(o?.t === "punct" && o.v === "(")) fail(o?.pos ?? text.length, `expected "(" after IS_DEFINED, found ${describe(o)}`);
        k++;
        const p = peek();
        if (p?.t !== "word") fail(p?.pos ?? text.length, `expected a property name, found ${describe(p)}`);
        k++;
        const c = peek();
        if (!(c?.t === "punct" && c.v === ")")) fail(c?.pos ?? text.length, `expected ")", found ${describe(c)}`);
        k++;
        return { op: "defined", prop: p?.v ?? "" };
      }
      const left = parseOperand();
      if (kw(peek(), "IS") && "prop" in left) {
        k++;
        const negated = kw(peek(), "NOT");
        if (negated) k++;
        const n = peek();
        if (!kw(n, "NULL")) fail(n?.pos ?? text.length, `expected NULL${negated ? "" : " or NOT NULL"} after IS, found ${describe(n)}`);
        k++;
        const defined: Expr = { op: "defined", prop: left.prop };
        return negated ? defined : { op: "not", expr: defined };
      }
      const o = peek();
      if (o?.t !== "op") fail(o?.pos ?? text.length, `expected a comparison operator (= != < <= > >=), found ${describe(o)}`);
      k++;
      const right = parseOperand();
      return { op: "cmp", cmp: o?.v as "=" | "!=" | "<" | "<=" | ">" | ">=", left, right };
    };
    where = parseOr();
  }

  expectKw("INTO");
  const s = peek();
  let sink: Sink;
  if (s?.t === "word" && s.v === "$upstream") {
    k++;
    sink = { kind: "upstream" };
  } else if (kw(s, "BROKEREDENDPOINT")) {
    k++;
    const o = peek();
    if (!(o?.t === "punct" && o.v === "(")) fail(o?.pos ?? text.length, `expected "(" after BrokeredEndpoint, found ${describe(o)}`);
    k++;
    const p = peek();
    if (p?.t !== "str") fail(p?.pos ?? text.length, `expected a quoted "/modules/<m>/inputs/<i>", found ${describe(p)}`);
    k++;
    const m = /^\/modules\/([^/]+)\/inputs\/([^/]+)$/.exec(p?.v ?? "");
    if (!m || !NAME.test(m[1] ?? "") || !NAME.test(m[2] ?? "")) fail(p?.pos ?? 0, `BrokeredEndpoint must be "/modules/<module>/inputs/<input>", got ${describe(p)}`);
    const c = peek();
    if (!(c?.t === "punct" && c.v === ")")) fail(c?.pos ?? text.length, `expected ")", found ${describe(c)}`);
    k++;
    sink = { kind: "module", module: m?.[1] ?? "", input: m?.[2] ?? "" };
  } else {
    return fail(s?.pos ?? text.length, `expected $upstream or BrokeredEndpoint("/modules/<m>/inputs/<i>"), found ${describe(s)}`);
  }
  const rest = peek();
  if (rest) fail(rest.pos, `unexpected ${describe(rest)} after the sink`);
  const route: Route = { name, text, source, sink };
  if (where) route.where = where;
  return route;
}

function parseSource(path: string, fail: (m: string) => never): Source {
  const seg = path.split("/").slice(1);
  if (seg[0] !== "messages") fail(`source must start with /messages, got ${JSON.stringify(path)}`);
  if (seg.length === 2 && seg[1] === "*") return { modulesOnly: false };
  if (seg[1] !== "modules") fail(`expected /messages/* or /messages/modules/..., got ${JSON.stringify(path)}`);
  if (seg.length === 3 && seg[2] === "*") return { modulesOnly: true };
  const m = seg[2] ?? "";
  if (!NAME.test(m)) fail(`module name ${JSON.stringify(m)} is not valid`);
  if (seg.length === 4 && seg[3] === "*") return { modulesOnly: true, module: m };
  if (seg.length === 5 && seg[3] === "outputs") {
    const o = seg[4] ?? "";
    if (o === "*") return { modulesOnly: true, module: m, output: "*" };
    if (!NAME.test(o)) fail(`output name ${JSON.stringify(o)} is not valid`);
    return { modulesOnly: true, module: m, output: o };
  }
  return fail(`source ${JSON.stringify(path)} is not one of /messages/*, /messages/modules/*, /messages/modules/<m>/*, /messages/modules/<m>/outputs/<o|*>`);
}

/** Parse the manifest's `routes` map; every bad route is reported, not just the first. */
export function parseRoutes(routes: Record<string, string>): Route[] {
  const out: Route[] = [];
  const errors: string[] = [];
  for (const [name, text] of Object.entries(routes)) {
    try {
      out.push(parseRoute(name, text));
    } catch (e) {
      errors.push(e instanceof Error ? e.message : String(e));
    }
  }
  if (errors.length > 0) throw new EdgeTrustError("HUB_ROUTE_INVALID", errors.join("\n"), { details: { errors } });
  return out;
}

function sourceMatches(s: Source, m: RoutableMessage): boolean {
  if (s.modulesOnly && m.moduleId === undefined) return false;
  if (s.module !== undefined && s.module !== m.moduleId) return false;
  if (s.output === "*") return m.output !== undefined;
  if (s.output !== undefined) return s.output === m.output;
  return true;
}

function lookup(prop: string, m: RoutableMessage, body: () => unknown): string | number | boolean | undefined {
  switch (prop) {
    case "$connectionDeviceId": return m.deviceId;
    case "$connectionModuleId": return m.moduleId;
    case "$outputName": return m.output;
    case "$contentType": return m.contentType;
    case "$contentEncoding": return m.system?.ce;
    case "$messageId": return m.system?.mid;
    case "$correlationId": return m.system?.cid;
    case "$userId": return m.system?.uid;
    case "$to": return m.system?.to;
  }
  if (prop.startsWith("$body.")) {
    let v: unknown = body();
    for (const p of prop.slice(6).split(".")) {
      if (typeof v !== "object" || v === null || !Object.prototype.hasOwnProperty.call(v, p)) return undefined;
      v = (v as Record<string, unknown>)[p];
    }
    return typeof v === "string" || typeof v === "number" || typeof v === "boolean" ? v : undefined;
  }
  return Object.prototype.hasOwnProperty.call(m.properties, prop) ? m.properties[prop] : undefined;
}

function evaluate(e: Expr, m: RoutableMessage, body: () => unknown): boolean {
  switch (e.op) {
    case "and": return evaluate(e.left, m, body) && evaluate(e.right, m, body);
    case "or": return evaluate(e.left, m, body) || evaluate(e.right, m, body);
    case "not": return !evaluate(e.expr, m, body);
    case "defined": return lookup(e.prop, m, body) !== undefined;
    case "cmp": {
      const val = (o: Operand) => ("prop" in o ? lookup(o.prop, m, body) : o.value);
      let a = val(e.left);
      let b = val(e.right);
      if (a === undefined || b === undefined) return false;
      if (typeof a === "number" && typeof b === "string") b = Number(b);
      if (typeof b === "number" && typeof a === "string") a = Number(a);
      if (typeof a === "boolean" && typeof b === "string") b = b === "true";
      if (typeof b === "boolean" && typeof a === "string") a = a === "true";
      if (typeof a === "number" && Number.isNaN(a)) return false;
      if (typeof b === "number" && Number.isNaN(b)) return false;
      switch (e.cmp) {
        case "=": return a === b;
        case "!=": return a !== b;
        case "<": return a < b;
        case "<=": return a <= b;
        case ">": return a > b;
        case ">=": return a >= b;
      }
    }
  }
  return false;
}

/** The routes a message takes (each route at most once). */
export function matchRoutes(routes: Route[], m: RoutableMessage): Route[] {
  let parsed: { v: unknown } | undefined;
  const body = () => {
    if (!parsed) {
      try {
        parsed = { v: JSON.parse(m.body.toString("utf8")) as unknown };
      } catch {
        parsed = { v: undefined };
      }
    }
    return parsed.v;
  };
  return routes.filter((r) => sourceMatches(r.source, m) && (!r.where || evaluate(r.where, m, body)));
}
