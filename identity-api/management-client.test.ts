import { afterEach, describe, expect, it } from "vitest";
import { createServer, type Server } from "node:http";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ManagementClient } from "./index.js";

/**
 * A daemon that answers outside the contract cannot be made from the real one (its answers go through the same
 * schemas), so this fake socket stands in for a broken or impostor daemon: the client must refuse what it says.
 */
let server: Server | undefined;
let dir: string | undefined;
afterEach(async () => {
  await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
  if (dir) rmSync(dir, { recursive: true, force: true });
  server = undefined;
});

async function daemon(answer: (path: string) => { status: number; body: string }): Promise<ManagementClient> {
  dir = mkdtempSync(join(tmpdir(), "et-mgmt-"));
  const path = join(dir, "mgmt.sock");
  server = createServer((req, res) => {
    const a = answer(req.url ?? "/");
    res.writeHead(a.status, { "content-type": a.status < 300 ? "application/json" : "application/problem+json" }).end(a.body);
  });
  await new Promise<void>((r) => server?.listen(path, r));
  return new ManagementClient(path, 5000);
}

const VIEW = {
  name: "sensor", containerId: "a".repeat(64), imageRepository: "127.0.0.1:5000/x", imageDigest: `sha256:${"b".repeat(64)}`,
  manifestVersion: 3, deploymentId: "d1", registeredAt: "2026-01-01T00:00:00Z", socketPath: "/run/edgetrust/modules/sensor/workload.sock",
};

describe("ManagementClient validates every answer against the identity API's schemas", () => {
  it("returns an answer that matches", async () => {
    const client = await daemon(() => ({ status: 200, body: JSON.stringify({ modules: [VIEW] }) }));
    expect(await client.list()).toEqual([VIEW]);
  });

  it("refuses a module list whose entries lack the attested digest, naming the field", async () => {
    const { imageDigest: _omitted, ...partial } = VIEW;
    const client = await daemon(() => ({ status: 200, body: JSON.stringify({ modules: [partial] }) }));
    await expect(client.list()).rejects.toMatchObject({ code: "UNAVAILABLE", message: expect.stringMatching(/GET \/v1\/modules.*imageDigest/) });
  });

  it("refuses an events page with a manifest version that is not a number, and an answer that is not JSON", async () => {
    const bad = await daemon(() => ({ status: 200, body: JSON.stringify({ epoch: "e", events: [{ seq: 1, type: "registered", module: "m", at: "t" }], next: "1", gap: false }) }));
    await expect(bad.events(0)).rejects.toMatchObject({ code: "UNAVAILABLE" });
    await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
    const garbage = await daemon(() => ({ status: 200, body: "<html>" }));
    await expect(garbage.status()).rejects.toMatchObject({ code: "UNAVAILABLE", message: expect.stringMatching(/no JSON/) });
  });

  it("turns a problem+json refusal into an EdgeTrustError with the daemon's code and detail", async () => {
    const client = await daemon(() => ({ status: 403, body: JSON.stringify({ code: "FORBIDDEN", detail: "refused to attest module sensor: not running" }) }));
    await expect(client.register({ ...VIEW, uid: 1000, gid: 1000 } as never)).rejects.toMatchObject({ code: "FORBIDDEN", message: "refused to attest module sensor: not running" });
  });
});
