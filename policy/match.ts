/** Matching helpers shared by the decisions: globs over names/paths and MQTT topic filters. */

function escapeRe(s: string): string {
  return s.replace(/[.+?^${}()|[\]\\]/g, "\\$&");
}

/**
 * Compiled globs, per kind and glob text. Policy globs are few and fixed, but manifest targets reach `nameGlobMatch`
 * before anything is trusted, so the cache is bounded: when full it starts over.
 */
const MAX_CACHED = 1024;
const nameRes = new Map<string, RegExp>();
const pathRes = new Map<string, RegExp>();

function cached(cache: Map<string, RegExp>, glob: string, build: () => string): RegExp {
  let re = cache.get(glob);
  if (re === undefined) {
    if (cache.size >= MAX_CACHED) cache.clear();
    re = new RegExp(build());
    cache.set(glob, re);
  }
  return re;
}

/**
 * Name glob (module names, device targets): `*` matches any run of characters except `/`, and never runs over `..`.
 * The schemas already keep both out of names; this keeps a glob like `sensor-*` from ever admitting a path.
 */
export function nameGlobMatch(glob: string, name: string): boolean {
  return cached(nameRes, glob, () => "^" + glob.split("*").map(escapeRe).join("(?:(?!\\.\\.)[^/])*") + "$").test(name);
}

/** Path / repository glob: `*` matches within one `/` segment; a trailing `/**` matches any depth below. */
export function pathGlobMatch(glob: string, path: string): boolean {
  const re = cached(pathRes, glob, () => {
    const deep = glob.endsWith("/**");
    const body = deep ? glob.slice(0, -3) : glob;
    return "^" + body.split("*").map(escapeRe).join("[^/]*") + (deep ? "(/.+)?" : "") + "$";
  });
  return re.test(path);
}

/**
 * Check an absolute path: undefined when it escapes (`..`), is relative or has empty/dot segments; otherwise the path
 * itself (a path that passes has nothing to normalise). One scan, no allocation: it runs for every bind and device.
 */
export function normalAbsPath(p: string): string | undefined {
  if (p === "/") return "/";
  if (p.charCodeAt(0) !== 47) return undefined;
  let start = 1;
  for (let i = 1; i <= p.length; i++) {
    if (i < p.length && p.charCodeAt(i) !== 47) continue;
    const len = i - start;
    if (len === 0) return undefined;
    if (len <= 2 && p.charCodeAt(start) === 46 && (len === 1 || p.charCodeAt(start + 1) === 46)) return undefined;
    start = i + 1;
  }
  return p;
}

/** Does the MQTT filter `pattern` (with + and #) match the concrete topic `topic`? */
export function topicMatches(pattern: string, topic: string): boolean {
  const p = pattern.split("/");
  const t = topic.split("/");
  if (topic.startsWith("$") && (p[0] === "+" || p[0] === "#")) return false;
  for (let i = 0; i < p.length; i++) {
    const pl = p[i];
    if (pl === "#") return true;
    if (i >= t.length) return false;
    if (pl === "+") continue;
    if (pl !== t[i]) return false;
  }
  return p.length === t.length;
}

/** Is every topic the subscription filter `filter` can match also matched by `pattern`? */
export function filterCovered(pattern: string, filter: string): boolean {
  const p = pattern.split("/");
  const f = filter.split("/");
  if (filter.startsWith("$") && (p[0] === "+" || p[0] === "#")) return false;
  for (let i = 0; i < p.length; i++) {
    const pl = p[i];
    if (pl === "#") return true;
    if (i >= f.length) return false;
    const fl = f[i];
    if (fl === "#") return false;
    if (pl === "+") continue;
    if (fl === "+" || pl !== fl) return false;
  }
  return p.length === f.length;
}

/** Problems with an MQTT filter (wildcards must be whole levels; `#` only last). Empty when fine. */
export function topicFilterProblem(filter: string): string | undefined {
  if (filter.length === 0) return "empty topic";
  if (filter.includes("\u0000")) return "NUL in topic";
  const levels = filter.split("/");
  for (let i = 0; i < levels.length; i++) {
    const l = levels[i] ?? "";
    if (l.includes("#") && (l !== "#" || i !== levels.length - 1)) return "`#` must be a whole level and the last one";
    if (l.includes("+") && l !== "+") return "`+` must be a whole level";
  }
  return undefined;
}
