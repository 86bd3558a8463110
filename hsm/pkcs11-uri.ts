import { EdgeTrustError, redactString } from "../common/index.js";
import type { KeyRef } from "./types.js";

/**
 * RFC 7512 `pkcs11:` URIs: parse and format. Path attributes are separated by ";", query attributes by "&" after "?".
 * Values are percent-decoded to bytes; text attributes must then be UTF-8, `id` may be any bytes (kept as hex).
 * Unknown standard attributes and repeated attributes are rejected; vendor attributes (`x-...`) are kept aside.
 */
type Pkcs11ObjectType = "public" | "private" | "cert" | "secret-key" | "data";
const OBJECT_TYPES: readonly string[] = ["public", "private", "cert", "secret-key", "data"];

interface Pkcs11Uri {
  token?: string;
  manufacturer?: string;
  serial?: string;
  model?: string;
  libraryManufacturer?: string;
  libraryDescription?: string;
  libraryVersion?: string;
  slotDescription?: string;
  slotManufacturer?: string;
  slotId?: number;
  /** CKA_LABEL */
  object?: string;
  /** CKA_ID as lowercase hex */
  id?: string;
  type?: Pkcs11ObjectType;
  pinValue?: string;
  pinSource?: string;
  moduleName?: string;
  modulePath?: string;
  /** `x-` attributes, decoded, by name. */
  vendor?: Record<string, string>;
}

type TextField = Exclude<keyof Pkcs11Uri, "slotId" | "id" | "type" | "vendor">;

const PATH_TEXT: Record<string, TextField> = {
  token: "token",
  manufacturer: "manufacturer",
  serial: "serial",
  model: "model",
  "library-manufacturer": "libraryManufacturer",
  "library-description": "libraryDescription",
  "library-version": "libraryVersion",
  "slot-description": "slotDescription",
  "slot-manufacturer": "slotManufacturer",
  object: "object",
};
const QUERY_TEXT: Record<string, TextField> = {
  "pin-value": "pinValue",
  "pin-source": "pinSource",
  "module-name": "moduleName",
  "module-path": "modulePath",
};

// RFC 7512 pk11-pchar / pk11-qchar (besides pct-encoded).
const PCHAR = /^[A-Za-z0-9\-._~:[\]@!$'()*+,=&]$/;
const QCHAR = /^[A-Za-z0-9\-._~:[\]@!$'()*+,=/?|]$/;

function bad(uri: string, why: string): EdgeTrustError {
  return new EdgeTrustError("INVALID_INPUT", `invalid pkcs11: URI ${JSON.stringify(redactString(uri))}: ${why}`, {
    hint: "write it as pkcs11:token=<label>;object=<key label>;type=private (RFC 7512), percent-encoding reserved characters",
  });
}

function decodeBytes(uri: string, value: string, allowed: RegExp): Buffer {
  const out: number[] = [];
  for (let i = 0; i < value.length; i++) {
    const c = value[i] as string;
    if (c === "%") {
      const hex = value.slice(i + 1, i + 3);
      if (!/^[0-9A-Fa-f]{2}$/.test(hex)) throw bad(uri, `bad percent-encoding at "${value.slice(i, i + 3)}"`);
      out.push(parseInt(hex, 16));
      i += 2;
    } else if (allowed.test(c)) {
      out.push(c.charCodeAt(0));
    } else {
      throw bad(uri, `character ${JSON.stringify(c)} must be percent-encoded`);
    }
  }
  return Buffer.from(out);
}

const utf8 = new TextDecoder("utf-8", { fatal: true });
function decodeText(uri: string, name: string, value: string, allowed: RegExp): string {
  try {
    return utf8.decode(decodeBytes(uri, value, allowed));
  } catch (e) {
    if (e instanceof EdgeTrustError) throw e;
    throw bad(uri, `attribute ${name} is not valid UTF-8`);
  }
}

export function isPkcs11Uri(s: string): boolean {
  return /^pkcs11:/i.test(s);
}

export function parsePkcs11Uri(uri: string): Pkcs11Uri {
  if (!isPkcs11Uri(uri)) throw bad(uri, 'it must start with "pkcs11:"');
  const rest = uri.slice("pkcs11:".length);
  const q = rest.indexOf("?");
  const pathPart = q < 0 ? rest : rest.slice(0, q);
  const queryPart = q < 0 ? "" : rest.slice(q + 1);
  const out: Pkcs11Uri = {};
  const seen = new Set<string>();

  const take = (attr: string, sep: string): [string, string] => {
    const eq = attr.indexOf("=");
    if (eq <= 0) throw bad(uri, `attribute ${JSON.stringify(attr.split("=")[0] ?? attr)} has no "name=value" form (separate attributes with "${sep}")`);
    const name = attr.slice(0, eq).toLowerCase();
    if (seen.has(name)) throw bad(uri, `attribute ${name} appears more than once`);
    seen.add(name);
    return [name, attr.slice(eq + 1)];
  };
  const vendor = (name: string, value: string, allowed: RegExp) => {
    out.vendor = { ...(out.vendor ?? {}), [name]: decodeText(uri, name, value, allowed) };
  };

  if (pathPart !== "") {
    for (const attr of pathPart.split(";")) {
      const [name, value] = take(attr, ";");
      const field = PATH_TEXT[name];
      if (field) {
        out[field] = decodeText(uri, name, value, PCHAR);
      } else if (name === "id") {
        const bytes = decodeBytes(uri, value, PCHAR);
        if (bytes.length === 0) throw bad(uri, "id is empty");
        out.id = bytes.toString("hex");
      } else if (name === "type") {
        const t = decodeText(uri, name, value, PCHAR);
        if (!OBJECT_TYPES.includes(t)) throw bad(uri, `type must be one of ${OBJECT_TYPES.join(", ")}, not ${JSON.stringify(t)}`);
        out.type = t as Pkcs11ObjectType;
      } else if (name === "slot-id") {
        const t = decodeText(uri, name, value, PCHAR);
        if (!/^[0-9]{1,20}$/.test(t)) throw bad(uri, "slot-id must be a decimal number");
        out.slotId = Number(t);
      } else if (name.startsWith("x-")) {
        vendor(name, value, PCHAR);
      } else if (QUERY_TEXT[name]) {
        throw bad(uri, `${name} belongs in the query part (after "?")`);
      } else {
        throw bad(uri, `unknown attribute ${JSON.stringify(name)}`);
      }
    }
  }
  if (queryPart !== "") {
    for (const attr of queryPart.split("&")) {
      const [name, value] = take(attr, "&");
      const field = QUERY_TEXT[name];
      if (field) out[field] = decodeText(uri, name, value, QCHAR);
      else if (name.startsWith("x-")) vendor(name, value, QCHAR);
      else if (PATH_TEXT[name] || name === "id" || name === "type" || name === "slot-id") {
        throw bad(uri, `${name} belongs in the path part (before "?")`);
      } else throw bad(uri, `unknown query attribute ${JSON.stringify(name)}`);
    }
  }
  if (out.pinValue !== undefined && out.pinSource !== undefined) throw bad(uri, "pin-value and pin-source are mutually exclusive");
  return out;
}

const UNRESERVED = /^[A-Za-z0-9\-._~]$/;
function encodeBytes(bytes: Buffer, keep: RegExp): string {
  let s = "";
  for (const b of bytes) {
    const c = String.fromCharCode(b);
    s += b < 0x80 && keep.test(c) ? c : "%" + b.toString(16).toUpperCase().padStart(2, "0");
  }
  return s;
}

/** Format a URI. The id is always fully percent-encoded (the usual form for binary CKA_IDs). */
export function formatPkcs11Uri(u: Pkcs11Uri): string {
  const path: string[] = [];
  const text = (name: string, v: string | undefined) => {
    if (v !== undefined) path.push(`${name}=${encodeBytes(Buffer.from(v, "utf8"), UNRESERVED)}`);
  };
  for (const [name, field] of Object.entries(PATH_TEXT)) text(name, u[field]);
  if (u.slotId !== undefined) path.push(`slot-id=${u.slotId}`);
  if (u.id !== undefined) path.push(`id=${encodeBytes(Buffer.from(u.id, "hex"), /^$/)}`);
  if (u.type !== undefined) path.push(`type=${u.type}`);
  const query: string[] = [];
  for (const [name, field] of Object.entries(QUERY_TEXT)) {
    const v = u[field];
    if (v !== undefined) query.push(`${name}=${encodeBytes(Buffer.from(v, "utf8"), /^[A-Za-z0-9\-._~/]$/)}`);
  }
  return "pkcs11:" + path.join(";") + (query.length ? "?" + query.join("&") : "");
}

/**
 * A key named on a command line or in config: a `pkcs11:` URI, `id:<hex>`, or a plain label. The URI's token (if
 * any) is returned so the caller can check it names the token the store opened.
 */
export function parseKeyRef(s: string): KeyRef & { token?: string } {
  if (isPkcs11Uri(s)) {
    const u = parsePkcs11Uri(s);
    if (u.type !== undefined && u.type !== "private" && u.type !== "public") {
      throw bad(s, `type=${u.type} does not name a key pair`);
    }
    if (u.object === undefined && u.id === undefined) throw bad(s, "name the key with object= or id=");
    const ref: KeyRef & { token?: string } = {};
    if (u.object !== undefined) ref.label = u.object;
    if (u.id !== undefined) ref.id = u.id;
    if (u.token !== undefined) ref.token = u.token;
    return ref;
  }
  if (s.startsWith("id:")) {
    const hex = s.slice(3).toLowerCase();
    if (!/^([0-9a-f]{2})+$/.test(hex)) {
      throw new EdgeTrustError("INVALID_INPUT", `key id ${JSON.stringify(s)} is not hex`, { hint: "write a key id as id:<even number of hex digits>" });
    }
    return { id: hex };
  }
  if (s === "") throw new EdgeTrustError("INVALID_INPUT", "empty key name", { hint: "name the key by label, id:<hex> or a pkcs11: URI" });
  return { label: s };
}
