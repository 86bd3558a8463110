import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { parse as parseQuery } from "node:querystring";
import { EdgeTrustError, isEdgeTrustError, validationProblem, type Logger } from "../common/index.js";
import type { answerShapes, WireValidator } from "../identity-api/index.js";
import { runtimeHeapBudget, type HeapBudget } from "./heap-budget.js";

/**
 * The daemon's two unix-socket APIs (management, workload) on node:http with a table of routes, instead of fastify:
 * one fastify instance per socket cost ~1.6 MB of heap each plus the framework, its router, serialiser and schema
 * compiler (issue 14). What fastify did for these routes is kept as it was: requests validated by the identity API's
 * schemas (compiled at build time with fastify's ajv options: identity-api/wire-validators.ts), params first, then body,
 * then query string; JSON bodies only, size-limited, prototype poisoning refused; answers written through their schema's
 * properties (what fast-json-stringify sent: uid/gid never leave the daemon); every failure as problem+json
 * (common/http.ts's mapping, same codes, same details).
 */


type AnswerShape = (typeof answerShapes)[keyof typeof answerShapes];

export interface ApiRequest {
  method: string;
  /** The request target as sent (path and query). */
  url: string;
  params: Record<string, unknown>;
  query: Record<string, unknown>;
  body: unknown;
  /** The connection (the caller check asks the kernel who is at its other end). */
  socket: Socket;
  /** Aborted when the client goes away before the answer (long polls stop waiting). */
  signal: AbortSignal;
}

/** An answer with a status other than 200 (`201`, `204`). */
export class Answer {
  constructor(readonly status: number, readonly body?: unknown) {}
}

export interface Route {
  method: "GET" | "POST" | "DELETE";
  /** `/v1/modules/:name`: `:x` matches one path segment. */
  path: string;
  params?: WireValidator;
  query?: WireValidator;
  body?: WireValidator;
  /** The answer's schema by status: only the properties it declares are sent. */
  answers?: Partial<Record<number, AnswerShape>>;
  handler(req: ApiRequest): Promise<unknown>;
}

interface Compiled {
  route: Route;
  segments: Array<{ literal: string } | { param: string }>;
}

/** find-my-way's default: a longer parameter matches no route. */
const MAX_PARAM_LENGTH = 100;
/** fastify's default keep-alive timeout (node's own is 5 s). */
const KEEP_ALIVE_MS = 72_000;

/** The properties `shape` declares, in its order, recursively: what fast-json-stringify wrote for a response schema. */
export function project(value: unknown, shape: AnswerShape | null | undefined): unknown {
  if (!shape || value === null || typeof value !== "object") return value;
  if ("items" in shape) return Array.isArray(value) ? value.map((v) => project(v, shape.items as AnswerShape)) : value;
  const out: Record<string, unknown> = {};
  const src = value as Record<string, unknown>;
  for (const [k, sub] of Object.entries(shape.keys as Record<string, AnswerShape | null>)) {
    if (src[k] !== undefined) out[k] = project(src[k], sub);
  }
  return out;
}

const INVALID_JSON = "Body is not valid JSON but content-type is set to 'application/json'";

/** JSON.parse refusing `__proto__` and `constructor.prototype` keys (fastify's secure-json-parse, protoAction error). */
function parseJson(text: string): unknown {
  try {
    return JSON.parse(text, function (key, value: unknown) {
      if (key === "__proto__" || (key === "constructor" && value !== null && typeof value === "object" && Object.hasOwn(value, "prototype"))) throw new SyntaxError("forbidden prototype property");
      return value;
    });
  } catch {
    throw new EdgeTrustError("INVALID_INPUT", INVALID_JSON);
  }
}

export interface ApiServerOptions {
  routes: Route[];
  /** Largest request body, bytes (413 beyond). */
  bodyLimit: number;
  log: Logger;
  /**
   * Asked before each request whether the garbage since the last full collection is over budget (heap-budget.ts).
   * Default: the process's budget when node runs with `--expose-gc` (the systemd unit), none otherwise.
   */
  heapBudget?: HeapBudget;
}

export class ApiServer {
  private readonly routes: Compiled[];
  private readonly server: Server;
  private requests = 0;
  private readonly heapBudget: HeapBudget | undefined;

  constructor(private readonly o: ApiServerOptions) {
    this.heapBudget = o.heapBudget ?? runtimeHeapBudget();
    this.routes = o.routes.map((route) => ({
      route,
      segments: route.path.split("/").slice(1).map((s) => (s.startsWith(":") ? { param: s.slice(1) } : { literal: s })),
    }));
    this.server = createServer({ keepAliveTimeout: KEEP_ALIVE_MS }, (req, res) => void this.serve(req, res));
    this.server.keepAliveTimeout = KEEP_ALIVE_MS;
  }

  listen(path: string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(path, () => {
        this.server.off("error", reject);
        resolve();
      });
    });
  }

  /** Stop accepting, close idle keep-alive connections, wait for the requests in flight. */
  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeIdleConnections();
    });
  }

  private match(method: string, path: string): { route?: Route; params?: Record<string, string> } {
    const parts = path.split("/").slice(1);
    for (const c of this.routes) {
      if (c.segments.length !== parts.length) continue;
      const params: Record<string, string> = {};
      let ok = true;
      for (let i = 0; i < parts.length && ok; i++) {
        const seg = c.segments[i] as Compiled["segments"][number];
        const part = parts[i] as string;
        if ("literal" in seg) ok = seg.literal === part;
        else if (part === "" || part.length > MAX_PARAM_LENGTH) ok = false;
        else {
          try {
            params[seg.param] = decodeURIComponent(part);
          } catch {
            ok = false;
          }
        }
      }
      if (ok && (c.route.method === method || (method === "HEAD" && c.route.method === "GET"))) return { route: c.route, params };
    }
    return {};
  }

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    // Before this request's work, after the answers before it were handed to the socket.
    this.heapBudget?.check();
    const id = `req-${(++this.requests).toString(36)}`;
    const url = req.url ?? "/";
    const q = url.indexOf("?");
    const path = q < 0 ? url : url.slice(0, q);
    try {
      const { route, params } = this.match(req.method ?? "GET", path);
      if (!route) {
        req.resume();
        throw new EdgeTrustError("NOT_FOUND", `no route ${req.method} ${path}`);
      }
      const body = await this.readBody(req);
      let abort: AbortController | undefined;
      const request: ApiRequest = {
        method: req.method ?? "GET", url, params: params ?? {}, query: parseQuery(q < 0 ? "" : url.slice(q + 1)) as Record<string, unknown>, body, socket: req.socket,
        // Made only for the routes that wait (an AbortController per request was measurable at load).
        get signal() {
          if (!abort) {
            const a = (abort = new AbortController());
            if (res.writableFinished || res.destroyed) a.abort();
            else res.once("close", () => a.abort());
          }
          return abort.signal;
        },
      };
      // fastify's order: params, body, query string; the first failing part is reported.
      const parts: Array<[WireValidator | undefined, "params" | "body" | "query", string]> = [[route.params, "params", "params"], [route.body, "body", "body"], [route.query, "query", "querystring"]];
      for (const [validate, key, context] of parts) {
        if (!validate) continue;
        const holder = request as unknown as Record<string, unknown>;
        if (holder[key] === undefined) holder[key] = null;
        if (!validate(holder[key])) throw validationProblem(context, validate.errors ?? []);
      }
      const out = await route.handler(request);
      const answer = out instanceof Answer ? out : new Answer(200, out);
      if (answer.status === 204 || answer.body === undefined) {
        res.writeHead(answer.status).end();
        return;
      }
      const text = JSON.stringify(project(answer.body, route.answers?.[answer.status]));
      res.writeHead(answer.status, { "content-type": "application/json; charset=utf-8", "content-length": Buffer.byteLength(text) }).end(text);
    } catch (e) {
      this.fail(res, e, path, id, req.method ?? "GET");
    }
  }

  /** The body as fastify's JSON parser gave it: undefined without one; JSON only; limited; empty JSON refused. */
  private async readBody(req: IncomingMessage): Promise<unknown> {
    const length = req.headers["content-length"];
    const chunked = req.headers["transfer-encoding"] !== undefined;
    if ((length === undefined || length === "0") && !chunked && req.method !== "POST") {
      req.resume();
      return undefined;
    }
    const type = req.headers["content-type"];
    if (length !== undefined && Number(length) > this.o.bodyLimit) {
      req.resume();
      throw new EdgeTrustError("TOO_LARGE", "Request body is too large");
    }
    const limit = this.o.bodyLimit;
    const { chunks, size } = await new Promise<{ chunks: Buffer[]; size: number }>((resolve, reject) => {
      const got: Buffer[] = [];
      let n = 0;
      const onData = (c: Buffer): void => {
        n += c.length;
        if (n > limit) {
          req.off("data", onData);
          req.resume();
          reject(new EdgeTrustError("TOO_LARGE", "Request body is too large"));
        } else got.push(c);
      };
      req.on("data", onData);
      req.once("end", () => resolve({ chunks: got, size: n }));
      req.once("error", reject);
    });
    if (type === undefined) {
      if (size === 0) return undefined;
      throw new EdgeTrustError("INVALID_INPUT", "Unsupported Media Type");
    }
    const text = Buffer.concat(chunks).toString("utf8");
    if (/^text\/plain\s*(;|$)/i.test(type)) return text;
    if (!/^application\/json\s*(;|$)/i.test(type)) throw new EdgeTrustError("INVALID_INPUT", "Unsupported Media Type");
    if (text === "") throw new EdgeTrustError("INVALID_INPUT", "Body cannot be empty when content-type is set to 'application/json'");
    return parseJson(text);
  }

  private fail(res: ServerResponse, error: unknown, path: string, id: string, method: string): void {
    let e: EdgeTrustError;
    if (isEdgeTrustError(error)) e = error;
    else {
      const err = error as Error & { code?: string };
      this.o.log.error({ err: { message: err?.message, code: err?.code }, url: path, method }, "unhandled error");
      e = new EdgeTrustError("INTERNAL", "internal error", { hint: `see the service log for request ${id}` });
    }
    if (e.status >= 500) this.o.log.error({ code: e.code, msg: e.message }, "request failed");
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const headers: Record<string, string | number> = { "content-type": "application/problem+json; charset=utf-8" };
    if (e.retryAfterSeconds !== undefined) headers["retry-after"] = String(Math.max(0, Math.ceil(e.retryAfterSeconds)));
    const text = JSON.stringify(e.toProblem(path));
    headers["content-length"] = Buffer.byteLength(text);
    res.writeHead(e.status, headers).end(text);
  }
}
