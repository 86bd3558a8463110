import { generateKeyPairSync, createPublicKey } from "node:crypto";
import { describe, expect, it } from "vitest";
import { AsnConvert, OctetString } from "@peculiar/asn1-schema";
import { EdgeTrustError } from "../common/index.js";
import { formatPkcs11Uri, parseKeyRef, parsePkcs11Uri } from "./pkcs11-uri.js";
import { CURVES, decodeEcPoint, ecSpki, rsaSpki, digestInfo } from "./public-key.js";

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof EdgeTrustError) return e.code;
    throw e;
  }
  return "none";
}

describe("pkcs11: URIs (RFC 7512)", () => {
  it("parses path and query attributes with percent-encoding", () => {
    const u = parsePkcs11Uri("pkcs11:token=edge%20trust;object=device%2Fkey;id=%01%AB%ff;type=private?pin-value=1234&module-path=/usr/lib/softhsm/libsofthsm2.so");
    expect(u).toEqual({
      token: "edge trust",
      object: "device/key",
      id: "01abff",
      type: "private",
      pinValue: "1234",
      modulePath: "/usr/lib/softhsm/libsofthsm2.so",
    });
  });

  it("parses the RFC 7512 examples", () => {
    expect(parsePkcs11Uri("pkcs11:")).toEqual({});
    expect(parsePkcs11Uri("pkcs11:object=my-pubkey;type=public")).toEqual({ object: "my-pubkey", type: "public" });
    expect(parsePkcs11Uri("pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial=?pin-source=file:/etc/token_pin"))
      .toEqual({
        token: "The Software PKCS#11 Softtoken",
        manufacturer: "Snake Oil, Inc.",
        model: "1.0",
        object: "my-certificate",
        type: "cert",
        id: "69953e5cf4bdec91",
        serial: "",
        pinSource: "file:/etc/token_pin",
      });
    expect(parsePkcs11Uri("pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc.?pin-value=the-pin")).toMatchObject({ pinValue: "the-pin" });
    expect(parsePkcs11Uri("pkcs11:slot-description=Sun%20Metaslot")).toEqual({ slotDescription: "Sun Metaslot" });
    expect(parsePkcs11Uri("pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;library-description=Soft%20Token%20Library;library-version=1.23")).toMatchObject({ libraryVersion: "1.23" });
    expect(parsePkcs11Uri("pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;object=my-certificate;type=cert")).toMatchObject({ token: "A name with a substring %;" });
    expect(parsePkcs11Uri("pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;object=my-certificate;type=cert")).toMatchObject({ token: "Name with a small A with acute: á" });
    expect(parsePkcs11Uri("pkcs11:token=my-token;object=my-certificate;type=cert;vendor-aaa=value-a?pin-source=file:/etc/token_pin&vendor-bbb=value-b".replace(/vendor-/g, "x-vendor-"))).toMatchObject({
      vendor: { "x-vendor-aaa": "value-a", "x-vendor-bbb": "value-b" },
    });
    expect(parsePkcs11Uri("pkcs11:slot-id=3")).toEqual({ slotId: 3 });
  });

  it("rejects bad URIs with INVALID_INPUT and never echoes a PIN", () => {
    const bad = [
      "pkcs12:token=x",
      "token=x",
      "pkcs11:token=a;token=b",
      "pkcs11:token=bad%zz",
      "pkcs11:token=trailing%4",
      "pkcs11:token=has space",
      "pkcs11:type=secret",
      "pkcs11:id=",
      "pkcs11:unknown=1",
      "pkcs11:token",
      "pkcs11:?token=x",
      "pkcs11:pin-value=1234",
      "pkcs11:token=x?pin-value=1&pin-source=file:/p",
      "pkcs11:slot-id=abc",
      "pkcs11:token=%C3%28",
    ];
    for (const uri of bad) expect(code(() => parsePkcs11Uri(uri)), uri).toBe("INVALID_INPUT");
    try {
      parsePkcs11Uri("pkcs11:token=x;bogus=1?pin-value=s3cret-pin");
    } catch (e) {
      expect((e as EdgeTrustError).message).not.toContain("s3cret-pin");
    }
  });

  it("formats URIs that parse back to the same attributes", () => {
    const u = { token: "edge trust", object: "k;1=/?", id: "00ff10", type: "private" as const, pinSource: "file:/run/pin" };
    const s = formatPkcs11Uri(u);
    expect(s).toBe("pkcs11:token=edge%20trust;object=k%3B1%3D%2F%3F;id=%00%FF%10;type=private?pin-source=file%3A/run/pin");
    expect(parsePkcs11Uri(s)).toEqual(u);
  });

  it("turns URIs, id:<hex> and labels into key references", () => {
    expect(parseKeyRef("pkcs11:token=t;object=dev;type=private")).toEqual({ token: "t", label: "dev" });
    expect(parseKeyRef("pkcs11:id=%01%02")).toEqual({ id: "0102" });
    expect(parseKeyRef("id:0A0b")).toEqual({ id: "0a0b" });
    expect(parseKeyRef("device-key")).toEqual({ label: "device-key" });
    expect(code(() => parseKeyRef("pkcs11:token=t"))).toBe("INVALID_INPUT");
    expect(code(() => parseKeyRef("pkcs11:object=c;type=cert"))).toBe("INVALID_INPUT");
    expect(code(() => parseKeyRef("id:xyz"))).toBe("INVALID_INPUT");
  });
});

describe("CKA_EC_POINT decoding and SPKI building", () => {
  for (const curve of CURVES) {
    it(`accepts raw and DER-wrapped points on ${curve.jwkCrv}`, () => {
      const { publicKey } = generateKeyPairSync("ec", { namedCurve: curve.jwkCrv });
      const spki = publicKey.export({ type: "spki", format: "der" });
      const point = spki.subarray(spki.length - (1 + 2 * curve.fieldBytes));
      expect(point[0]).toBe(4);
      const wrapped = Buffer.from(AsnConvert.serialize(new OctetString(point)));
      expect(decodeEcPoint(point, curve.fieldBytes).equals(point)).toBe(true);
      expect(decodeEcPoint(wrapped, curve.fieldBytes).equals(point)).toBe(true);
      // the SPKI we build from either is byte-identical to Node's
      expect(ecSpki(curve, decodeEcPoint(wrapped, curve.fieldBytes)).equals(spki)).toBe(true);
    });
  }

  it("rejects points that are neither", () => {
    const { publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const spki = publicKey.export({ type: "spki", format: "der" });
    const point = spki.subarray(spki.length - 65);
    const wrapped = Buffer.from(AsnConvert.serialize(new OctetString(point)));
    const bads = [
      point.subarray(0, 64), // truncated raw
      Buffer.concat([wrapped, Buffer.from([0])]), // trailing garbage
      Buffer.concat([Buffer.from([0x02]), point.subarray(1, 33)]), // compressed
      Buffer.from(AsnConvert.serialize(new OctetString(point.subarray(0, 33)))), // wrapped, wrong length
      Buffer.alloc(0),
    ];
    for (const b of bads) expect(code(() => decodeEcPoint(b, 32))).toBe("HSM_OPERATION_FAILED");
  });

  it("builds RSA SPKIs identical to Node's and DigestInfo for CKM_RSA_PKCS", () => {
    const { publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const jwk = publicKey.export({ format: "jwk" });
    const spki = rsaSpki(Buffer.from(jwk.n as string, "base64url"), Buffer.from(jwk.e as string, "base64url"));
    expect(spki.equals(publicKey.export({ type: "spki", format: "der" }))).toBe(true);
    expect(createPublicKey({ key: spki, format: "der", type: "spki" }).asymmetricKeyDetails?.modulusLength).toBe(2048);
    // RFC 8017 §9.2 note 1: the fixed DER prefix for SHA-256
    expect(digestInfo("SHA-256", Buffer.alloc(32)).subarray(0, 19).toString("hex")).toBe("3031300d060960864801650304020105000420");
  });
});
