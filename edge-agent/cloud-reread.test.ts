import { execFileSync } from "node:child_process";
import { createHash, X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TLSSocket } from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CloudClient, type DeviceTls } from "./cloud.js";

/**
 * After a renewal (rekey) the device certificate and key change on disk while the agent runs: the cloud client asks
 * for its TLS credentials before every request, so the request after a renewal presents the renewed certificate.
 * Certificates made with openssl; the cloud is an HTTPS server that requires a client certificate and records it.
 */
let dir: string;
const sh = (args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
const read = (f: string) => readFileSync(join(dir, f), "utf8");

function issue(name: string, ext: string): void {
  sh(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", `${name}.key`, "-subj", `/CN=${name}`, "-out", `${name}.csr`]);
  sh(["x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1", "-extfile", "ext.cnf", "-extensions", ext, "-out", `${name}.pem`]);
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "et-cloud-reread-"));
  sh(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key", "-subj", "/CN=test cloud CA", "-days", "1", "-out", "ca.pem"]);
  execFileSync("sh", ["-c", "printf '[srv]\\nsubjectAltName=DNS:localhost,IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n[cli]\\nextendedKeyUsage=clientAuth\\n' > ext.cnf"], { cwd: dir });
  issue("server", "srv");
  issue("device-before", "cli");
  issue("device-after", "cli");
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("cloud client TLS credentials", () => {
  it("are read again for every request: the request after a renewal presents the new certificate", async () => {
    const seen: string[] = [];
    const server = createServer({ cert: read("server.pem"), key: read("server.key"), ca: read("ca.pem"), requestCert: true, rejectUnauthorized: true }, (req, res) => {
      const raw = (req.socket as TLSSocket).getPeerCertificate().raw;
      seen.push(createHash("sha256").update(raw).digest("hex"));
      res.writeHead(204, { connection: "close" }).end();
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    const fp = (f: string) => createHash("sha256").update(new X509Certificate(read(f)).raw).digest("hex");
    let current = "device-before";
    const client = new CloudClient(`https://127.0.0.1:${(server.address() as { port: number }).port}`, (): DeviceTls => ({ cert: read(`${current}.pem`), key: read(`${current}.key`), ca: read("ca.pem") }));
    try {
      expect(await client.fetchDeployment()).toBeUndefined();
      current = "device-after"; // the renewal lands on disk
      expect(await client.fetchDeployment()).toBeUndefined();
    } finally {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
    expect(seen).toEqual([fp("device-before.pem"), fp("device-after.pem")]);
  });
});
