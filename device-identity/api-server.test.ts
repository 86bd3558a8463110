import { request } from "node:http";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EdgeTrustError } from "../common/index.js";
import { answerShapes, attestedModuleBody, eventsQuery, nameParams } from "../identity-api/index.js";
import { Answer, ApiServer } from "./api-server.js";
import { HeapBudget } from "./heap-budget.js";
import { silentLogger } from "./test-helpers.js";

/** What the sockets answered when fastify served them, request by request: the node:http server must answer the same. */
function call(socketPath: string, method: string, path: string, body?: string, headers: Record<string, string> = {}): Promise<{ status: number; type: string; json: Record<string, unknown> | undefined }> {
  return new Promise((resolve, reject) => {
    const h: Record<string, string | number> = { ...headers };
    if (body !== undefined) {
      h["content-type"] ??= "application/json";
      h["content-length"] = Buffer.byteLength(body);
    }
    const req = request({ socketPath, method, path, headers: h }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        resolve({ status: res.statusCode ?? 0, type: String(res.headers["content-type"] ?? ""), json: text ? JSON.parse(text) as Record<string, unknown> : undefined });
      });
    });
    req.on("error", reject);
    req.end(body);
  });
}

const MODULE = { name: "sensor", containerId: "a".repeat(64), imageRepository: "127.0.0.1:5000/x", imageDigest: `sha256:${"b".repeat(64)}`, manifestVersion: 3, deploymentId: "d1", uid: 1000, gid: 1000 };

describe("the daemon's API server (node:http, routes validated by the identity API's schemas) answers as fastify did", () => {
  const dir = mkdtempSync(join(tmpdir(), "et-api-"));
  const path = join(dir, "api.sock");
  const seen: unknown[] = [];
  const server = new ApiServer({
    bodyLimit: 1024,
    log: silentLogger(),
    routes: [
      { method: "POST", path: "/v1/modules", body: attestedModuleBody, answers: { 201: answerShapes.moduleView }, handler: async (req) => { seen.push(req.body); return new Answer(201, { ...(req.body as object), registeredAt: "t", socketPath: "/s" }); } },
      { method: "GET", path: "/v1/modules/:name", params: nameParams, handler: async (req) => { if ((req.params as { name: string }).name === "gone") throw new EdgeTrustError("NOT_FOUND", "module gone is not registered"); return req.params; } },
      { method: "GET", path: "/v1/events", query: eventsQuery, handler: async (req) => req.query },
      { method: "GET", path: "/v1/boom", handler: async () => { throw new Error("secret detail"); } },
    ],
  });
  beforeAll(() => server.listen(path));
  afterAll(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("an answer carries only its schema's properties (uid and gid stay in the daemon), 201 as the route says", async () => {
    const r = await call(path, "POST", "/v1/modules", JSON.stringify(MODULE));
    expect(r.status).toBe(201);
    expect(r.type).toMatch(/^application\/json/);
    expect(r.json).not.toHaveProperty("uid");
    expect(r.json).not.toHaveProperty("gid");
    expect(Object.keys(r.json ?? {})).toEqual(["name", "containerId", "imageRepository", "imageDigest", "manifestVersion", "deploymentId", "registeredAt", "socketPath"]);
  });

  it("a field that breaks the schema is a 400 problem naming it; unknown properties are dropped, strings coerced as fastify's ajv did", async () => {
    const bad = await call(path, "POST", "/v1/modules", JSON.stringify({ ...MODULE, containerId: "../../etc" }));
    expect(bad.status).toBe(400);
    expect(bad.type).toMatch(/^application\/problem\+json/);
    expect(bad.json).toMatchObject({ code: "INVALID_INPUT", detail: expect.stringMatching(/^body\/containerId: must match pattern/) });
    const missing = await call(path, "POST", "/v1/modules", JSON.stringify({ name: "x" }));
    expect(missing.json?.detail).toMatch(/^body\/containerId: is required$/);
    seen.length = 0;
    expect((await call(path, "POST", "/v1/modules", JSON.stringify({ ...MODULE, manifestVersion: "3", extra: true }))).status).toBe(201);
    expect(seen[0]).toEqual(MODULE);
    expect((await call(path, "GET", "/v1/events?after=4")).json).toEqual({ after: 4, waitSeconds: 0 });
    expect((await call(path, "GET", "/v1/events?after=-1")).json?.detail).toMatch(/^querystring\/after: must be >= 0/);
    expect((await call(path, "GET", "/v1/modules/NOT..valid")).json?.detail).toMatch(/^params\/name: must match pattern/);
  });

  it("bodies: JSON only, never empty, no prototype keys, within the limit", async () => {
    expect((await call(path, "POST", "/v1/modules", "{nope")).json).toMatchObject({ code: "INVALID_INPUT", detail: "Body is not valid JSON but content-type is set to 'application/json'" });
    expect((await call(path, "POST", "/v1/modules", "")).json?.detail).toBe("Body cannot be empty when content-type is set to 'application/json'");
    expect((await call(path, "POST", "/v1/modules", JSON.stringify(MODULE), { "content-type": "application/xml" })).json).toMatchObject({ code: "INVALID_INPUT", detail: "Unsupported Media Type" });
    const poisoned = await call(path, "POST", "/v1/modules", `{"__proto__": {"isAdmin": true}, ${JSON.stringify(MODULE).slice(1)}`);
    expect(poisoned.status).toBe(400);
    const big = await call(path, "POST", "/v1/modules", JSON.stringify({ ...MODULE, deploymentId: "d".repeat(2000) }));
    expect(big.status).toBe(413);
    expect(big.json).toMatchObject({ code: "TOO_LARGE" });
  });

  it("no route is a 404 problem naming it; a handler's error keeps its code; an unexpected one is INTERNAL without its message", async () => {
    expect((await call(path, "GET", "/v2/nothing?x=1")).json).toMatchObject({ code: "NOT_FOUND", detail: "no route GET /v2/nothing", instance: "/v2/nothing" });
    expect((await call(path, "DELETE", "/v1/events")).status).toBe(404);
    expect((await call(path, "GET", "/v1/modules/gone")).json).toMatchObject({ code: "NOT_FOUND", detail: "module gone is not registered" });
    const boom = await call(path, "GET", "/v1/boom");
    expect(boom.status).toBe(500);
    expect(boom.json).toMatchObject({ code: "INTERNAL", detail: "internal error" });
    expect(JSON.stringify(boom.json)).not.toContain("secret detail");
  });
});

describe("the API server asks the heap budget before each request", () => {
  it("a request that finds the heap over budget runs the full collection first, and is answered", async () => {
    const dir = mkdtempSync(join(tmpdir(), "et-api-heap-"));
    const path = join(dir, "api.sock");
    // The heap as the budget reads it: 12 MB at start, 15 MB (over a 2 MB budget) once the request arrives.
    let used = 12 * 1024 * 1024;
    const order: string[] = [];
    const heapBudget = new HeapBudget(() => { order.push("gc"); used = 12 * 1024 * 1024; }, { budgetBytes: 2 * 1024 * 1024, minIntervalMs: 0, lookIntervalMs: 0, usedHeap: () => used });
    const server = new ApiServer({ bodyLimit: 1024, log: silentLogger(), heapBudget, routes: [{ method: "GET", path: "/v1/ping", handler: async () => { order.push("handler"); return { ok: true }; } }] });
    await server.listen(path);
    try {
      used = 15 * 1024 * 1024;
      expect((await call(path, "GET", "/v1/ping")).json).toEqual({ ok: true });
      // Under budget now: the next request runs no collection.
      expect((await call(path, "GET", "/v1/ping")).status).toBe(200);
      expect(order).toEqual(["gc", "handler", "handler"]);
      expect(heapBudget.collections).toBe(1);
    } finally {
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
