/**
 * The console as `edgetrust ca serve` serves it: the command tree registers it (cli/index.ts → ServeExtension), it
 * passes ca-service's route-authentication start-up check, a token signs in to a __Host- session cookie, and
 * `console.enabled: false` leaves it out.
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { SOFTHSM_MODULE } from "../hsm/index.js";
import { TEST_PIN, softHsm, startCaServe, type CaServe, type SoftHsm } from "../ca-service/test-helpers.js";
import { cliBundleArgs } from "../test/fixtures/cli-bundle.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

type Server = CaServe & { url: string };

/** A request the server must answer within 20 s: a lost or stuck one fails naming itself, with the service's stderr. */
function get(server: Server, path: string, ca: string, opts: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  const what = `${opts.method ?? "GET"} ${path}`;
  return new Promise((resolve, reject) => {
    const fail = (e: Error) => reject(new Error(`${what}: ${e.message}\nca serve stderr:\n${server.stderr() || "(nothing)"}`));
    const req = request(`${server.url}${path}`, { method: opts.method ?? "GET", ca, headers: opts.headers ?? {}, agent: false }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => { body += c; });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      res.on("error", fail);
    });
    req.setTimeout(20_000, () => req.destroy(new Error("no answer within 20 s")));
    req.on("error", fail);
    req.end(opts.body);
  });
}

describe("ca serve serves the console", () => {
  let hsm: SoftHsm;
  let dir: string;
  let token: string;
  let rootPem: string;
  const env = (): NodeJS.ProcessEnv => ({ ...process.env, SOFTHSM2_CONF: hsm.conf, CA_TEST_PIN: TEST_PIN });
  const config = (enabled: boolean): string => {
    const file = join(dir, "edgetrust.yaml");
    writeFileSync(file, [
      "log:", "  level: warn",
      "hsm:", "  backend: pkcs11", `  module: ${SOFTHSM_MODULE}`, `  tokenLabel: ${hsm.tokenLabel}`, "  pinEnv: CA_TEST_PIN",
      "ca:", "  host: 127.0.0.1", "  port: 0", "  revocationPort: -1", `  sqlitePath: ${join(dir, "ca.db")}`, "",
      "console:", `  enabled: ${enabled}`, "",
    ].join("\n"));
    return file;
  };
  // Two workers, as on a 2-core host (the default is one per core): the console is registered in every worker.
  const serve = async (enabled: boolean): Promise<Server> => {
    const server = startCaServe(["-c", config(enabled), "--workers", "2"], env());
    return { ...server, url: await server.listening };
  };

  beforeAll(() => {
    hsm = softHsm("et-console-serve");
    dir = mkdtempSync(join(tmpdir(), "et-console-serve-"));
    const init = JSON.parse(execFileSync(process.execPath, [...cliBundleArgs(), "ca", "init", "-c", config(true), "--json"], { cwd: ROOT, env: env(), encoding: "utf8", timeout: 90_000 })) as { adminToken: string; rootCertificatePem: string };
    token = init.adminToken;
    rootPem = init.rootCertificatePem;
  }, 120_000);

  afterAll(() => {
    hsm?.cleanup();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("signs in with the admin token to a __Host- session cookie (HttpOnly, Secure, SameSite=Strict) and serves the fleet with the strict CSP", async () => {
    const server = await serve(true);
    try {
      const signin = await get(server, "/console/signin", rootPem);
      expect(signin.status).toBe(200);
      expect(signin.headers["content-security-policy"]).toMatch(/script-src 'self'/);
      expect((await get(server, "/console/fleet", rootPem)).headers.location).toBe("/console/signin");
      const post = await get(server, "/console/signin", rootPem, {
        method: "POST", body: new URLSearchParams({ token }).toString(),
        headers: { "content-type": "application/x-www-form-urlencoded", origin: server.url },
      });
      expect(post.status).toBe(303);
      const cookie = String(post.headers["set-cookie"] ?? "");
      expect(cookie).toMatch(/^__Host-edgetrust-console=[A-Za-z0-9_-]{43}; Max-Age=1800; Path=\/; HttpOnly; Secure; SameSite=Strict$/);
      const fleet = await get(server, "/console/fleet", rootPem, { headers: { cookie: cookie.split(";")[0] ?? "" } });
      expect(fleet.status).toBe(200);
      expect(fleet.body).toContain("<table class=\"fleet\">");
    } finally {
      expect(await server.stop()).toBe(0);
    }
  }, 120_000);

  it("console.enabled: false leaves it out", async () => {
    const server = await serve(false);
    try {
      expect((await get(server, "/console/signin", rootPem)).status).toBe(404);
    } finally {
      expect(await server.stop()).toBe(0);
    }
  }, 120_000);
});
