import { describe, expect, it } from "vitest";
import * as asn1js from "asn1js";
import { contentBytes, readElement, tlv } from "./der.js";

describe("DER identifier and length octets (pki/der.ts)", () => {
  it("the writer's length is the shortest form and the reader and asn1js read it back, at every length-form boundary", () => {
    for (const n of [0, 1, 127, 128, 255, 256, 65_535, 65_536]) {
      const content = Buffer.alloc(n, 0x5a);
      const der = tlv(0x04, content.subarray(0, n >> 1), content.subarray(n >> 1));
      const expectedLengthOctets = n < 0x80 ? 1 : n < 0x100 ? 2 : n < 0x10000 ? 3 : 4;
      expect(der.length, `length ${n}`).toBe(1 + expectedLengthOctets + n);
      const e = readElement(der, 0);
      expect(e, `length ${n}`).toBeDefined();
      expect(e && Buffer.from(contentBytes(der, e)).equals(content)).toBe(true);
      const parsed = asn1js.fromBER(der);
      expect(parsed.offset, `asn1js reads length ${n}`).toBe(der.length);
      expect(Buffer.from((parsed.result as asn1js.OctetString).valueBlock.valueHexView).equals(content)).toBe(true);
    }
  });

  it("the reader refuses what is not DER: indefinite, non-minimal long form, a length past the buffer", () => {
    expect(readElement(Uint8Array.of(0x30, 0x80, 0x00, 0x00), 0)).toBeUndefined();
    expect(readElement(Uint8Array.of(0x04, 0x81, 0x01, 0xff), 0)).toBeUndefined();
    expect(readElement(Uint8Array.of(0x04, 0x82, 0x00, 0x81, ...Buffer.alloc(0x81)), 0)).toBeUndefined();
    expect(readElement(Uint8Array.of(0x04, 0x05, 0x01), 0)).toBeUndefined();
  });
});
