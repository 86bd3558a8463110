import { request as httpRequest, type ClientRequest, type IncomingHttpHeaders, type IncomingMessage, type RequestOptions as HttpRequestOptions } from "node:http";
import type * as Https from "node:https";
import type { RequestOptions as HttpsRequestOptions } from "node:https";
import { createRequire } from "node:module";
import type { SecureContext } from "node:tls";
import { EdgeTrustError, readProblem, type ErrorCode } from "./errors.js";

/**
 * node:https (and the TLS module under it) loaded at the first https request: the identity daemon talks to its CA
 * only to renew, and loading them at start was ~0.4 MB of its idle peak RSS (issue 14, device-identity README).
 */
let https: typeof Https | undefined;
function httpsRequest(o: HttpsRequestOptions, onAnswer: (res: IncomingMessage) => void): ClientRequest {
  https ??= createRequire(import.meta.url)("node:https") as typeof Https;
  return https.request(o, onAnswer);
}

/**
 * The one HTTP client of the project's own APIs (the CA, the identity daemon's management socket, the cloud, the CA's
 * CRL): a JSON request, the whole answer read, transport failures as UNAVAILABLE naming the peer, and refusals
 * (problem+json, RFC 9457) as EdgeTrustError with the peer's code, detail and hint. Streaming clients (the Docker Engine
 * API) are not built on it. node:http(s), not fetch: the device daemons run with --lite-mode, which has no WebAssembly
 * for fetch's HTTP parser.
 */
interface HttpCall {
  method: string;
  /** An https:// (or http://) URL, or (with `socketPath`) the path on a Unix socket. */
  url: URL | string;
  socketPath?: string;
  /** Sent as JSON. */
  body?: unknown;
  headers?: Record<string, string>;
  timeoutMs: number;
  signal?: AbortSignal;
  /** TLS settings (ca, cert, key, an engine key, or a ready secure context) for https. */
  tls?: Omit<HttpsRequestOptions, "method" | "headers" | "timeout" | "signal"> & { secureContext?: SecureContext };
  /** Who answers, for error messages: "CA at https://…", "device identity daemon at /run/…". */
  peer: string;
  /** Hint on a transport failure (the peer did not answer at all). */
  unreachableHint?: string;
}

export interface HttpAnswer {
  status: number;
  /** The body as UTF-8 text, and as it came (a CRL is DER). */
  text: string;
  body: Buffer;
  headers: IncomingHttpHeaders;
  /** The peer's clock (HTTP Date), when it sent one. */
  date: Date | undefined;
}

/** One request; resolves with any HTTP status, rejects (UNAVAILABLE) only when the peer did not answer. */
export function httpCall(c: HttpCall): Promise<HttpAnswer> {
  const payload = c.body === undefined ? undefined : Buffer.from(JSON.stringify(c.body));
  const headers = { ...(payload ? { "content-type": "application/json", "content-length": String(payload.length) } : {}), ...(c.headers ?? {}) };
  return new Promise((resolve, reject) => {
    const onAnswer = (res: IncomingMessage) => {
      const chunks: Buffer[] = [];
      res.on("data", (b: Buffer) => chunks.push(b));
      res.on("error", reject);
      res.on("end", () => {
        const date = res.headers.date ? new Date(res.headers.date) : undefined;
        const body = Buffer.concat(chunks);
        resolve({ status: res.statusCode ?? 0, text: body.toString("utf8"), body, headers: res.headers, date });
      });
    };
    let req: ClientRequest;
    if (c.socketPath !== undefined) {
      const o: HttpRequestOptions = { socketPath: c.socketPath, method: c.method, path: String(c.url), timeout: c.timeoutMs, headers: { host: "localhost", ...headers }, ...(c.signal ? { signal: c.signal } : {}) };
      req = httpRequest(o, onAnswer);
    } else {
      const url = new URL(c.url);
      // tls.connect honours `secureContext` (an engine-backed one); @types/node omits it from RequestOptions.
      const o: HttpsRequestOptions & { secureContext?: SecureContext } = {
        ...(c.tls ?? {}),
        protocol: url.protocol, hostname: url.hostname, port: url.port, path: url.pathname + url.search,
        method: c.method, timeout: c.timeoutMs, headers, ...(c.signal ? { signal: c.signal } : {}),
      };
      req = (url.protocol === "http:" ? httpRequest : httpsRequest)(o, onAnswer);
    }
    req.on("timeout", () => req.destroy(new Error(`no answer within ${c.timeoutMs} ms`)));
    req.on("error", (e) => {
      if (e instanceof EdgeTrustError) return reject(e);
      reject(new EdgeTrustError("UNAVAILABLE", `${c.peer} unreachable: ${e.message}`, { ...(c.unreachableHint ? { hint: c.unreachableHint } : {}), cause: e }));
    });
    if (payload) req.write(payload);
    req.end();
  });
}

/**
 * A refusal as an EdgeTrustError: the peer's problem+json code when it names one of ours (else `fallback(status)`),
 * its detail and hint; `details.status` carries the HTTP status (e.g. to tell a permanent refusal from a retryable one).
 */
export function refusal(a: Pick<HttpAnswer, "status" | "text">, o: { fallback: (status: number) => ErrorCode; message: (detail: string | undefined) => string; peerCode?: boolean }): EdgeTrustError {
  const problem = readProblem(a.text);
  const code = (o.peerCode !== false ? problem.code : undefined) ?? o.fallback(a.status);
  return new EdgeTrustError(code, o.message(problem.detail), { ...(problem.hint ? { hint: problem.hint } : {}), details: { status: a.status } });
}
