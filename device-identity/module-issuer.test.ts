import "reflect-metadata";
import { readdirSync, readFileSync } from "node:fs";
import * as x509 from "@peculiar/x509";
import { describe, expect, it } from "vitest";
import { certificatePem } from "./module-issuer.js";

describe("module certificates' PEM (written from the DER with Buffer's base64, not @peculiar/x509's encoder)", () => {
  it("is byte for byte what @peculiar/x509 writes, for certificates of every size", () => {
    const dir = "/etc/ssl/certs";
    const files = readdirSync(dir).filter((f) => f.endsWith(".pem")).slice(0, 40);
    expect(files.length).toBeGreaterThan(0);
    for (const f of files) {
      const cert = new x509.X509Certificate(readFileSync(`${dir}/${f}`, "utf8"));
      expect(certificatePem(new Uint8Array(cert.rawData))).toBe(cert.toString("pem"));
    }
  });
});
