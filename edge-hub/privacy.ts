import { createHmac, randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { writeFileAtomic } from "../common/index.js";
import { topicMatches, type RedactRule } from "../policy/index.js";

/**
 * Privacy redaction before anything leaves the device. Rules come from the policy's `privacy.redact`: a dotted path
 * into a JSON body (`*` = any key at that level), `remove` or `hash`, optionally only for some upstream topics.
 *
 * `hash` replaces the value with `hmac-sha256:<hex>` of its JSON text under a per-device secret key. A plain hash of a
 * small-domain value (a name, a plate number, a MAC address) is reversible by hashing every candidate; a keyed HMAC is
 * not without the key, which never leaves the device. The same value hashes the same on one device (so the cloud can
 * still count or join), differently on another device.
 */
export class Redactor {
  constructor(private readonly rules: RedactRule[], private readonly secret: Buffer) {}

  /** Rules that apply to an upstream topic. */
  applicable(topic: string): RedactRule[] {
    return this.rules.filter((r) => !r.topics || r.topics.some((f) => topicMatches(f, topic)));
  }

  /**
   * The body to send upstream. `undefined` when rules apply but the body is not a JSON object/array: the hub cannot
   * tell whether it carries the field, so it does not send it (fail closed).
   */
  redact(topic: string, body: Buffer): Buffer | undefined {
    const rules = this.applicable(topic);
    if (rules.length === 0) return body;
    let doc: unknown;
    try {
      doc = JSON.parse(body.toString("utf8"));
    } catch {
      return undefined;
    }
    if (typeof doc !== "object" || doc === null) return undefined;
    for (const r of rules) this.apply(doc, r.path.split("."), r.action);
    return Buffer.from(JSON.stringify(doc));
  }

  private apply(node: unknown, path: string[], action: RedactRule["action"]): void {
    if (typeof node !== "object" || node === null) return;
    const [head, ...rest] = path;
    if (head === undefined) return;
    const obj = node as Record<string, unknown>;
    const keys = head === "*" ? Object.keys(obj) : Object.prototype.hasOwnProperty.call(obj, head) ? [head] : [];
    // Removing array elements shifts the ones after them: remove from the highest index down so none is skipped.
    if (Array.isArray(obj) && action === "remove" && rest.length === 0) keys.sort((a, b) => Number(b) - Number(a));
    for (const k of keys) {
      if (rest.length > 0) {
        this.apply(obj[k], rest, action);
      } else if (action === "remove") {
        if (Array.isArray(obj)) obj.splice(Number(k), 1);
        else delete obj[k];
      } else {
        obj[k] = "hmac-sha256:" + createHmac("sha256", this.secret).update(JSON.stringify(obj[k]) ?? "null").digest("hex");
      }
    }
  }
}

/** Read the device's redaction secret, creating a random 32-byte one (mode 0600) the first time. */
export function loadOrCreateSecret(file: string): Buffer {
  if (existsSync(file)) {
    const s = readFileSync(file);
    if (s.length < 32) throw new Error(`privacy secret ${file} is shorter than 32 bytes`);
    return s;
  }
  const s = randomBytes(32);
  writeFileAtomic(file, s, 0o600);
  return s;
}
