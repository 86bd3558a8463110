/**
 * The identifier and length octets of DER (X.690 §8.1.2–8.1.3, §10.1) — the only ASN.1 this project reads or writes
 * by hand. The structures themselves (which element is where) are decoded by the callers from their ASN.1
 * definitions; every value of a template is made by the @peculiar packages.
 *
 * The reader is strict where DER is strict (definite lengths in their shortest form, nothing after the outermost
 * element) and refuses what it does not need (high tag numbers, constructed strings): it answers `undefined` and the
 * caller takes its general decoder instead. It is a fast path for well-formed input, never a second opinion on what
 * is acceptable.
 */

/** One element: its identifier octet and where its contents are in the buffer the reader was given. */
export interface DerElement {
  tag: number;
  /** First byte of the identifier octet. */
  start: number;
  /** First byte of the contents. */
  contentStart: number;
  /** One past the last byte of the contents (and of the element). */
  end: number;
}

/**
 * The element at `offset`, or undefined when it is not DER this reader accepts: a high tag number (low five bits all
 * set, §8.1.2.4), the indefinite form (0x80), a long form that is not the shortest (a leading 0x00 length octet, or a
 * length below 128 written long, §10.1), more than four length octets, or contents running past `limit`.
 */
export function readElement(buf: Uint8Array, offset: number, limit = buf.length): DerElement | undefined {
  if (offset + 2 > limit) return undefined;
  const tag = buf[offset] as number;
  if ((tag & 0x1f) === 0x1f) return undefined;
  const first = buf[offset + 1] as number;
  let length: number;
  let contentStart: number;
  if (first < 0x80) {
    length = first;
    contentStart = offset + 2;
  } else {
    const n = first & 0x7f;
    if (n === 0 || n > 4 || offset + 2 + n > limit || buf[offset + 2] === 0) return undefined;
    length = 0;
    for (let i = 0; i < n; i++) length = length * 256 + (buf[offset + 2 + i] as number);
    if (length < 0x80) return undefined;
    contentStart = offset + 2 + n;
  }
  const end = contentStart + length;
  if (end > limit) return undefined;
  return { tag, start: offset, contentStart, end };
}

/** The elements inside a constructed element's contents, in order; undefined if any of them is not accepted DER. */
export function readChildren(buf: Uint8Array, parent: DerElement): DerElement[] | undefined {
  const out: DerElement[] = [];
  for (let at = parent.contentStart; at < parent.end;) {
    const e = readElement(buf, at, parent.end);
    if (!e) return undefined;
    out.push(e);
    at = e.end;
  }
  return out;
}

/** The bytes of an element (identifier, length and contents), without copying. */
export function elementBytes(buf: Uint8Array, e: DerElement): Uint8Array {
  return buf.subarray(e.start, e.end);
}

/** The contents of an element, without copying. */
export function contentBytes(buf: Uint8Array, e: DerElement): Uint8Array {
  return buf.subarray(e.contentStart, e.end);
}

/** Length octets in DER (X.690 §8.1.3): how many — one below 128, else one plus the minimal count of length bytes. */
function lengthOctets(length: number): number {
  if (length < 0x80) return 1;
  let n = 1;
  for (let v = length; v > 0; v = Math.floor(v / 256)) n++;
  return n;
}

/** One TLV: `tag`, the DER length of the parts (short form below 128, else the minimal long form), the parts. */
export function tlv(tag: number, ...parts: Uint8Array[]): Uint8Array {
  let len = 0;
  for (const p of parts) len += p.length;
  const lo = lengthOctets(len);
  const out = Buffer.allocUnsafe(1 + lo + len);
  out[0] = tag;
  if (lo === 1) out[1] = len;
  else {
    out[1] = 0x80 | (lo - 1);
    for (let i = lo, v = len; i >= 2; i--, v = Math.floor(v / 256)) out[i] = v & 0xff;
  }
  let at = 1 + lo;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
