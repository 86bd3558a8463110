import { request } from "node:http";
import { join } from "node:path";
import { EdgeTrustError, type ErrorCode } from "../common/index.js";
import type { IdentityRegistrar } from "./agent.js";

/** The agent's side of device-identity's root-only management socket. */
export class ManagementSocketRegistrar implements IdentityRegistrar {
  constructor(
    private readonly socketPath: string,
    /** The daemon's workload sockets directory (`device.workloadSocketsDir`). */
    private readonly socketsDir: string,
  ) {}

  workloadSocketDir(module: string): string {
    return join(this.socketsDir, module);
  }

  private call(method: string, path: string, body?: unknown): Promise<{ status: number; json: unknown }> {
    return new Promise((resolve, reject) => {
      const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
      const req = request(
        { socketPath: this.socketPath, method, path, timeout: 15_000, headers: payload ? { "content-type": "application/json", "content-length": payload.length } : {} },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => {
            const text = Buffer.concat(chunks).toString("utf8");
            resolve({ status: res.statusCode ?? 0, json: text ? (JSON.parse(text) as unknown) : undefined });
          });
        },
      );
      req.on("timeout", () => req.destroy(new Error("timed out")));
      req.on("error", (e) =>
        reject(new EdgeTrustError("UNAVAILABLE", `device identity daemon at ${this.socketPath} unreachable: ${e.message}`, { hint: "start it with `edgetrust device run`" })),
      );
      if (payload) req.write(payload);
      req.end();
    });
  }

  private static fail(status: number, json: unknown, what: string): never {
    const p = json as { code?: string; detail?: string } | undefined;
    const code = (p?.code ?? (status === 403 ? "FORBIDDEN" : "UNAVAILABLE")) as ErrorCode;
    throw new EdgeTrustError(code, `${what}: ${p?.detail ?? `HTTP ${status}`}`);
  }

  async register(m: Parameters<IdentityRegistrar["register"]>[0]): Promise<void> {
    const r = await this.call("POST", "/v1/modules", m);
    if (r.status !== 201) ManagementSocketRegistrar.fail(r.status, r.json, `registering module ${m.name}`);
  }

  async deregister(name: string, reason: string): Promise<void> {
    const r = await this.call("DELETE", `/v1/modules/${encodeURIComponent(name)}?reason=${encodeURIComponent(reason.slice(0, 200))}`);
    if (r.status !== 204 && r.status !== 404) ManagementSocketRegistrar.fail(r.status, r.json, `deregistering module ${name}`);
  }

  async registered(): Promise<Array<{ name: string; containerId: string }>> {
    const r = await this.call("GET", "/v1/modules");
    if (r.status !== 200) ManagementSocketRegistrar.fail(r.status, r.json, "listing attested modules");
    return (r.json as { modules: Array<{ name: string; containerId: string }> }).modules;
  }
}
