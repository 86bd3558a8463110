import { appendFileSync, existsSync, readFileSync } from "node:fs";
import { EdgeTrustError, httpCall, isEdgeTrustError, refusal, writeFileAtomic, type HttpAnswer } from "../common/index.js";
import type { AgentReport } from "./agent.js";

/** TLS material for the device identity: PEM for development, or the HSM engine options from hsm/'s TLS key source. */
export interface DeviceTls {
  cert: string;
  key?: string;
  privateKeyEngine?: string;
  privateKeyIdentifier?: string;
  /** The cloud CA's root(s). */
  ca: string;
}

function isJson(text: string): boolean {
  if (!text) return true;
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

/** The agent's view of ca-service: fetch the deployment for this device, send reports; both over mTLS. */
export class CloudClient {
  constructor(
    private readonly baseUrl: string,
    /** Or a function asked before every request, so a renewed certificate and a rotated key are taken up. */
    private readonly tls: DeviceTls | (() => DeviceTls | Promise<DeviceTls>),
    private readonly timeoutMs = 15_000,
  ) {}

  private async call(method: string, path: string, body?: unknown): Promise<HttpAnswer> {
    const url = new URL(path, this.baseUrl);
    const tls = typeof this.tls === "function" ? await this.tls() : this.tls;
    return httpCall({
      method, url, body, timeoutMs: this.timeoutMs, peer: `cloud at ${url.origin}`,
      tls: {
        ca: tls.ca,
        cert: tls.cert,
        ...(tls.key ? { key: tls.key } : {}),
        ...(tls.privateKeyEngine ? { privateKeyEngine: tls.privateKeyEngine, privateKeyIdentifier: tls.privateKeyIdentifier } : {}),
      },
    });
  }

  /** The agent retries what is not its own fault; the code follows the status (a 400 report is dropped, see ReportQueue). */
  private static refused(a: HttpAnswer, what: string): EdgeTrustError {
    return refusal(a, {
      peerCode: false,
      fallback: (status) => (status === 400 ? "INVALID_INPUT" : status === 401 ? "UNAUTHENTICATED" : status === 403 ? "FORBIDDEN" : "UNAVAILABLE"),
      message: (detail) => `${what}: ${detail ?? (isJson(a.text) ? `HTTP ${a.status}` : a.text.slice(0, 200))}`,
    });
  }

  /** The newest deployment targeting this device, or undefined when there is none. */
  async fetchDeployment(): Promise<{ deploymentId: string; version: number; jws: string } | undefined> {
    const r = await this.call("GET", "/v1/device/deployment");
    if (r.status === 204) return undefined;
    if (r.status !== 200) throw CloudClient.refused(r, "fetching the deployment");
    if (!r.text || !isJson(r.text)) throw new EdgeTrustError("UNAVAILABLE", "fetching the deployment: the cloud answered 200 with no JSON");
    return JSON.parse(r.text) as { deploymentId: string; version: number; jws: string };
  }

  async sendReport(report: AgentReport): Promise<void> {
    const r = await this.call("POST", "/v1/device/reports", report);
    if (r.status !== 202) throw CloudClient.refused(r, "sending a report");
  }
}

/**
 * Reports survive being offline: appended to a JSON-lines file as they happen, sent in order when the cloud answers,
 * and removed only once accepted. A report the cloud refuses as malformed (400) is dropped so it cannot block the rest.
 */
export class ReportQueue {
  constructor(
    private readonly file: string,
    private readonly send: (r: AgentReport) => Promise<void>,
    private readonly maxQueued = 10_000,
  ) {}

  push(r: AgentReport): void {
    if (this.pending().length >= this.maxQueued) return;
    appendFileSync(this.file, JSON.stringify(r) + "\n", { mode: 0o600 });
  }

  pending(): AgentReport[] {
    if (!existsSync(this.file)) return [];
    return readFileSync(this.file, "utf8").split("\n").filter(Boolean).flatMap((l) => {
      try {
        return [JSON.parse(l) as AgentReport];
      } catch {
        return [];
      }
    });
  }

  /** Send what is queued, oldest first; stops at the first failure and keeps the rest. Returns how many were sent. */
  async flush(): Promise<number> {
    const queued = this.pending();
    let sent = 0;
    for (const r of queued) {
      try {
        await this.send(r);
      } catch (e) {
        if (!isEdgeTrustError(e, "INVALID_INPUT")) break;
      }
      sent++;
    }
    // Re-read: reports pushed while we were sending were appended after the ones sent.
    if (sent > 0) writeFileAtomic(this.file, this.pending().slice(sent).map((r) => JSON.stringify(r) + "\n").join(""), 0o600);
    return sent;
  }
}

/**
 * Ask the cloud for this device's deployment and apply it when it is newer than what runs. The agent verifies it
 * exactly as it would a file: the cloud is a courier, not a signer.
 */
export async function syncDeployment(
  agent: { apply(bytes: string): Promise<{ applied: boolean }>; current(): { version: number } | undefined },
  cloud: CloudClient,
): Promise<{ fetched: boolean; applied: boolean; refused: boolean; version?: number }> {
  const d = await cloud.fetchDeployment();
  if (!d) return { fetched: false, applied: false, refused: false };
  const running = agent.current()?.version ?? 0;
  if (d.version <= running) return { fetched: true, applied: false, refused: false, version: d.version };
  const r = await agent.apply(d.jws);
  // Not applied = refused at verify or rolled back after a failing step: either way the device stayed where it was.
  return { fetched: true, applied: r.applied, refused: !r.applied, version: d.version };
}
