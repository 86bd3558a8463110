import { randomBytes } from "node:crypto";
import type { Client } from "aedes";
import { EdgeTrustError, isEdgeTrustError } from "../common/index.js";
import { desiredPatchTopic, methodRequestTopic, parseTopic, twinResponseTopic } from "./dialect.js";
import type { Reject } from "./rejection.js";
import type { HubStore } from "./store.js";
import { patchReportedAndForward } from "./twin-upstream.js";
import type { ClientIdentity } from "./verify.js";

interface TwinsAndMethodsOptions {
  store: HubStore;
  /** The live connections by identity key (owned by the hub). */
  clients: ReadonlyMap<string, Client>;
  methodTimeoutMs?: number;
  /** With an upstream: reported patches are queued in its outbox (prefix, route priority and TTL), then `kick`ed. */
  forwardReported?: { prefix: string; priority: number; ttlSeconds: number; kick: () => void };
  reject: Reject;
}

/**
 * The IoT Hub twin and direct-method dialect, served by the hub itself: twin reads and reported patches, desired
 * patches pushed to a connection, method requests and their answers. Everything is answered on the identity's own
 * connection only; a method answer counts only from the connection it was sent to, under the hub's request id.
 */
export class TwinsAndMethods {
  private readonly pending = new Map<string, { resolve: (r: { status: number; payload: Buffer }) => void; timer: NodeJS.Timeout }>();

  constructor(private readonly o: TwinsAndMethodsOptions) {}

  get methodTimeoutMs(): number {
    return this.o.methodTimeoutMs ?? 30_000;
  }

  /** A client's publish to `$iothub/...` (already authorized). */
  onClientMessage(client: Client, id: ClientIdentity, topic: string, payload: Buffer): void {
    const t = parseTopic(topic);
    switch (t.kind) {
      case "twin-get": {
        const tw = this.o.store.getTwin(id.key);
        const body = { desired: { ...tw.desired, $version: tw.desiredVersion }, reported: { ...tw.reported, $version: tw.reportedVersion } };
        writeTo(client, twinResponseTopic(200, t.rid), JSON.stringify(body));
        return;
      }
      case "twin-reported": {
        const patch = jsonObject(payload);
        if (!patch) {
          writeTo(client, twinResponseTopic(400, t.rid), JSON.stringify({ message: "reported patch must be a JSON object" }));
          return;
        }
        const fwd = this.o.forwardReported;
        let v: number;
        try {
          v = patchReportedAndForward(this.o.store, id, patch, fwd);
        } catch (e) {
          if (!isEdgeTrustError(e, "HUB_OUTBOX_FULL")) throw e;
          writeTo(client, twinResponseTopic(503, t.rid), JSON.stringify({ message: "the hub cannot forward reported properties now (outbox full); not applied" }));
          return;
        }
        fwd?.kick();
        writeTo(client, twinResponseTopic(204, t.rid, v), "");
        return;
      }
      case "method-response": {
        const k = `${id.key}\u0000${t.rid}`;
        const p = this.pending.get(k);
        if (p) {
          this.pending.delete(k);
          clearTimeout(p.timer);
          p.resolve({ status: t.status, payload });
        }
        return;
      }
      default:
        this.o.reject({ stage: "publish", reason: "iothub-unsupported", detail: `${topic.slice(0, 80)} is not handled`, identity: id.key });
    }
  }

  /** The method request goes to that connection only, under a request id the hub makes (never the caller's). */
  callMethod(identity: string, method: string, payload: Buffer, timeoutMs: number): Promise<{ status: number; payload: Buffer }> {
    const client = this.o.clients.get(identity);
    if (!client) return Promise.reject(new EdgeTrustError("NOT_FOUND", `${identity} is not connected`));
    const rid = randomBytes(8).toString("hex");
    const k = `${identity}\u0000${rid}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(k);
        reject(new EdgeTrustError("HUB_METHOD_TIMEOUT", `method ${method} on ${identity} did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(k, { timer, resolve });
      writeTo(client, methodRequestTopic(method, rid), payload);
    });
  }

  /** Patch an identity's desired properties; a connected client gets the patch on its own connection. */
  updateDesired(identity: string, patch: Record<string, unknown>): number {
    const v = this.o.store.patchDesired(identity, patch);
    this.pushDesired(identity, patch, v);
    return v;
  }

  pushDesired(identity: string, patch: Record<string, unknown>, version: number): void {
    const client = this.o.clients.get(identity);
    if (client) writeTo(client, desiredPatchTopic(version), JSON.stringify({ ...patch, $version: version }));
  }

  /** Stop waiting for method answers (the hub stops). */
  stop(): void {
    for (const p of this.pending.values()) clearTimeout(p.timer);
    this.pending.clear();
  }
}

/** A twin patch: the payload as a JSON object, or undefined when it is not one (not JSON, an array, null, a scalar). */
export function jsonObject(payload: Buffer): Record<string, unknown> | undefined {
  let v: unknown;
  try {
    v = JSON.parse(payload.toString("utf8"));
  } catch {
    return undefined;
  }
  return typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
}

function writeTo(client: Client, topic: string, payload: Buffer | string): void {
  client.publish({ cmd: "publish", topic, payload: Buffer.isBuffer(payload) ? payload : Buffer.from(payload), qos: 0, retain: false, dup: false }, () => undefined);
}
