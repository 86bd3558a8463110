import { isEdgeTrustError, type Logger } from "../common/index.js";
import type { DeviceboundRelay } from "./devicebound.js";
import { deviceboundFilter } from "./devicebound.js";
import { cloudFilters, cloudMethodResponseTopic, parseCloudTopic } from "./dialect.js";
import { jsonObject, type TwinsAndMethods } from "./iothub.js";
import type { HubMetrics } from "./metrics.js";
import type { HubStore } from "./store.js";
import type { Upstream } from "./upstream.js";
import type { ClientIdentity, ClientVerifier } from "./verify.js";

interface CloudRelayOptions {
  upstream: Upstream;
  /** Prepended to IoT Hub topics on the cloud broker (e.g. `edgetrust/`). */
  topicPrefix: string;
  /** Read for this device's id when the relay starts and at each message (it follows the Edge CA). */
  verifier: ClientVerifier;
  twins: TwinsAndMethods;
  store: HubStore;
  metrics: HubMetrics;
  /** C2D messages: held and delivered by devicebound.ts. */
  c2d: DeviceboundRelay;
  /** Resolves when the identity is connected, or after `ms` either way (a method waits for its target). */
  whenConnected: (identity: string, ms: number) => Promise<void>;
  methodConnectWaitMs: number;
  log: Logger;
}

/**
 * Cloud → device: direct methods and desired properties from the cloud broker for this device, its modules and the
 * leaf devices connected here, relayed to that identity's connection only; a method's answer goes back upstream.
 */
export class CloudRelay {
  constructor(private readonly o: CloudRelayOptions) {}

  /** Subscribe for this device and its modules (leaf devices are added while they are connected) and start upstream. */
  start(): void {
    const up = this.o.upstream;
    const self = this.o.verifier.deviceId;
    for (const f of [...cloudFilters(self), ...cloudFilters(self, "+"), deviceboundFilter(self, "+")]) up.subscribe(this.o.topicPrefix + f);
    up.on("message", (topic, payload) => this.onCloud(topic, payload));
    up.on("connected", () => this.o.metrics.upstreamUp.set(1));
    up.on("disconnected", () => this.o.metrics.upstreamUp.set(0));
    up.on("delivered", () => this.o.metrics.messagesOut.inc({ destination: "upstream" }));
    up.start();
  }

  /** A leaf device connected here: its cloud messages are relayed while it stays. */
  leafConnected(id: ClientIdentity): void {
    if (id.principal !== "leaf") return;
    for (const f of cloudFilters(id.deviceId)) this.o.upstream.subscribe(this.o.topicPrefix + f);
    // Kept after the leaf disconnects: C2D sent while it is away is held here until it comes back.
    this.o.upstream.subscribe(this.o.topicPrefix + deviceboundFilter(id.deviceId));
  }

  leafDisconnected(id: ClientIdentity): void {
    if (id.principal === "leaf") for (const f of cloudFilters(id.deviceId)) this.o.upstream.unsubscribe(this.o.topicPrefix + f);
  }

  private onCloud(topic: string, payload: Buffer): void {
    const prefix = this.o.topicPrefix;
    if (!topic.startsWith(prefix)) return;
    if (this.o.c2d.fromCloud(topic.slice(prefix.length), payload)) return;
    const t = parseCloudTopic(topic.slice(prefix.length));
    if (!t) {
      this.o.log.debug({ topic: topic.slice(0, 120) }, "cloud message ignored");
      return;
    }
    const self = this.o.verifier.deviceId;
    // Modules exist only on this device; other device ids are leaf devices (subscribed only while connected here).
    if (t.moduleId !== undefined && t.deviceId !== self) return;
    const identity = t.moduleId === undefined ? t.deviceId : `${t.deviceId}/${t.moduleId}`;
    if (t.kind === "method") {
      const answer = (status: number, body: Buffer) => this.o.upstream.publishDirect(prefix + cloudMethodResponseTopic(t.deviceId, t.moduleId, status, t.rid), body);
      this.o.whenConnected(identity, this.o.methodConnectWaitMs).then(() => this.o.twins.callMethod(identity, t.method, payload, this.o.twins.methodTimeoutMs)).then(
        (r) => answer(r.status, r.payload),
        (e: unknown) => {
          const notConnected = isEdgeTrustError(e, "NOT_FOUND");
          answer(notConnected ? 404 : 504, Buffer.from(JSON.stringify({ message: (e as Error).message })));
        },
      );
      this.o.log.info({ identity, method: t.method }, "cloud method relayed");
      return;
    }
    const patch = jsonObject(payload);
    if (!patch) {
      this.o.log.warn({ identity }, "cloud desired patch is not a JSON object; ignored");
      return;
    }
    const body = { ...patch };
    const inBody = body.$version;
    delete body.$version;
    const version = t.version ?? (typeof inBody === "number" && Number.isSafeInteger(inBody) && inBody > 0 ? inBody : undefined);
    const v = this.o.store.applyCloudDesired(identity, body, version);
    if (v === undefined) {
      this.o.log.debug({ identity, version }, "cloud desired patch already applied (duplicate or stale); ignored");
      return;
    }
    this.o.twins.pushDesired(identity, body, v);
  }
}
