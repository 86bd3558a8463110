import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AsnConvert, OctetString } from "@peculiar/asn1-schema";
import { BasicOCSPResponse, CertID, OCSPRequest, OCSPResponse, OCSPResponseStatus, Request, TBSRequest, id_pkix_ocsp_nonce } from "@peculiar/asn1-ocsp";
import { AlgorithmIdentifier, Extension } from "@peculiar/asn1-x509";
import * as x509 from "@peculiar/x509";
import { respondOcsp } from "./ocsp.js";
import { createCaServer, type CaServer } from "./server.js";
import { makeTestCa, opensslCsr, quietLogger, softHsm, sqliteStore, testConfig, type SoftHsm, type TestCa, type TestStore } from "./test-helpers.js";

/**
 * What independent clients see: GnuTLS `ocsptool` reading good and revoked answers (whole-second times), RFC 9654
 * nonces, and `openssl verify -crl_check_all` over a whole device chain (the root's CRL included).
 */

let hsm: SoftHsm;
let ts: TestStore;
let t: TestCa;
let server: CaServer;
let revBase: string;
let dir: string;
let goodSerial: string;

function run(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd: dir, encoding: "utf8" }, (err, stdout, stderr) => resolve({ code: err ? 1 : 0, out: stdout + stderr }));
  });
}

async function post(path: string, body: Buffer, type: string): Promise<Buffer> {
  const r = await fetch(`${revBase}${path}`, { method: "POST", body: new Uint8Array(body), headers: { "content-type": type } });
  expect(r.status).toBe(200);
  return Buffer.from(await r.arrayBuffer());
}

async function getDer(path: string): Promise<Buffer> {
  const r = await fetch(`${revBase}${path}`);
  expect(r.status).toBe(200);
  return Buffer.from(await r.arrayBuffer());
}

async function issueDevice(id: string): Promise<{ serial: string; pem: string }> {
  await t.store.upsertEnrollment({ deviceId: id, kind: "device", commonName: id, dnsNames: [] }, "test");
  const r = await t.ca.issue({ csrPem: opensslCsr(dir, id).csr, profile: "device-identity", deviceId: id }, "test");
  const pem = r.certificate.toString("pem");
  writeFileSync(join(dir, `${id}.pem`), pem);
  return { serial: r.record.serial, pem };
}

beforeAll(async () => {
  hsm = softHsm();
  ts = await sqliteStore();
  dir = mkdtempSync(join(tmpdir(), "et-ca-interop-"));
  const keys = await hsm.open();
  const config = testConfig();
  t = await makeTestCa(ts.store, keys, config);
  server = await createCaServer(config, { ca: t.ca, store: ts.store, logger: quietLogger() });
  revBase = (await server.listen()).revocationUrl ?? "";
  Object.assign(t.ca.options, { publicBaseUrl: revBase });
  writeFileSync(join(dir, "root.pem"), t.init.root.certPem);
  writeFileSync(join(dir, "issuing.pem"), t.ca.current().cert.toString("pem"));
  goodSerial = (await issueDevice("dev-good")).serial;
  const revoked = await issueDevice("dev-revoked");
  // A revocation time with milliseconds (the store keeps them): the OCSP answer must still say whole seconds.
  await new Promise((r) => setTimeout(r, 1000 - (Date.now() % 1000) + 123));
  await t.ca.revoke(revoked.serial, "keyCompromise", "test");
});

afterAll(async () => {
  await server?.close();
  await ts?.cleanup();
  await t?.keys.close();
  hsm?.cleanup();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("GnuTLS ocsptool reads our OCSP answers", () => {
  for (const [device, status] of [["dev-good", "good"], ["dev-revoked", "revoked"]] as const) {
    it(`${status}: request made by ocsptool, answer verified and printed by ocsptool`, async () => {
      const q = await run("ocsptool", ["-q", "--nonce", "--load-issuer", "issuing.pem", "--load-cert", `${device}.pem`, "--outfile", `${device}.req`]);
      expect(q.code, q.out).toBe(0);
      const resp = await post("/v1/ocsp", readFileSync(join(dir, `${device}.req`)), "application/ocsp-request");
      writeFileSync(join(dir, `${device}.resp`), resp);
      const info = await run("ocsptool", ["-j", "--infile", `${device}.resp`]);
      expect(info.code, info.out).toBe(0);
      expect(info.out).toMatch(new RegExp(`Certificate Status: ${status}`));
      if (status === "revoked") expect(info.out).toMatch(/Revocation time: \w{3} \w{3} \d\d \d\d:\d\d:\d\d UTC \d{4}/);
      const v = await run("ocsptool", ["-e", "--load-signer", "issuing.pem", "--infile", `${device}.resp`]);
      expect(v.out).not.toMatch(/error/i);
      expect(v.out).toMatch(/Verifying OCSP Response: Success/i);
      expect(v.code, v.out).toBe(0);
    });
  }

  it("ocsptool --ask (its own nonce) over HTTP to the responder: revoked, verified against the issuing CA", async () => {
    const a = await run("ocsptool", [`--ask=${revBase}/v1/ocsp`, "--nonce", "--load-issuer", "issuing.pem", "--load-cert", "dev-revoked.pem", "--load-signer", "issuing.pem"]);
    expect(a.out).toMatch(/Certificate Status: revoked/);
    expect(a.out).toMatch(/Nonce:/);
    expect(a.out).toMatch(/Verifying OCSP Response: Success/);
    expect(a.out).not.toMatch(/error/i);
  });
});

describe("OCSP nonce per RFC 9654 §2.1", () => {
  function request(nonceExtnValue: ArrayBuffer | undefined): Uint8Array {
    const ca = t.ca.current();
    const certId = new CertID({
      hashAlgorithm: new AlgorithmIdentifier({ algorithm: "1.3.14.3.2.26", parameters: null }),
      issuerNameHash: new OctetString(Buffer.from(ca.certIdHashes["SHA-1"].name, "hex")),
      issuerKeyHash: new OctetString(Buffer.from(ca.certIdHashes["SHA-1"].key, "hex")),
      serialNumber: new Uint8Array(Buffer.from(goodSerial.length % 2 ? `0${goodSerial}` : goodSerial, "hex")).buffer,
    });
    const tbs = new TBSRequest({ requestList: [new Request({ reqCert: certId })] });
    if (nonceExtnValue) tbs.requestExtensions = [new Extension({ extnID: id_pkix_ocsp_nonce, critical: false, extnValue: new OctetString(nonceExtnValue) })];
    return new Uint8Array(AsnConvert.serialize(new OCSPRequest({ tbsRequest: tbs })));
  }
  const nonceOf = (n: number): ArrayBuffer => AsnConvert.serialize(new OctetString(Buffer.alloc(n, 0x5a)));

  async function answer(req: Uint8Array): Promise<{ status: number; nonce?: Buffer }> {
    const r = await respondOcsp(t.ca, req);
    const resp = AsnConvert.parse(r.der, OCSPResponse);
    if (resp.responseStatus !== OCSPResponseStatus.successful || !resp.responseBytes) return { status: resp.responseStatus };
    const basic = AsnConvert.parse(resp.responseBytes.response, BasicOCSPResponse);
    const ext = basic.tbsResponseData.responseExtensions?.find((e) => e.extnID === id_pkix_ocsp_nonce);
    return { status: resp.responseStatus, ...(ext ? { nonce: Buffer.from(ext.extnValue.buffer) } : {}) };
  }

  it.each([1, 16, 32, 33, 64, 128])("a %i-octet nonce is echoed byte for byte", async (n) => {
    const a = await answer(request(nonceOf(n)));
    expect(a.status).toBe(OCSPResponseStatus.successful);
    expect(a.nonce?.equals(Buffer.from(nonceOf(n)))).toBe(true);
  });

  it.each([0, 129, 200])("a %i-octet nonce is a malformedRequest (RFC 9654: 1..128 octets)", async (n) => {
    expect((await answer(request(nonceOf(n)))).status).toBe(OCSPResponseStatus.malformedRequest);
  });

  it("a nonce value that is not an OCTET STRING (raw bytes, trailing data) is a malformedRequest", async () => {
    expect((await answer(request(new Uint8Array(Buffer.alloc(32, 0x04)).buffer))).status).toBe(OCSPResponseStatus.malformedRequest);
    const trailing = Buffer.concat([Buffer.from(nonceOf(16)), Buffer.from([0])]);
    expect((await answer(request(new Uint8Array(trailing).buffer))).status).toBe(OCSPResponseStatus.malformedRequest);
  });

  it("no nonce asked, none given", async () => {
    const a = await answer(request(undefined));
    expect(a.status).toBe(OCSPResponseStatus.successful);
    expect(a.nonce).toBeUndefined();
  });
});

describe("openssl verify -crl_check_all over the whole chain", () => {
  async function crlsPem(): Promise<void> {
    const root = await getDer(`/v1/crl/${t.init.root.id}.crl`);
    const issuing = await getDer(`/v1/crl/${t.ca.current().record.id}.crl`);
    writeFileSync(join(dir, "crls.pem"), [root, issuing].map((d) => x509.PemConverter.encode(new Uint8Array(d).buffer, "X509 CRL")).join("\n"));
  }

  it("the issuing CA certificate names the root's CRL; the root CRL is signed by the root and served", async () => {
    const issuing = t.ca.current().cert;
    const dp = issuing.getExtension(x509.CRLDistributionPointsExtension);
    const urls = dp?.distributionPoints.flatMap((p) => p.distributionPoint?.fullName?.map((n) => n.uniformResourceIdentifier) ?? []) ?? [];
    expect(urls).toEqual([`${t.config.publicBaseUrl}/v1/crl/${t.init.root.id}.crl`]);
    const root = new x509.X509Crl(new Uint8Array(await getDer(`/v1/crl/${t.init.root.id}.crl`)).buffer);
    expect(await root.verify({ publicKey: await new x509.X509Certificate(t.init.root.certPem).publicKey.export() })).toBe(true);
    expect(root.entries).toHaveLength(0);
  });

  it("a device chain passes; a revoked device fails with 'certificate revoked'", async () => {
    await crlsPem();
    const args = ["verify", "-x509_strict", "-crl_check_all", "-CRLfile", "crls.pem", "-CAfile", "root.pem", "-untrusted", "issuing.pem"];
    const ok = await run("openssl", [...args, "dev-good.pem"]);
    expect(ok.out).toMatch(/dev-good\.pem: OK/);
    expect(ok.code).toBe(0);
    const bad = await run("openssl", [...args, "dev-revoked.pem"]);
    expect(bad.code).not.toBe(0);
    expect(bad.out).toMatch(/certificate revoked/);
    // Without the root's CRL the whole-chain check cannot pass (what every chain hit before the root CRL existed).
    writeFileSync(join(dir, "issuing-only.pem"), x509.PemConverter.encode(new Uint8Array(await getDer(`/v1/crl/${t.ca.current().record.id}.crl`)).buffer, "X509 CRL"));
    const noRoot = await run("openssl", ["verify", "-crl_check_all", "-CRLfile", "issuing-only.pem", "-CAfile", "root.pem", "-untrusted", "issuing.pem", "dev-good.pem"]);
    expect(noRoot.out).toMatch(/unable to get certificate CRL/);
  });
});
