import type { Agent} from "node:https";
import { request } from "node:https";

/** One answer from the CA: status, the process that answered (x-edgetrust-instance), the parsed JSON body. */
export interface Reply {
  status: number;
  instance: string;
  json: Record<string, unknown>;
  /** `Retry-After` in seconds, when the CA sent one (a transient refusal: store unreachable, rate limited). */
  retryAfter?: number;
}

/** A network-level failure (reset, refused, timeout): always worth a retry. */
export class NetworkError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
  }
}

interface CallOptions {
  headers?: Record<string, string>;
  body?: unknown;
  timeoutMs?: number;
}

/** One HTTPS request on `agent` (which carries the trust anchor and, for mTLS, the device's certificate and key). */
export function call(agent: Agent, method: string, url: string, opts: CallOptions = {}): Promise<Reply> {
  const payload = opts.body === undefined ? undefined : Buffer.from(JSON.stringify(opts.body));
  const headers: Record<string, string> = { ...(opts.headers ?? {}) };
  if (payload) {
    headers["content-type"] = "application/json";
    headers["content-length"] = String(payload.length);
  }
  return new Promise((resolve, reject) => {
    const req = request(url, { method, agent, headers, timeout: opts.timeoutMs ?? 30_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("error", (e: NodeJS.ErrnoException) => reject(new NetworkError(e.code ?? "ERESPONSE", e.message)));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString();
        let json: Record<string, unknown> = {};
        try {
          json = text ? (JSON.parse(text) as Record<string, unknown>) : {};
        } catch {
          json = { detail: text.slice(0, 200) };
        }
        const inst = res.headers["x-edgetrust-instance"];
        const ra = Number(res.headers["retry-after"]);
        resolve({ status: res.statusCode ?? 0, instance: typeof inst === "string" ? inst : "", json, ...(res.headers["retry-after"] !== undefined && Number.isFinite(ra) ? { retryAfter: ra } : {}) });
      });
    });
    req.on("timeout", () => req.destroy(new NetworkError("ETIMEDOUT", `${method} ${url}: no answer within ${opts.timeoutMs ?? 30_000} ms`)));
    req.on("error", (e: NodeJS.ErrnoException) => reject(e instanceof NetworkError ? e : new NetworkError(e.code ?? "ENETWORK", e.message)));
    req.end(payload);
  });
}

/** The stable code of a refused answer: the problem+json `code`, else HTTP_<status>. */
export function codeOf(r: Reply): string {
  return typeof r.json.code === "string" ? r.json.code : `HTTP_${r.status}`;
}
