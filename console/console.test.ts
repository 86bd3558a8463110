/**
 * The security console in a real browser: Debian's chromium driven by playwright-core (no browser download), against
 * a real CA (SoftHSM keys, SQLite) serving the console over HTTPS, with a fleet built through the real routes.
 * Screenshots of every page are written to a temporary directory, or to docs/console/ with UPDATE_SCREENSHOTS=1.
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium, type BrowserContext, type Locator, type Page } from "playwright-core";
import { simulateFleet } from "../fleet/index.js";
import { populateFleet, startConsoleFleet, type ConsoleFleet } from "./test-helpers.js";
import { CONTENT_SECURITY_POLICY } from "./plugin.js";

const CHROMIUM = "/usr/bin/chromium";
const HAVE_CHROMIUM = existsSync(CHROMIUM);
if (!HAVE_CHROMIUM) process.stderr.write("console/console.test.ts: /usr/bin/chromium is missing (scripts/setup.sh installs Debian's chromium): browser tests skipped\n");
// Long enough that no session runs out while a test drives a slow browser; the expiry test moves the console's clock.
const SESSION_TTL_S = 600;
const SHOTS = process.env.UPDATE_SCREENSHOTS === "1" ? join(process.cwd(), "docs", "console") : mkdtempSync(join(tmpdir(), "et-console-shots-"));

function ocsp(f: ConsoleFleet, certFile: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile("openssl", ["ocsp", "-issuer", f.issuerPemFile, "-cert", certFile, "-url", `${f.revocationUrl}/v1/ocsp`, "-CAfile", join(f.dir, "root.pem"), "-resp_text"],
      { encoding: "utf8" }, (err, stdout, stderr) => (err ? reject(Object.assign(err, { stderr })) : resolve(stdout + stderr)));
  });
}

describe.skipIf(!HAVE_CHROMIUM)("security console in headless Chromium", () => {
  let f: ConsoleFleet;
  let browser: BrowserContext;
  let userDataDir: string;
  let page: Page;

  beforeAll(async () => {
    f = await startConsoleFleet({ sessionTtlSeconds: SESSION_TTL_S });
    await populateFleet(f);
    // Beside the curated devices, devices the fleet simulator drove through their whole life against this CA
    // (line enrollment, registration, attestation, deployment + report over mTLS, renewal).
    const sim = await simulateFleet({ caUrl: f.url, rootPem: f.rootPem, devices: 10, concurrency: 4, adminToken: f.adminToken, prefix: "sim-plant", revokePercent: 0, references: await f.references("line-sensors", 4), crossInstance: false });
    expect(sim).toMatchObject({ completed: 10, affirming: 10, renewed: 10, errors: 0 });
    mkdirSync(SHOTS, { recursive: true });
    userDataDir = mkdtempSync(join(tmpdir(), "et-chromium-"));
    browser = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
      ignoreHTTPSErrors: true,
      viewport: { width: 1400, height: 1000 },
    });
    page = browser.pages()[0] ?? await browser.newPage();
  }, 240_000);

  afterAll(async () => {
    await browser?.close();
    if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
    await f?.close();
  });

  const at = (path: string): string => `${f.url.replace("localhost", "127.0.0.1")}${path}`;
  const signIn = async (token: string): Promise<void> => {
    await browser.clearCookies();
    await page.goto(at("/console"));
    expect(new URL(page.url()).pathname).toBe("/console/signin");
    await page.fill("input[name=token]", token);
    await Promise.all([page.waitForURL(/\/console\/fleet$/), page.click(".token-form button[type=submit]")]);
  };
  const shot = (name: string) => page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
  /** The element's text once it is in the page (server-rendered: present when the navigation finished). */
  const txt = async (l: Locator): Promise<string> => (await l.textContent({ timeout: 10_000 })) ?? "";
  const csrfOf = async (): Promise<string> => (await page.locator("header input[name=_csrf]").getAttribute("value")) ?? "";

  it("sign in with an admin token: the session cookie is HttpOnly, Secure, SameSite=Strict and expires; every page carries the strict CSP", async () => {
    await page.goto(at("/console/fleet"));
    expect(new URL(page.url()).pathname).toBe("/console/signin");
    await shot("signin");
    await signIn(f.adminToken);
    const cookie = (await browser.cookies()).find((c) => c.name === "__Host-edgetrust-console");
    expect(cookie).toMatchObject({ httpOnly: true, secure: true, sameSite: "Strict", path: "/" });
    expect(cookie?.expires ?? 0).toBeGreaterThan(Date.now() / 1000);
    expect(cookie?.expires ?? Infinity).toBeLessThanOrEqual(Date.now() / 1000 + SESSION_TTL_S + 2);
    // The token never lands in the browser: not in the cookie, not in the page.
    expect(cookie?.value).not.toContain(f.adminToken);
    expect(await page.content()).not.toContain(f.adminToken);
    const res = await page.goto(at("/console/fleet"));
    expect(res?.headers()["content-security-policy"]).toBe(CONTENT_SECURITY_POLICY);
    expect(await txt(page.locator(".principal"))).toMatch(/security admin · admin/);
  });

  it("the fleet page shows a contraindicated device with its failing claim, reason and deciding rule from a real attestation", async () => {
    await signIn(f.adminToken);
    const row = page.locator('tr[data-device="cam-brno-007"]');
    expect((await txt(row.locator(".badge").first())).trim()).toBe("contraindicated");
    expect(await txt(row.locator("li.claim").first())).toContain("module:sensor");
    expect(await txt(row.locator("li.claim").first())).toContain(`module sensor runs image sha256:eeeeeeeeeeee…, the manifest pins sha256:1a1a1a1a1a1a…`);
    expect(await txt(row.locator("li.claim .rule").first())).toContain("attestation.modules: manifest");
    const tampered = page.locator('tr[data-device="pump-lisbon-015"]');
    expect(await txt(tampered.locator("li.claim").first())).toContain("policy digest sha256:999999999999… is not a reference value");
    expect(await txt(tampered.locator("li.claim .rule").first())).toContain("attestation.policy: self (this policy file)");
    expect((await txt(page.locator('tr[data-device="pump-lisbon-014"] .badge').first())).trim()).toBe("warning");
    expect((await txt(page.locator('tr[data-device="gw-berlin-001"] .badge').first())).trim()).toBe("affirming");
    expect((await txt(page.locator(".card.st-contraindicated .n"))).trim()).toBe("2");
    expect(await page.locator("figure.chart svg rect").first().count()).toBeGreaterThan(0);
    await shot("fleet");
    // Filters are server-side: contraindicated only.
    await page.selectOption("select[name=status]", "contraindicated");
    await page.waitForURL(/status=contraindicated/);
    expect(await page.locator("tbody tr[data-device]").count()).toBe(2);
  });

  it("revoke a device from its page (reason, typed confirmation): audited, and `openssl ocsp` answers revoked", async () => {
    await signIn(f.adminToken);
    const dev = f.devices.get("gw-berlin-002");
    if (!dev) throw new Error("fixture");
    expect(await ocsp(f, dev.certFile)).toMatch(/: good/);
    await page.goto(at("/console/devices/gw-berlin-002"));
    await shot("device");
    const button = page.locator(".revoke-form button[type=submit]");
    expect(await button.isDisabled()).toBe(true);
    await page.selectOption(".revoke-form select[name=reason]", "keyCompromise");
    await page.fill(".revoke-form input[name=confirm]", "gw-berlin-002");
    expect(await button.isEnabled()).toBe(true);
    await button.click();
    expect(await txt(page.locator("#revoked-notice"))).toContain("Revoked 2 certificates (keyCompromise)");
    expect((await txt(page.locator(`tr[data-serial="${dev.serial}"] .badge`))).trim()).toBe("revoked");
    const out = await ocsp(f, dev.certFile);
    expect(out).toMatch(/: revoked/);
    expect(out).toMatch(/Reason: keyCompromise/);
    const audit = await f.t.store.listAudit({ limit: 100_000 });
    expect(audit.find((e) => e.action === "cert.revoke" && e.target === dev.serial)?.actor).toMatch(/^token:security admin\(/);
  });

  it("an auditor sees no mutating control, and the server refuses the auditor's revocation (console and API)", async () => {
    await signIn(f.auditorToken);
    expect(await txt(page.locator(".principal"))).toMatch(/night-shift auditor · auditor/);
    for (const path of ["/console/devices/gw-lisbon-001", "/console/lines", "/console/deployments", "/console/audit"]) {
      await page.goto(at(path));
      expect(await page.locator("form.revoke-form, button.danger").count(), path).toBe(0);
    }
    const dev = f.devices.get("gw-lisbon-001");
    if (!dev) throw new Error("fixture");
    await page.goto(at("/console/devices/gw-lisbon-001"));
    const csrf = await csrfOf();
    const r = await page.request.post(at("/console/devices/gw-lisbon-001/revoke"), {
      form: { _csrf: csrf, serial: "all", reason: "keyCompromise", confirm: "gw-lisbon-001" }, headers: { origin: at("").replace(/\/$/, "") }, maxRedirects: 0,
    });
    expect(r.status()).toBe(403);
    expect(await r.text()).toContain("role auditor may not change anything");
    const api = await f.api("POST", `/v1/certificates/${dev.serial}/revoke`, { token: f.auditorToken, body: { reason: "keyCompromise" } });
    expect(api.status).toBe(403);
    expect((await f.t.store.getCertificate(dev.serial))?.status).toBe("good");
    expect(await ocsp(f, dev.certFile)).toMatch(/: good/);
  });

  it("a device label containing <script> renders as text and never runs", async () => {
    await f.addDevice({ id: "evil-001", labels: { note: '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">' } });
    await signIn(f.adminToken);
    const csp: string[] = [];
    page.on("console", (m) => { if (/Content Security Policy/i.test(m.text())) csp.push(m.text()); });
    for (const path of ["/console/fleet?q=evil", "/console/devices/evil-001"]) {
      await page.goto(at(path));
      expect(await page.locator("text=<script>window.__pwned=1</script>").first().isVisible()).toBe(true);
      expect(await page.evaluate(() => (window as unknown as { __pwned?: number }).__pwned)).toBeUndefined();
      expect(await page.locator("script").count()).toBe(1);
      expect(await page.locator("img").count()).toBe(0);
    }
  });

  it("a cross-site form post is refused (the page of another origin auto-submits a revocation to the console)", async () => {
    await signIn(f.adminToken);
    const dev = f.devices.get("gw-lisbon-001");
    if (!dev) throw new Error("fixture");
    const target = at("/console/devices/gw-lisbon-001/revoke");
    const evil: Server = createServer((_req, res) => {
      res.setHeader("content-type", "text/html");
      res.end(`<!doctype html><form id="f" method="post" action="${target}"><input name="_csrf" value="guess"><input name="serial" value="all"><input name="reason" value="keyCompromise"><input name="confirm" value="gw-lisbon-001"></form><script>document.getElementById("f").submit()</script>`);
    });
    await new Promise<void>((r) => evil.listen(0, "localhost", r));
    try {
      const port = (evil.address() as AddressInfo).port;
      const posted: number[] = [];
      page.on("response", (resp) => { if (resp.url() === target && resp.request().method() === "POST") posted.push(resp.status()); });
      await page.goto(`http://localhost:${port}/`);
      await page.waitForURL(target, { timeout: 20_000 });
      await page.waitForLoadState();
      expect(posted).toEqual([403]);
      expect(await txt(page.locator("p.error"))).toContain("cross-origin request refused");
    } finally {
      evil.closeAllConnections();
      await new Promise((r) => evil.close(r));
    }
    // Even with the session cookie attached (a same-site attacker), a foreign Origin or a missing CSRF token is refused.
    await page.goto(at("/console/devices/gw-lisbon-001"));
    const csrf = await csrfOf();
    const foreign = await page.request.post(target, { form: { _csrf: csrf, serial: "all", reason: "keyCompromise", confirm: "gw-lisbon-001" }, headers: { origin: "https://evil.example" }, maxRedirects: 0 });
    expect(foreign.status()).toBe(403);
    const noToken = await page.request.post(target, { form: { _csrf: "x".repeat(43), serial: "all", reason: "keyCompromise", confirm: "gw-lisbon-001" }, headers: { origin: at("").replace(/\/$/, "") }, maxRedirects: 0 });
    expect(noToken.status()).toBe(403);
    expect(await noToken.text()).toContain("missing or wrong CSRF token");
    expect((await f.t.store.getCertificate(dev.serial))?.status).toBe("good");
  });

  it("screenshots of the other pages; the audit chain verifies on demand and exports", async () => {
    await signIn(f.adminToken);
    await page.goto(at("/console/lines"));
    expect(await txt(page.locator('tr[data-line="Porto line 1"]'))).toContain("3 / 200");
    await shot("lines");
    await page.goto(at("/console/deployments"));
    expect(await txt(page.locator('tr[data-deployment="line-sensors@5"]'))).toContain("threshold-not-met");
    expect(await txt(page.locator('tr[data-deployment="line-sensors@4"]'))).toContain("bob.security");
    expect(await txt(page.locator('tr[data-deployment="line-sensors@4"]'))).toContain("threshold-met");
    await shot("deployments");
    await page.goto(at("/console/deployments/line-sensors/4"));
    expect(await txt(page.locator("tbody"))).toContain("pull failed");
    await shot("rollout");
    await page.goto(at("/console/audit"));
    await page.click("text=Verify the chain now");
    expect(await txt(page.locator("#verify-result"))).toContain("The chain verifies");
    await shot("audit");
    const exp = await page.request.get(at("/console/audit/export?format=jsonl&action=cert.revoke"));
    expect(exp.headers()["content-disposition"]).toMatch(/attachment; filename="edgetrust-audit-.*\.jsonl"/);
    const lines = (await exp.text()).trim().split("\n").map((l) => JSON.parse(l) as { action: string });
    expect(lines.length).toBe(2);
    expect(lines.every((l) => l.action === "cert.revoke")).toBe(true);
    await page.goto(at("/console/policy"));
    expect(await txt(page.locator("pre.explain"))).toContain("Mode: enforce");
    await shot("policy");
  });

  it("the session expires: after its lifetime the console sends the browser back to sign-in", async () => {
    await signIn(f.auditorToken);
    await page.goto(at("/console/fleet"));
    expect(new URL(page.url()).pathname).toBe("/console/fleet");
    const stale = (await browser.cookies()).find((c) => c.name === "__Host-edgetrust-console")?.value ?? "";
    // The console's clock a lifetime (and a second) ahead instead of a lifetime of waiting: the browser still sends the
    // cookie (Chromium's own Max-Age expiry is Chromium's; the attribute is checked at sign-in), the server refuses it.
    f.clock.aheadMs = (SESSION_TTL_S + 1) * 1000;
    await page.goto(at("/console/fleet"));
    expect(new URL(page.url()).pathname).toBe("/console/signin");
    expect(new URL(page.url()).search).toBe("?expired=1");
    // Replayed by hand, without following redirects: the stale cookie is refused, not only forgotten.
    const replay = await page.request.get(at("/console/fleet"), { headers: { cookie: `__Host-edgetrust-console=${stale}` }, maxRedirects: 0 });
    expect(replay.status()).toBe(303);
    expect(replay.headers().location).toBe("/console/signin?expired=1");
  }, 60_000);
});
