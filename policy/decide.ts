import type { ModuleOptions, ModulePermissions, Policy } from "./schema.js";
import { PinnedImagePattern } from "./schema.js";
import { filterCovered, nameGlobMatch, normalAbsPath, pathGlobMatch, topicFilterProblem, topicMatches } from "./match.js";

/**
 * Decisions as data. Every decision lists the rules that allowed or denied, each with a reason, so `policy explain`,
 * `policy test`, the agent's reports and the hub's logs can show why. A decision is allowed only when at least one rule
 * allowed it and none denied it: what no rule allows is refused.
 */
export interface RuleHit {
  /** Where the rule lives in the policy (e.g. `modules.overrides.sensor.binds[0]`) or `default-deny`. */
  rule: string;
  effect: "allow" | "deny";
  reason: string;
}

export interface Decision {
  kind: "module" | "image" | "topic";
  /** What was decided on, e.g. `module sensor`, `publish devices/d1/messages/events/`. */
  subject: string;
  /** The policy's answer. */
  allowed: boolean;
  /** The policy's mode: in `audit`, a denial is reported but the caller proceeds (see `permitted`). */
  mode: Policy["mode"];
  /** What the caller must do: allowed, or the policy is in audit mode. */
  permitted: boolean;
  rules: RuleHit[];
}

function decision(policy: Policy, kind: Decision["kind"], subject: string, rules: RuleHit[]): Decision {
  const allowed = rules.length > 0 && rules.every((r) => r.effect === "allow");
  if (rules.length === 0) rules.push({ rule: "default-deny", effect: "deny", reason: "no rule allows it" });
  return { kind, subject, allowed, mode: policy.mode, permitted: allowed || policy.mode === "audit", rules };
}

/** The permission a module gets for one key, and the policy location it came from. */
function perm<K extends keyof ModulePermissions>(policy: Policy, module: string, key: K): { value: ModulePermissions[K]; from: string } {
  const o = policy.modules.overrides?.[module];
  if (o && o[key] !== undefined) return { value: o[key], from: `modules.overrides.${module}.${String(key)}` };
  const d = policy.modules.defaults;
  if (d && d[key] !== undefined) return { value: d[key], from: `modules.defaults.${String(key)}` };
  return { value: undefined, from: `built-in default for ${String(key)}` };
}

/** How module `name` authenticates to the hub: `sas` only when the policy grants it explicitly. */
export function moduleAuth(policy: Policy, name: string): "x509" | "sas" {
  return perm(policy, name, "auth").value === "sas" ? "sas" : "x509";
}

/** `{module}` in a policy path glob becomes the module's own name. */
function forModule(glob: string, name: string): string {
  return glob.includes("{module}") ? glob.replace(/\{module\}/g, name) : glob;
}

function isRoot(user: string): boolean {
  return user.split(":")[0] === "0";
}

function userAllowed(pattern: string, user: string): boolean {
  const [pu, pg] = pattern.split(":");
  const [u, g] = user.split(":");
  const part = (p: string | undefined, v: string | undefined, optional: boolean): boolean => {
    if (p === undefined) return optional ? v === undefined : false;
    if (v === undefined) return false;
    if (p === "*") return v !== "0";
    return p === v;
  };
  if (!part(pu, u, false)) return false;
  if (pg === undefined) return g === undefined;
  return part(pg, g, false);
}

/** May module `name` run with these container options? Every requested option is checked; defaults are the strictest. */
export function decideModuleOptions(policy: Policy, name: string, options: ModuleOptions = {}): Decision {
  const rules: RuleHit[] = [];
  const allowIdx = policy.modules.allow.findIndex((g) => nameGlobMatch(g, name));
  if (allowIdx >= 0) rules.push({ rule: `modules.allow[${allowIdx}]`, effect: "allow", reason: `module name "${name}" matches ${JSON.stringify(policy.modules.allow[allowIdx])}` });
  else rules.push({ rule: "modules.allow", effect: "deny", reason: `module name "${name}" matches no pattern in modules.allow` });

  const priv = perm(policy, name, "privileged");
  if (options.privileged) {
    rules.push(priv.value === true
      ? { rule: priv.from, effect: "allow", reason: "privileged allowed" }
      : { rule: priv.from, effect: "deny", reason: "privileged is not allowed" });
  }

  const caps = perm(policy, name, "capabilities");
  for (const c of options.capabilities ?? []) {
    rules.push((caps.value ?? []).includes(c)
      ? { rule: caps.from, effect: "allow", reason: `capability ${c} allowed` }
      : { rule: caps.from, effect: "deny", reason: `capability ${c} is not in the allow-list` });
  }

  const binds = perm(policy, name, "binds");
  for (const b of options.binds ?? []) {
    const parts = b.split(":");
    const src = normalAbsPath(parts[0] ?? "");
    const dst = normalAbsPath(parts[1] ?? "");
    const mode = parts[2] ?? "rw";
    if (!src || !dst) {
      rules.push({ rule: "modules.binds", effect: "deny", reason: `bind ${JSON.stringify(b)} has a relative, empty, "." or ".." path segment` });
      continue;
    }
    const idx = (binds.value ?? []).findIndex((r) => {
      const s = forModule(r.source, name);
      const t = r.target === undefined ? undefined : forModule(r.target, name);
      return pathGlobMatch(s, src) && (t === undefined || pathGlobMatch(t, dst)) && (r.readOnly === false || mode === "ro");
    });
    if (idx >= 0) rules.push({ rule: `${binds.from}[${idx}]`, effect: "allow", reason: `bind ${src} -> ${dst} (${mode}) allowed` });
    else {
      const srcOnly = (binds.value ?? []).some((r) => pathGlobMatch(forModule(r.source, name), src));
      rules.push({
        rule: binds.from,
        effect: "deny",
        reason: srcOnly ? `bind ${src} -> ${dst} (${mode}): allowed only read-only or to another target` : `bind source ${src} is outside the allow-list`,
      });
    }
  }

  const devices = perm(policy, name, "devices");
  for (const d of options.devices ?? []) {
    const host = normalAbsPath(d.split(":")[0] ?? "");
    const idx = host === undefined ? -1 : (devices.value ?? []).findIndex((g) => pathGlobMatch(forModule(g, name), host));
    rules.push(idx >= 0
      ? { rule: `${devices.from}[${idx}]`, effect: "allow", reason: `device ${host} allowed` }
      : { rule: devices.from, effect: "deny", reason: `device ${d} is not in the allow-list` });
  }

  const net = perm(policy, name, "network");
  const wantNet = options.network ?? "none";
  const nets = net.value ?? ["none"];
  rules.push(nets.includes(wantNet)
    ? { rule: net.from, effect: "allow", reason: `network ${wantNet} allowed` }
    : { rule: net.from, effect: "deny", reason: `network ${wantNet} is not allowed (allowed: ${nets.join(", ")})` });

  const users = perm(policy, name, "users");
  if (options.user === undefined) {
    rules.push({ rule: users.from, effect: "deny", reason: "user is not set (the image's default user may be root)" });
  } else {
    const u = options.user;
    const idx = (users.value ?? []).findIndex((pat) => userAllowed(pat, u));
    rules.push(idx >= 0
      ? { rule: `${users.from}[${idx}]`, effect: "allow", reason: `user ${u} allowed` }
      : { rule: users.from, effect: "deny", reason: isRoot(u) ? `user ${u} is root; root must be listed literally` : `user ${u} is not in the allow-list` });
  }

  const ro = perm(policy, name, "readOnlyRootfs");
  const roMode = ro.value ?? "required";
  // Omitted means read-only: the agent mounts the root filesystem read-only unless a manifest asks otherwise.
  const readOnly = options.readOnlyRootfs ?? true;
  if (roMode === "required" && !readOnly) rules.push({ rule: ro.from, effect: "deny", reason: "read-only root filesystem is required" });
  else rules.push({ rule: ro.from, effect: "allow", reason: readOnly ? "read-only root filesystem" : "writable root filesystem allowed" });

  return decision(policy, "module", `module ${name}`, rules);
}

interface ParsedImage {
  registry: string;
  repository: string;
  digest: string;
}

const PINNED_IMAGE_RE = new RegExp(PinnedImagePattern);

/** Split `registry/repo@sha256:<hex>`; undefined unless the reference is pinned by digest with a registry host. */
export function parsePinnedImage(image: string): ParsedImage | undefined {
  if (!PINNED_IMAGE_RE.test(image)) return undefined;
  const at = image.indexOf("@");
  const name = image.slice(0, at);
  const slash = name.indexOf("/");
  return { registry: name.slice(0, slash), repository: name, digest: image.slice(at + 1) };
}

/** May this image run (optionally: as module `module`)? Pinned by digest, from an allowed registry and repository. */
export function decideImage(policy: Policy, image: string, module?: string): Decision {
  const rules: RuleHit[] = [];
  const p = parsePinnedImage(image);
  if (!p) {
    rules.push({ rule: "images.digest-pinning", effect: "deny", reason: `image ${JSON.stringify(image.slice(0, 200))} is not registry/name@sha256:<64 hex> (tags are never accepted)` });
    return decision(policy, "image", `image ${image.slice(0, 200)}`, rules);
  }
  rules.push({ rule: "images.digest-pinning", effect: "allow", reason: `pinned by ${p.digest.slice(0, 19)}…` });
  const ri = policy.images.registries.indexOf(p.registry);
  rules.push(ri >= 0
    ? { rule: `images.registries[${ri}]`, effect: "allow", reason: `registry ${p.registry} allowed` }
    : { rule: "images.registries", effect: "deny", reason: `registry ${p.registry} is not allowed` });
  if (policy.images.repositories) {
    const i = policy.images.repositories.findIndex((g) => pathGlobMatch(g, p.repository));
    rules.push(i >= 0
      ? { rule: `images.repositories[${i}]`, effect: "allow", reason: `repository ${p.repository} allowed` }
      : { rule: "images.repositories", effect: "deny", reason: `repository ${p.repository} is not allowed` });
  }
  if (module !== undefined) {
    const own = perm(policy, module, "images");
    if (own.value) {
      const i = own.value.findIndex((g) => pathGlobMatch(g, p.repository));
      rules.push(i >= 0
        ? { rule: `${own.from}[${i}]`, effect: "allow", reason: `repository ${p.repository} allowed for module ${module}` }
        : { rule: own.from, effect: "deny", reason: `repository ${p.repository} is not allowed for module ${module}` });
    }
  }
  return decision(policy, "image", `image ${image}`, rules);
}

/** Who is asking, from its verified certificate. */
interface HubIdentity {
  principal: "module" | "device" | "leaf";
  device: string;
  module?: string;
}

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** May `identity` publish to / subscribe to `topic`? `{device}` and `{module}` in rules become the identity's own ids. */
export function decideTopic(policy: Policy, identity: HubIdentity, action: "publish" | "subscribe", topic: string): Decision {
  const subject = `${action} ${topic.slice(0, 512)}`;
  const rules: RuleHit[] = [];
  const fail = (reason: string) => {
    rules.push({ rule: "hub", effect: "deny", reason });
    return decision(policy, "topic", subject, rules);
  };
  if (!ID_RE.test(identity.device) || (identity.module !== undefined && !ID_RE.test(identity.module))) return fail("identity has characters not allowed in ids");
  if (identity.principal === "module" && identity.module === undefined) return fail("module principal without a module id");
  if (topic.length > 1024) return fail("topic longer than 1024 characters");
  const problem = topicFilterProblem(topic);
  if (problem) return fail(problem);
  if (action === "publish" && /[+#]/.test(topic)) return fail("wildcards are not allowed in a published topic");
  const list = policy.hub?.[action] ?? [];
  for (const [i, r] of list.entries()) {
    if (!r.principals.includes(identity.principal)) continue;
    if (r.modules && !(identity.module !== undefined && r.modules.some((g) => nameGlobMatch(g, identity.module ?? "")))) continue;
    for (const [j, t] of r.topics.entries()) {
      if (t.includes("{module}") && identity.module === undefined) continue;
      const pat = t.replace(/\{device\}/g, identity.device).replace(/\{module\}/g, identity.module ?? "");
      const ok = action === "publish" ? topicMatches(pat, topic) : filterCovered(pat, topic);
      if (ok) {
        rules.push({ rule: `hub.${action}[${i}] (${r.id}) topics[${j}]`, effect: "allow", reason: `${identity.principal} ${identity.module ?? identity.device} may ${action} ${JSON.stringify(t)}` });
        return decision(policy, "topic", subject, rules);
      }
    }
  }
  rules.push({ rule: `hub.${action}`, effect: "deny", reason: `no hub.${action} rule for ${identity.principal} matches` });
  return decision(policy, "topic", subject, rules);
}
