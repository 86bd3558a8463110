import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execFile, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, request, type Server } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TLSSocket } from "node:tls";
import { promisify } from "node:util";
import { haproxyConfig, startHaproxy, type Balancer } from "./harness.js";

/**
 * Issue 13: the load balancer. `deploy/haproxy/edgetrust-ca.cfg` is what an operator runs; the local fleet (the
 * fleet test, `fleet up`, the bench) writes the same layout for its own ports. Checked here: the deployed file is
 * valid HAProxy, the two say the same thing, and what they say holds against a running HAProxy — TCP mode (TLS ends
 * at each backend), round robin with no stickiness, health checks on GET /healthz over TLS taking a failing backend
 * out and back in, and a connection to a dead backend retried on another one.
 */
const DEPLOYED = new URL("../deploy/haproxy/edgetrust-ca.cfg", import.meta.url);
const haproxy = ["/usr/sbin/haproxy", "/usr/bin/haproxy"].find((p) => {
  try {
    execFileSync(p, ["-v"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
});
if (!haproxy) process.stderr.write("fleet/haproxy.test.ts: skipped: haproxy is not installed (scripts/setup.sh installs it)\n");

/** The directives of each section (comments and blank lines dropped), by `section name`. */
function sections(cfg: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let cur: string[] = [];
  for (const raw of cfg.split("\n")) {
    const line = raw.replace(/#.*$/, "").trim().replace(/\s+/g, " ");
    if (!line) continue;
    if (/^(global|defaults|frontend|backend|listen)\b/.test(line)) {
      cur = [];
      out.set(line, cur);
    } else {
      cur.push(line);
    }
  }
  return out;
}

// Lines that differ by design: where to listen, which processes, and logging (the local fleet has no syslog).
const LOCAL = /^(bind|server|log|option tcplog)\b/;

describe.skipIf(!haproxy)("HAProxy in front of the CA processes (deploy/haproxy/edgetrust-ca.cfg)", () => {
  it("the deployed configuration is valid (haproxy -c)", async () => {
    const { stdout, stderr } = await promisify(execFile)(haproxy as string, ["-c", "-f", DEPLOYED.pathname]);
    expect(`${stdout}${stderr}`).toMatch(/Configuration file is valid/);
  });

  it("the local fleet's configuration is the deployed one with only listen address, servers and logging changed; neither is sticky", () => {
    const deployed = sections(readFileSync(DEPLOYED, "utf8"));
    const local = sections(haproxyConfig({ host: "127.0.0.1", port: 1234 }, [{ host: "127.0.0.1", port: 2001 }, { host: "127.0.0.1", port: 2002 }]));
    for (const name of ["global", "defaults", "frontend edgetrust_ca", "backend edgetrust_ca"]) {
      expect(local.get(name)?.filter((l) => !LOCAL.test(l)), name).toEqual(deployed.get(name)?.filter((l) => !LOCAL.test(l)));
    }
    expect(deployed.get("defaults")).toContain("mode tcp");
    expect(local.get("frontend edgetrust_ca")).toContain("bind 127.0.0.1:1234");
    expect(local.get("backend edgetrust_ca")?.filter((l) => l.startsWith("server "))).toEqual(["server ca1 127.0.0.1:2001", "server ca2 127.0.0.1:2002"]);
    for (const cfg of [...deployed.values(), ...local.values()]) {
      expect(cfg.filter((l) => /^(stick|cookie|balance (source|uri|hdr|url_param|rdp-cookie)|hash-type)\b/.test(l))).toEqual([]);
    }
  });

  describe("against a running HAProxy", () => {
    let dir: string;
    const backends: Array<{ name: string; server: Server; port: number; healthy: boolean; checks: string[]; cert: string }> = [];
    let lb: Balancer;
    let ca: string[];

    const listen = (b: (typeof backends)[number], key: string) => {
      b.server = createServer({ key, cert: b.cert }, (req, res) => {
        if (req.url === "/healthz") b.checks.push(`${req.method} ${req.url} host=${req.headers.host ?? ""}`);
        const status = req.url === "/healthz" && !b.healthy ? 503 : 200;
        res.writeHead(status, { "x-edgetrust-instance": b.name, connection: "close" }).end();
      });
      return new Promise<void>((r) => b.server.listen(b.port, "127.0.0.1", r));
    };

    beforeAll(async () => {
      dir = mkdtempSync(join(tmpdir(), "et-haproxy-test-"));
      for (const name of ["ca1", "ca2"]) {
        const [k, c] = [join(dir, `${name}.key`), join(dir, `${name}.pem`)];
        execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", k, "-out", c, "-subj", `/CN=${name}`, "-days", "1"], { stdio: "ignore" });
        const b = { name, server: undefined as unknown as Server, port: 0, healthy: true, checks: [], cert: readFileSync(c, "utf8") };
        await listen(b, readFileSync(k, "utf8"));
        b.port = (b.server.address() as { port: number }).port;
        backends.push(b);
      }
      ca = backends.map((b) => b.cert);
      lb = await startHaproxy(backends.map((b) => ({ host: "127.0.0.1", port: b.port })));
    });

    afterAll(async () => {
      await lb?.stop();
      for (const b of backends) b.server.close();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    /** One request on a new connection through the balancer: which backend answered, and whose certificate the client saw. */
    const hit = () => new Promise<{ instance: string; cn: string }>((resolve, reject) => {
      const req = request(`${lb.url}/`, { ca, agent: false, checkServerIdentity: () => undefined }, (res) => {
        const cn = String((res.socket as TLSSocket).getPeerCertificate().subject.CN);
        res.resume();
        res.on("end", () => resolve({ instance: String(res.headers["x-edgetrust-instance"]), cn }));
      });
      req.on("error", reject);
      req.end();
    });
    const spread = async (n: number) => {
      const seen: Record<string, number> = {};
      for (let i = 0; i < n; i++) {
        const h = await hit();
        // TCP mode: the TLS session is the backend's own (its certificate), nothing ends TLS on the balancer.
        expect(h.cn).toBe(h.instance);
        seen[h.instance] = (seen[h.instance] ?? 0) + 1;
      }
      return seen;
    };
    /** Poll until `check` holds (HAProxy's check interval is 2 s): a liveness bound, not a timing assertion. */
    const eventually = async (what: string, check: () => Promise<boolean>, boundMs = 45_000) => {
      const end = Date.now() + boundMs;
      while (!(await check())) {
        if (Date.now() > end) throw new Error(`${what}: not within ${boundMs} ms`);
        await new Promise((r) => setTimeout(r, 250));
      }
    };

    it("TLS passes through to each process; new connections go round robin to both (no stickiness)", async () => {
      const seen = await spread(8);
      expect(seen).toEqual({ ca1: 4, ca2: 4 });
      // Health checks are TLS requests for GET /healthz (what `ca serve` answers when its store and issuing CA are usable).
      await eventually("a health check on each process", () => Promise.resolve(backends.every((b) => b.checks.length > 0)));
      for (const b of backends) expect(b.checks[0]).toBe("GET /healthz host=localhost");
    });

    it("a process whose /healthz fails is taken out, and back in once it passes again", async () => {
      const ca2 = backends[1] as (typeof backends)[number];
      ca2.healthy = false;
      await eventually("ca2 taken out", async () => (await spread(4)).ca2 === undefined);
      expect(await spread(6)).toEqual({ ca1: 6 });
      ca2.healthy = true;
      await eventually("ca2 back in", async () => ((await spread(4)).ca2 ?? 0) > 0);
    }, 120_000);

    it("a connection to a process that died is retried on another one before any health check notices", async () => {
      const ca2 = backends[1] as (typeof backends)[number];
      await new Promise<void>((r) => ca2.server.close(() => r()));
      // Right after the death: HAProxy still counts ca2 up, its connects are refused, retries + redispatch move them.
      expect(await spread(6)).toEqual({ ca1: 6 });
    });
  });
});
