import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import tls from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../common/index.js";
import { TestPki } from "./fixtures.js";
import { HubStore } from "./store.js";
import { Upstream, type UpstreamTls } from "./upstream.js";

/**
 * After a renewal (rekey) the device certificate and key change on disk while the hub runs: the upstream connection
 * asks for its TLS credentials before every (re)connect, so the next connection presents the renewed certificate.
 * The upstream here is a TLS server that records the client certificate of each connection and drops it.
 */
let pki: TestPki;
let dir: string;

beforeAll(async () => {
  pki = await TestPki.create();
  dir = mkdtempSync(join(tmpdir(), "et-upstream-reread-"));
});

afterAll(() => {
  pki?.cleanup();
  rmSync(dir, { recursive: true, force: true });
});

describe("upstream TLS credentials", () => {
  it("are read again for every reconnect: the connection after a renewal presents the new certificate", async () => {
    const before = await pki.leaf("d1");
    const after = await pki.leaf("d1");
    const seen: string[] = [];
    const server = tls.createServer({ ...pki.hubServer(), requestCert: true, rejectUnauthorized: false }, (s) => {
      const raw = s.getPeerCertificate().raw;
      seen.push(raw ? createHash("sha256").update(raw).digest("hex") : "none");
      s.destroy();
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    const fp = (c: typeof before) => createHash("sha256").update(Buffer.from(c.cert.rawData)).digest("hex");
    let current = before;
    let asked = 0;
    const store = new HubStore(join(dir, "hub.db"), { maxMessages: 10, maxBytes: 1 << 20 });
    const upstream = new Upstream({
      url: `mqtts://127.0.0.1:${(server.address() as { port: number }).port}`, clientId: "d1",
      tls: (): UpstreamTls => { asked++; return { cert: current.chainPem, key: current.keyPem, ca: pki.rootPem(), servername: "localhost" }; },
      store, maxInflight: 1, drainRatePerSecond: 10, reconnectMs: 50, log: createLogger("edge-hub", { level: "silent" }),
    });
    try {
      upstream.start();
      await new Promise<void>((r) => { const t = setInterval(() => { if (seen.length >= 1) { clearInterval(t); r(); } }, 20); });
      current = after; // the renewal lands on disk
      const n = seen.length;
      await new Promise<void>((r) => { const t = setInterval(() => { if (seen.length > n) { clearInterval(t); r(); } }, 20); });
    } finally {
      await upstream.stop();
      await new Promise<void>((r) => server.close(() => r()));
      store.close();
    }
    expect(seen[0]).toBe(fp(before));
    expect(seen.at(-1)).toBe(fp(after));
    expect(asked).toBeGreaterThanOrEqual(2);
  });
});
