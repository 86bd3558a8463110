import type { Aedes } from "aedes";
import { isEdgeTrustError, type Logger } from "../common/index.js";
import { inputTopic, parseTopic, telemetryTopic } from "./dialect.js";
import type { HubMetrics } from "./metrics.js";
import type { Redactor } from "./privacy.js";
import { Rejected, type Reject } from "./rejection.js";
import { matchRoutes, type Route } from "./routes.js";
import type { HubStore } from "./store.js";
import type { Upstream } from "./upstream.js";
import type { ClientIdentity, ClientVerifier } from "./verify.js";

export interface RouteOptions {
  priority: number;
  ttlSeconds: number;
}

interface TelemetryRouterOptions {
  routes: Route[];
  routeOptions?: Record<string, Partial<RouteOptions>>;
  defaultRoute: RouteOptions;
  /** Read for this device's id at each message (it follows the Edge CA). */
  verifier: ClientVerifier;
  store: HubStore;
  redactor?: Redactor;
  upstream?: Upstream;
  upstreamTopicPrefix?: string;
  metrics: HubMetrics;
  log: Logger;
  reject: Reject;
  /** A message was written to the outbox for a route. */
  queued: (q: { route: string; topic: string }) => void;
}

/**
 * The routes applied to telemetry a client sends about itself: upstream routes go to the durable outbox (redacted
 * first), module routes to the target module's input on this broker.
 */
export class TelemetryRouter {
  private routes: Route[];
  private broker: Aedes | undefined;

  constructor(private readonly o: TelemetryRouterOptions) {
    this.routes = o.routes;
  }

  /** The broker module routes publish to (set once it is listening). */
  attach(broker: Aedes | undefined): void {
    this.broker = broker;
  }

  /** Replace the routes (a new deployment manifest). */
  setRoutes(routes: Route[]): void {
    this.routes = routes;
  }

  /** Throws Rejected when the outbox is full (the client retries later). */
  route(id: ClientIdentity, topic: string, body: Buffer, qos: 0 | 1 | 2): void {
    const t = parseTopic(topic);
    this.o.log.debug({ identity: id.key, topic, kind: t.kind }, "publish");
    if (t.kind !== "telemetry" || t.deviceId !== id.deviceId || t.moduleId !== id.moduleId) return;
    const msg = {
      deviceId: id.deviceId,
      properties: t.bag.app,
      body,
      ...(id.moduleId !== undefined ? { moduleId: id.moduleId } : {}),
      ...(t.bag.system.on !== undefined ? { output: t.bag.system.on } : {}),
      ...(t.bag.system.ct !== undefined ? { contentType: t.bag.system.ct } : {}),
      system: t.bag.system,
    };
    const matched = matchRoutes(this.routes, msg);
    if (matched.length === 0) return;
    const items: { route: string; priority: number; ttlSeconds: number; topic: string; payload: Buffer }[] = [];
    for (const r of matched) {
      if (r.sink.kind !== "upstream") continue;
      const upTopic = (this.o.upstreamTopicPrefix ?? "") + telemetryTopic(id.deviceId, id.moduleId, t.bag);
      const redacted = this.o.redactor ? this.o.redactor.redact(upTopic, body) : body;
      if (!redacted) {
        this.o.reject({ stage: "publish", reason: "privacy-unparseable", detail: `route ${r.name}: body is not JSON but privacy rules apply; not sent upstream`, identity: id.key });
        continue;
      }
      const o = { ...this.o.defaultRoute, ...(this.o.routeOptions?.[r.name] ?? {}) };
      items.push({ route: r.name, priority: o.priority, ttlSeconds: o.ttlSeconds, topic: upTopic, payload: redacted });
    }
    try {
      this.o.store.enqueue(items);
    } catch (e) {
      if (isEdgeTrustError(e, "HUB_OUTBOX_FULL")) throw new Rejected("outbox-full", e.message);
      throw e;
    }
    for (const it of items) this.o.queued({ route: it.route, topic: it.topic });
    if (items.length > 0) this.o.upstream?.kick();
    for (const r of matched) {
      if (r.sink.kind !== "module") continue;
      const bag = { app: t.bag.app, system: { ...t.bag.system } };
      delete bag.system.on;
      this.broker?.publish({ cmd: "publish", topic: inputTopic(this.o.verifier.deviceId, r.sink.module, r.sink.input, bag), payload: body, qos: qos === 2 ? 1 : qos, retain: false, dup: false }, (err) => {
        this.o.log.debug({ route: r.name, module: r.sink.kind === "module" ? r.sink.module : "" }, "routed to module");
        if (err) this.o.log.warn({ err: err.message, route: r.name }, "module delivery failed");
        else this.o.metrics.messagesOut.inc({ destination: "module" });
      });
    }
  }
}
