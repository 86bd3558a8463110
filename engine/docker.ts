import { request } from "node:http";
import { StringDecoder } from "node:string_decoder";
import { EdgeTrustError } from "../common/index.js";

/**
 * A small typed client for the Docker Engine API over its unix socket. Only what the agent and the identity daemon need: inspect and pull
 * images by digest, and the container lifecycle. Every response is checked; failures carry Docker's own message.
 */
interface DockerOptions {
  socketPath: string;
  apiVersion?: string;
  /** Per-request timeout for short calls (pulls stream without one). */
  timeoutMs?: number;
}

interface ImageInspect {
  Id: string;
  RepoDigests: string[] | null;
  RepoTags: string[] | null;
}

interface ContainerSummary {
  Id: string;
  Names: string[];
  Image: string;
  ImageID: string;
  State: string;
  Labels: Record<string, string>;
}

interface ContainerInspect {
  Id: string;
  Name: string;
  Image: string;
  State: { Status: string; Running: boolean; ExitCode: number; Pid: number; StartedAt: string; FinishedAt: string };
  Config: { Labels: Record<string, string>; User: string; Image: string };
  HostConfig: Record<string, unknown>;
  RestartCount: number;
}

export interface PullProgress {
  status: string;
  id?: string;
  progress?: string;
}

/** One message of the engine's event stream (`GET /events`), as far as edgetrust reads it. */
export interface EngineEvent {
  Type: string;
  Action: string;
  Actor: { ID: string; Attributes?: Record<string, string> };
  timeNano?: number;
}

/** A live `GET /events` subscription: `ended` settles (never rejects) with why the stream stopped. */
export interface EventSubscription {
  ended: Promise<string>;
  close(): void;
}

class DockerApiError extends EdgeTrustError {
  readonly httpStatus: number;
  constructor(httpStatus: number, method: string, path: string, message: string) {
    super(httpStatus === 404 ? "NOT_FOUND" : httpStatus === 409 ? "CONFLICT" : "UNAVAILABLE", `docker ${method} ${path.split("?")[0]}: ${message}`);
    this.httpStatus = httpStatus;
  }
}

/** The engine's `{message}` from an error body, else the body as text. */
function engineMessage(text: string): string {
  try {
    return (JSON.parse(text) as { message?: string }).message ?? text.trim();
  } catch {
    return text.trim();
  }
}

export class DockerClient {
  private readonly socketPath: string;
  private readonly prefix: string;
  private readonly timeoutMs: number;

  constructor(opts: DockerOptions) {
    this.socketPath = opts.socketPath;
    this.prefix = `/v${opts.apiVersion ?? "1.41"}`;
    this.timeoutMs = opts.timeoutMs ?? 30_000;
  }

  private raw(method: string, path: string, body?: unknown, onLine?: (line: string) => void): Promise<{ status: number; text: string; body: Buffer }> {
    return new Promise((resolve, reject) => {
      const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
      const req = request(
        {
          socketPath: this.socketPath,
          method,
          path: this.prefix + path,
          headers: payload ? { "content-type": "application/json", "content-length": payload.length } : {},
          timeout: onLine ? 0 : this.timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = [];
          let pending = "";
          res.on("data", (chunk: Buffer) => {
            chunks.push(chunk);
            if (onLine) {
              pending += chunk.toString("utf8");
              let nl: number;
              while ((nl = pending.indexOf("\n")) >= 0) {
                const line = pending.slice(0, nl).trim();
                pending = pending.slice(nl + 1);
                if (line) onLine(line);
              }
            }
          });
          res.on("end", () => {
            if (onLine && pending.trim()) onLine(pending.trim());
            const body = Buffer.concat(chunks);
            resolve({ status: res.statusCode ?? 0, text: body.toString("utf8"), body });
          });
          res.on("error", reject);
        },
      );
      req.on("timeout", () => req.destroy(new Error(`timed out after ${this.timeoutMs} ms`)));
      req.on("error", (e) =>
        reject(new EdgeTrustError("UNAVAILABLE", `docker engine at ${this.socketPath} unreachable: ${e.message}`, {
          hint: "start it with `make setup` (scripts/setup.sh services)",
          cause: e,
        })),
      );
      if (payload) req.write(payload);
      req.end();
    });
  }

  private async call<T>(method: string, path: string, body?: unknown, ok: number[] = [200, 201, 204]): Promise<T> {
    const { status, text } = await this.raw(method, path, body);
    if (!ok.includes(status)) {
      let message = text.trim();
      try {
        message = (JSON.parse(text) as { message?: string }).message ?? message;
      } catch {
        /* plain-text error body */
      }
      throw new DockerApiError(status, method, path, message || `HTTP ${status}`);
    }
    return (text ? JSON.parse(text) : undefined) as T;
  }

  async ping(): Promise<void> {
    const { status } = await this.raw("GET", "/_ping");
    if (status !== 200) throw new EdgeTrustError("UNAVAILABLE", `docker engine answered ${status} to ping`);
  }

  async inspectImage(ref: string): Promise<ImageInspect | undefined> {
    try {
      return await this.call<ImageInspect>("GET", `/images/${encodeURIComponent(ref)}/json`);
    } catch (e) {
      if (e instanceof DockerApiError && e.httpStatus === 404) return undefined;
      throw e;
    }
  }

  /**
   * Pull `repository@sha256:...`. The engine answers 200 and then streams progress as JSON lines for as long as the pull
   * takes; an `error` line inside that stream (a layer that fails verification, a registry gone mid-pull) is how a
   * failed pull is reported, so the first one fails the pull with the engine's message. The stream is read line by
   * line and not kept (a large image's progress is megabytes).
   */
  async pull(repository: string, digest: string, onProgress?: (p: PullProgress) => void): Promise<void> {
    let failure: string | undefined;
    const path = `/images/create?fromImage=${encodeURIComponent(repository)}&tag=${encodeURIComponent(digest)}`;
    const { status, text } = await this.stream("POST", path, (line) => {
      let msg: PullProgress & { error?: string; errorDetail?: { message?: string } };
      try {
        msg = JSON.parse(line) as typeof msg;
      } catch {
        return; // non-JSON progress noise
      }
      if (msg.error || msg.errorDetail?.message) failure ??= msg.errorDetail?.message || msg.error;
      else if (!failure) onProgress?.(msg);
    });
    if (status !== 200) throw new DockerApiError(status, "POST", path, engineMessage(text) || `HTTP ${status}`);
    if (failure) throw new DockerApiError(502, "POST", path, failure);
  }

  /**
   * A streamed answer: with status 200 each line goes to `onLine` as it arrives and nothing is kept; any other status
   * keeps the body (an error message, cut at 64 KiB). A line longer than 1 MiB without a newline ends the call.
   */
  private stream(method: string, path: string, onLine: (line: string) => void): Promise<{ status: number; text: string }> {
    const MAX_LINE = 1 << 20;
    const MAX_ERROR = 64 << 10;
    return new Promise((resolve, reject) => {
      const req = request({ socketPath: this.socketPath, method, path: this.prefix + path, timeout: 0 }, (res) => {
        const status = res.statusCode ?? 0;
        // Chunks split multi-byte characters; the decoder carries the partial one over.
        const decoder = new StringDecoder("utf8");
        let pending = "";
        const lines = (text: string): void => {
          pending += text;
          let nl: number;
          while ((nl = pending.indexOf("\n")) >= 0) {
            const line = pending.slice(0, nl).trim();
            pending = pending.slice(nl + 1);
            if (line) onLine(line);
          }
          if (pending.length > MAX_LINE) res.destroy(new Error(`a line of the engine's answer passed ${MAX_LINE} bytes`));
        };
        res.on("data", (chunk: Buffer) => {
          if (status === 200) lines(decoder.write(chunk));
          else if (pending.length < MAX_ERROR) pending += decoder.write(chunk);
        });
        res.on("end", () => {
          if (status !== 200) {
            resolve({ status, text: (pending + decoder.end()).slice(0, MAX_ERROR) });
            return;
          }
          lines(decoder.end());
          if (pending.trim()) onLine(pending.trim());
          resolve({ status, text: "" });
        });
        res.on("error", (e) => reject(new EdgeTrustError("UNAVAILABLE", `docker ${method} ${path.split("?")[0]}: the answer broke off: ${e.message}`, { cause: e })));
      });
      req.on("error", (e) =>
        reject(new EdgeTrustError("UNAVAILABLE", `docker engine at ${this.socketPath} unreachable: ${e.message}`, {
          hint: "start it with `make setup` (scripts/setup.sh services)",
          cause: e,
        })),
      );
      req.end();
    });
  }

  async createContainer(name: string, spec: Record<string, unknown>): Promise<string> {
    const res = await this.call<{ Id: string }>("POST", `/containers/create?name=${encodeURIComponent(name)}`, spec);
    return res.Id;
  }

  async startContainer(id: string): Promise<void> {
    await this.call("POST", `/containers/${encodeURIComponent(id)}/start`, undefined, [204, 304]);
  }

  async stopContainer(id: string, timeoutSeconds = 5): Promise<void> {
    await this.call("POST", `/containers/${encodeURIComponent(id)}/stop?t=${timeoutSeconds}`, undefined, [204, 304]);
  }

  async removeContainer(id: string, force = true): Promise<void> {
    try {
      await this.call("DELETE", `/containers/${encodeURIComponent(id)}?force=${force}&v=true`, undefined, [204]);
    } catch (e) {
      if (e instanceof DockerApiError && e.httpStatus === 404) return;
      // Someone else's removal of the same container is under way: done once it is gone.
      if (e instanceof DockerApiError && e.httpStatus === 409 && /already in progress/.test(e.message)) {
        for (let i = 0; i < 100 && (await this.inspectContainer(id)); i++) await new Promise((r) => setTimeout(r, 100));
        if (!(await this.inspectContainer(id))) return;
      }
      throw e;
    }
  }

  async inspectContainer(id: string): Promise<ContainerInspect | undefined> {
    try {
      return await this.call<ContainerInspect>("GET", `/containers/${encodeURIComponent(id)}/json`);
    } catch (e) {
      if (e instanceof DockerApiError && e.httpStatus === 404) return undefined;
      throw e;
    }
  }

  async listContainers(labelFilter: Record<string, string | true>): Promise<ContainerSummary[]> {
    const label = Object.entries(labelFilter).map(([k, v]) => (v === true ? k : `${k}=${v}`));
    const filters = encodeURIComponent(JSON.stringify({ label }));
    return this.call<ContainerSummary[]>("GET", `/containers/json?all=true&filters=${filters}`);
  }

  /**
   * Subscribe to the engine's event stream. Resolves once the engine has answered (from then on no event matching
   * `filters` is missed), so a caller may list the current state after this and apply events on top of it.
   */
  events(filters: Record<string, string[]>, onEvent: (e: EngineEvent) => void): Promise<EventSubscription> {
    const path = `${this.prefix}/events?filters=${encodeURIComponent(JSON.stringify(filters))}`;
    return new Promise((resolve, reject) => {
      let end: (why: string) => void = () => undefined;
      const ended = new Promise<string>((r) => { end = r; });
      const req = request({ socketPath: this.socketPath, method: "GET", path }, (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          reject(new DockerApiError(res.statusCode ?? 0, "GET", "/events", `HTTP ${res.statusCode}`));
          return;
        }
        let pending = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => {
          pending += chunk;
          let nl: number;
          while ((nl = pending.indexOf("\n")) >= 0) {
            const line = pending.slice(0, nl).trim();
            pending = pending.slice(nl + 1);
            if (!line) continue;
            try {
              onEvent(JSON.parse(line) as EngineEvent);
            } catch (e) {
              // An event we cannot read is an event we may have missed: the subscription is no longer trustworthy.
              req.destroy(new Error(`unreadable event: ${(e as Error).message}`));
            }
          }
        });
        res.on("end", () => end("the engine closed the event stream"));
        res.on("close", () => end("the event stream closed"));
        res.on("error", (e) => end(`the event stream failed: ${e.message}`));
        resolve({ ended, close: () => req.destroy() });
      });
      req.on("error", (e) => {
        end(`the event stream failed: ${e.message}`);
        reject(new EdgeTrustError("UNAVAILABLE", `docker engine at ${this.socketPath} unreachable: ${e.message}`, { cause: e }));
      });
      req.end();
    });
  }

  async waitContainer(id: string): Promise<number> {
    const { status, text } = await this.raw("POST", `/containers/${encodeURIComponent(id)}/wait`, undefined, () => undefined);
    if (status !== 200) throw new DockerApiError(status, "POST", "/containers/wait", text);
    return (JSON.parse(text) as { StatusCode: number }).StatusCode;
  }

  /** Container output (stdout+stderr, multiplexed frames decoded). */
  async logs(id: string): Promise<string> {
    const { status, text, body } = await this.raw("GET", `/containers/${encodeURIComponent(id)}/logs?stdout=true&stderr=true`);
    if (status !== 200) throw new DockerApiError(status, "GET", "/containers/logs", text);
    // Without a TTY the stream is multiplexed: [stream, 0, 0, 0, size (uint32 BE)] then `size` bytes.
    const out: Buffer[] = [];
    for (let off = 0; off + 8 <= body.length; ) {
      const size = body.readUInt32BE(off + 4);
      out.push(body.subarray(off + 8, off + 8 + size));
      off += 8 + size;
    }
    return Buffer.concat(out).toString("utf8");
  }
}
