import { EventEmitter } from "node:events";
import { randomBytes } from "node:crypto";
import type { AddressInfo } from "node:net";
import { createServer, type SecureContextOptions, type Server } from "node:tls";
import { Aedes, type Client, type PublishPacket, type AedesPublishPacket } from "aedes";
import { writeToStream } from "mqtt-packet";
import { createLogger, type Logger } from "../common/index.js";
import type { Policy } from "../policy/index.js";
import type { AttestationEvent, AttestationSource } from "../identity-api/index.js";
import { ClientAuth, handshakeProblem, type HubLimits } from "./auth.js";
import { CloudRelay } from "./cloud-relay.js";
import { DeviceboundRelay } from "./devicebound.js";
import type { CrlCache } from "./crl.js";
import { TopicDecisions } from "./decisions.js";
import { TwinsAndMethods } from "./iothub.js";
import { HubMetrics } from "./metrics.js";
import type { Redactor } from "./privacy.js";
import { Rejected, type Rejection } from "./rejection.js";
import type { Route } from "./routes.js";
import { TelemetryRouter, type RouteOptions } from "./routing.js";
import type { SasTokenVerifier } from "./sas-auth.js";
import type { HubStore } from "./store.js";
import type { Upstream } from "./upstream.js";
import type { ClientIdentity, ClientVerifier } from "./verify.js";

// mqtt-packet (aedes's and mqtt.js's encoder, one copy) fills a cache of 65,536 two-byte Buffers — one per packet id,
// ~6 MB of heap, a third of the hub's — on its first write; without it each packet id is a 2-byte allocation
// (bench/hub.ts "hub-memory" measures the hub's RSS).
writeToStream.cacheNumbers = false;

export type { HubLimits } from "./auth.js";
export type { RouteOptions } from "./routing.js";
export type { Rejection } from "./rejection.js";

export interface HubOptions {
  host: string;
  port: number;
  /** The hub's server certificate chain and key (PEM), or the TLS key source's engine options. Re-read on reload. */
  serverTls: () => SecureContextOptions | Promise<SecureContextOptions>;
  /** PEM certificates a client chain may end in during the handshake: root, issuing CA, this device's Edge CA. */
  clientCa: string[];
  verifier: ClientVerifier;
  attestation: AttestationSource;
  policy: Policy;
  limits: HubLimits;
  store: HubStore;
  routes: Route[];
  routeOptions?: Record<string, Partial<RouteOptions>>;
  defaultRoute: RouteOptions;
  redactor?: Redactor;
  upstream?: Upstream;
  /** Prepended to IoT Hub topics sent upstream (e.g. `edgetrust/`). */
  upstreamTopicPrefix?: string;
  methodTimeoutMs?: number;
  /**
   * A direct method from the cloud for an identity that is not connected waits this long for it to connect (as IoT
   * Hub's `connectTimeoutInSeconds`), e.g. a method queued upstream while the hub was down, handed over before the
   * module has reconnected. 0 (the default) answers 404 at once.
   */
  methodConnectWaitMs?: number;
  /** C2D messages held for an identity until it takes them (devicebound.ts). Defaults: 3600 s, 10,000 messages. */
  c2d?: { ttlSeconds: number; maxMessages: number };
  /** The verifier's CRL cache: when it loads a new CRL, connected clients are checked again (revoked ones cut off). */
  crl?: CrlCache;
  /** Accept modules the policy grants `auth: sas` with their SAS token instead of a certificate (sas-auth.ts). */
  sas?: SasTokenVerifier;
  metrics?: HubMetrics;
  log?: Logger;
}

interface HubEvents {
  rejected: [Rejection];
  connected: [ClientIdentity];
  disconnected: [ClientIdentity];
  /** A client's subscriptions are in place (after SUBACK): the granted filters. */
  subscribed: [ClientIdentity, string[]];
  upstreamQueued: [{ route: string; topic: string }];
}

/** Client publishes to `$iothub/...` are answered by the hub and then published here, where nothing can subscribe. */
const SINK = "$edgetrust/hub/sink";

/**
 * The edge hub: an aedes MQTT broker behind a Node TLS server that requires client certificates. See README.md for
 * the order of checks. Identity comes only from the verified certificate (the MQTT client id is replaced by it).
 * This class wires the broker's hooks and owns the connections; the concerns live beside it: the auth hooks
 * (auth.ts) and their policy decisions (decisions.ts), routing (routing.ts), the twin/method dialect (iothub.ts)
 * and the cloud relay (cloud-relay.ts).
 */
export class EdgeHub extends EventEmitter<HubEvents> {
  readonly metrics: HubMetrics;
  private readonly log: Logger;
  private broker: Aedes | undefined;
  private server: Server | undefined;
  private readonly clients = new Map<string, Client>();
  private readonly decisions: TopicDecisions;
  private readonly auth: ClientAuth;
  private readonly router: TelemetryRouter;
  private readonly twins: TwinsAndMethods;
  private readonly relay: CloudRelay | undefined;
  private readonly c2d: DeviceboundRelay | undefined;
  private unsubscribeAttestation: (() => void) | undefined;
  private unsubscribeCrl: (() => void) | undefined;
  /** Set by stop(): the hub closing its clients is not those clients leaving (see clientDisconnect). */
  private stopping = false;
  boundPort = 0;

  constructor(private readonly opts: HubOptions) {
    super();
    this.log = opts.log ?? createLogger("edge-hub");
    this.metrics = opts.metrics ?? new HubMetrics(() => opts.store.depth().messages);
    const reject = (r: Rejection) => this.reject(r);
    this.decisions = new TopicDecisions(opts.policy, this.log);
    this.auth = new ClientAuth({
      verifier: opts.verifier,
      attestation: opts.attestation,
      policy: opts.policy,
      limits: opts.limits,
      decisions: this.decisions,
      metrics: this.metrics,
      reject,
      ...(opts.sas ? { sas: opts.sas } : {}),
    });
    this.router = new TelemetryRouter({
      routes: opts.routes,
      ...(opts.routeOptions ? { routeOptions: opts.routeOptions } : {}),
      defaultRoute: opts.defaultRoute,
      verifier: opts.verifier,
      store: opts.store,
      ...(opts.redactor ? { redactor: opts.redactor } : {}),
      ...(opts.upstream ? { upstream: opts.upstream } : {}),
      ...(opts.upstreamTopicPrefix !== undefined ? { upstreamTopicPrefix: opts.upstreamTopicPrefix } : {}),
      metrics: this.metrics,
      log: this.log,
      reject,
      queued: (q) => this.emit("upstreamQueued", q),
    });
    const up = opts.upstream;
    this.twins = new TwinsAndMethods({
      store: opts.store, clients: this.clients, ...(opts.methodTimeoutMs !== undefined ? { methodTimeoutMs: opts.methodTimeoutMs } : {}), reject,
      ...(up ? { forwardReported: { prefix: opts.upstreamTopicPrefix ?? "", ...opts.defaultRoute, kick: () => up.kick() } } : {}),
    });
    this.c2d = up
      ? new DeviceboundRelay({ db: opts.store.db, deviceId: opts.verifier.deviceId, ttlSeconds: opts.c2d?.ttlSeconds ?? 3600, maxMessages: opts.c2d?.maxMessages ?? 10_000, log: this.log })
      : undefined;
    this.relay = up && this.c2d
      ? new CloudRelay({
        upstream: up, topicPrefix: opts.upstreamTopicPrefix ?? "", verifier: opts.verifier, twins: this.twins, store: opts.store, metrics: this.metrics,
        c2d: this.c2d, whenConnected: (identity, ms) => this.whenConnected(identity, ms), methodConnectWaitMs: opts.methodConnectWaitMs ?? 0, log: this.log,
      })
      : undefined;
  }

  async start(): Promise<void> {
    const broker = this.createBroker();
    await broker.listen();
    this.followSessions(broker);
    this.broker = broker;
    this.router.attach(broker);
    await this.listenTls(broker);

    this.unsubscribeAttestation = this.opts.attestation.subscribe((ev) => this.onAttestation(ev));
    const crl = this.opts.crl;
    if (crl) {
      const onCrl = () => this.recheckAll("CRL updated");
      crl.on("updated", onCrl);
      this.unsubscribeCrl = () => crl.off("updated", onCrl);
    }
    this.relay?.start();
    this.log.info({ host: this.opts.host, port: this.boundPort }, "edge hub listening");
  }

  /** The broker with the hub's hooks: who may connect (certificate or SAS), publish and subscribe. */
  private createBroker(): Aedes {
    return new Aedes({
      id: `edgehub-${randomBytes(4).toString("hex")}`,
      maxClientsIdLength: 256,
      maxTopicLevels: 100,
      connectTimeout: 10_000,
      heartbeatInterval: 60_000,
      preConnect: (client, packet, cb) => {
        try {
          this.auth.preConnect(client, packet.will ? { topic: packet.will.topic, payload: Buffer.from(packet.will.payload) } : undefined);
          const id = this.auth.identityOf(client);
          if (id) packet.clientId = id.key;
          cb(null, true);
        } catch (e) {
          cb(e instanceof Error ? e : new Error(String(e)), false);
        }
      },
      authenticate: (client, username, password, done) => this.auth.authenticate(client, username, password, done),
      authorizePublish: (client, packet, cb) => {
        if (!client) return cb(new Error("will of an unknown client"));
        try {
          this.onPublish(client, packet);
          cb(null);
        } catch (e) {
          const id = this.auth.identityOf(client);
          if (e instanceof Rejected) {
            this.reject({ stage: "publish", reason: e.reason, detail: e.message, ...(id ? { identity: id.key } : {}) });
            cb(e);
          } else {
            this.log.error({ err: (e as Error).message }, "publish handling failed");
            cb(e instanceof Error ? e : new Error(String(e)));
          }
        }
      },
      authorizeSubscribe: (client, sub, cb) => {
        const id = this.auth.identityOf(client);
        const why = id ? this.auth.subscribeProblem(id, sub) : { reason: "no-certificate" as const, detail: "no identity" };
        if (why) {
          this.reject({ stage: "subscribe", reason: why.reason, detail: `${sub.topic}: ${why.detail}`, ...(id ? { identity: id.key } : {}) });
          cb(null, null);
          return;
        }
        this.log.debug({ identity: id?.key, topic: sub.topic }, "subscribed");
        cb(null, sub);
      },
      authorizeForward: (_client, packet) => forward(packet),
    });
  }

  /** Sessions as they come and go: the connected table, metrics, C2D hand-over, refusals aedes makes itself. */
  private followSessions(broker: Aedes): void {
    broker.on("clientReady", (client) => {
      const id = this.auth.identityOf(client);
      if (!id) return;
      this.clients.set(id.key, client);
      this.metrics.connections.inc({ result: "accepted", principal: id.principal });
      this.metrics.connected.inc();
      this.log.info({ identity: id.uri }, "client connected");
      // A deregistration or new attestation between the certificate check (preConnect) and now found no session to
      // cut off: check again, now that the session is registered.
      if (!this.opts.verifier.stillAttested(id)) {
        this.reject({ stage: "session", reason: "deregistered", detail: `module ${id.moduleId ?? ""}: no longer attested as its certificate says; disconnected`, identity: id.key });
        client.close();
        return;
      }
      this.relay?.leafConnected(id);
      this.emit("connected", id);
    });
    broker.on("clientDisconnect", (client) => {
      this.auth.forget(client);
      const id = this.auth.identityOf(client);
      if (!id) return;
      this.c2d?.disconnected(id.key, client);
      if (this.clients.get(id.key) === client) {
        this.clients.delete(id.key);
        // Not while stopping: the hub closing its clients is not a leaf going away. Its method and desired filters
        // stay in the cloud broker's persistent session, so what the cloud sends while the hub is down still arrives.
        if (!this.stopping) this.relay?.leafDisconnected(id);
      }
      this.metrics.connected.dec();
      this.emit("disconnected", id);
    });
    broker.on("subscribe", (subs, client) => {
      const id = this.auth.identityOf(client);
      const granted = subs.filter((x) => (x.qos as number) !== 128).map((x) => x.topic);
      if (id && granted.length > 0) {
        this.c2d?.subscribed(id.key, client, granted);
        this.emit("subscribed", id, granted);
      }
    });
    broker.on("ack", (packet, client) => {
      // aedes names the acknowledged packet only for persistent client sessions (it stores nothing for clean ones).
      const id = this.auth.identityOf(client);
      if (id && packet && "topic" in packet) this.c2d?.acked(id.key, packet.topic);
    });
    broker.on("clientError", (client, err) => {
      // aedes refuses a topic or filter deeper than its own ceiling (100 levels) before authorizePublish/Subscribe
      // run, and closes the connection: still a refusal of the hub, counted with the same reason.
      if (/too many levels/.test(err.message)) {
        const id = this.auth.identityOf(client);
        this.reject({ stage: "protocol", reason: "topic-too-deep", detail: `${err.message}; disconnected`, ...(id ? { identity: id.key } : {}) });
        return;
      }
      this.log.debug({ client: client.id, err: err.message }, "client error");
    });
    broker.on("connectionError", (_client, err) => this.log.debug({ err: err.message }, "connection error"));
  }

  /** The mTLS listener in front of the broker; its port is `boundPort`. */
  private async listenTls(broker: Aedes): Promise<void> {
    const tlsOpts = await this.opts.serverTls();
    // OpenSSL verifies the client chain in the handshake (requestCert); its verdict is checked here, before the socket
    // reaches the broker, instead of by rejectUnauthorized — so the refusal carries its reason (no certificate, expired,
    // unknown CA) rather than a bare alert. Nothing is read from an unauthorized socket.
    const server = createServer(
      { ...tlsOpts, ca: this.opts.clientCa, requestCert: true, rejectUnauthorized: false, minVersion: "TLSv1.2", maxVersion: "TLSv1.3" },
      (socket) => {
        const problem = handshakeProblem(socket);
        // Without a certificate, a module granted SAS authenticates in CONNECT (its token); nothing else does.
        if (problem && !(problem.reason === "no-certificate" && this.opts.sas)) {
          this.reject({ stage: "connect", ...problem });
          this.metrics.connections.inc({ result: "refused", principal: "unknown" });
          socket.destroy();
          return;
        }
        // MQTT packets are small and answered at once (CONNACK, PUBACK): Nagle would hold them for the peer's
        // delayed ACK (~40 ms on Linux) — that alone capped TLS connections/s at a third of Mosquitto's with
        // `set_tcp_nodelay true`.
        socket.setNoDelay(true);
        broker.handle(socket);
      },
    );
    server.on("tlsClientError", (err) => {
      this.reject({ stage: "connect", reason: "tls-handshake", detail: err.message });
      this.metrics.connections.inc({ result: "refused", principal: "unknown" });
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.opts.port, this.opts.host, () => {
        server.off("error", reject);
        resolve();
      });
    });
    this.server = server;
    this.boundPort = (server.address() as AddressInfo).port;
  }

  /** New server certificate (renewal): new handshakes use it; live connections are untouched. */
  async reloadServerCertificate(): Promise<void> {
    if (!this.server) return;
    const tlsOpts = await this.opts.serverTls();
    this.server.setSecureContext({ ...tlsOpts, ca: this.opts.clientCa });
    this.log.info("server certificate reloaded");
  }

  /** Replace the routes (a new deployment manifest). */
  setRoutes(routes: Route[]): void {
    this.router.setRoutes(routes);
  }

  /** Identities connected now. */
  connectedIdentities(): string[] {
    return [...this.clients.keys()];
  }

  /** Invoke a direct method on a connected client; only that client's response (same identity, same $rid) counts. */
  async invokeMethod(identity: string, method: string, payload: unknown, timeoutMs = this.twins.methodTimeoutMs): Promise<{ status: number; payload: unknown }> {
    const r = await this.twins.callMethod(identity, method, Buffer.from(JSON.stringify(payload ?? null)), timeoutMs);
    let body: unknown = r.payload.toString("utf8");
    try {
      body = JSON.parse(String(body));
    } catch {
      /* not JSON: the text */
    }
    return { status: r.status, payload: body };
  }

  /** Patch an identity's desired properties; a connected client gets the patch on its own connection. */
  updateDesired(identity: string, patch: Record<string, unknown>): number {
    return this.twins.updateDesired(identity, patch);
  }

  private reject(r: Rejection): void {
    this.metrics.reject(r.reason);
    this.log.warn(r, "refused");
    this.emit("rejected", r);
  }

  private onPublish(client: Client, packet: PublishPacket): void {
    const id = this.auth.identityOf(client);
    if (!id) throw new Rejected("no-certificate", "no identity");
    const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
    if (packet.topic.startsWith("$iothub/")) {
      if (payload.length > this.opts.limits.maxPayloadBytes) throw new Rejected("payload-too-large", `payload ${payload.length} bytes > ${this.opts.limits.maxPayloadBytes}`);
      this.decisions.decide(id, "publish", packet.topic);
      this.twins.onClientMessage(client, id, packet.topic, payload);
      packet.topic = SINK;
      packet.retain = false;
      return;
    }
    this.auth.checkPublish(id, packet.topic, payload);
    this.metrics.messagesIn.inc({ principal: id.principal });
    this.router.route(id, packet.topic, payload, packet.qos);
  }

  /** Resolves when `identity` is connected, or after `ms` either way. */
  private whenConnected(identity: string, ms: number): Promise<void> {
    if (ms <= 0 || this.clients.has(identity)) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.off("connected", on);
        resolve();
      };
      const on = (id: ClientIdentity) => {
        if (id.key === identity) done();
      };
      const timer = setTimeout(done, ms);
      timer.unref();
      this.on("connected", on);
    });
  }

  /** Check every connection's certificate again (a new CRL): what no longer passes is disconnected. */
  private recheckAll(why: string): void {
    for (const [key, client] of this.clients) {
      const der = this.auth.certificateOf(client);
      if (!der) continue;
      const res = this.opts.verifier.verify(der);
      if (res.ok) continue;
      this.reject({ stage: "session", reason: res.reason, detail: `${why}: ${res.detail}; disconnected`, identity: key });
      client.close();
    }
  }

  private onAttestation(ev: AttestationEvent): void {
    for (const [key, client] of this.clients) {
      const id = this.auth.identityOf(client);
      if (!id || id.moduleId !== ev.module || id.deviceId !== ev.deviceId) continue;
      // A SAS module's key is erased at deregistration: its connection goes even if the module is already registered
      // again with the same digest (a new generation, a new key, a new token).
      const sasKeyGone = ev.type === "deregistered" && id.uri.startsWith("sas://");
      if (!sasKeyGone && this.opts.verifier.stillAttested(id)) continue;
      const reason = ev.type === "deregistered" ? "deregistered" : "attestation-changed";
      this.reject({ stage: "session", reason, detail: `module ${ev.module}: ${ev.type}; disconnected`, identity: key });
      client.close();
    }
  }

  /** Stop accepting, disconnect clients, stop upstream, close the store. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.unsubscribeAttestation?.();
    this.unsubscribeCrl?.();
    this.twins.stop();
    const server = this.server;
    this.server = undefined;
    const closed = server ? new Promise<void>((r) => server.close(() => r())) : Promise.resolve();
    const broker = this.broker;
    this.broker = undefined;
    this.router.attach(undefined);
    if (broker) await new Promise<void>((r) => broker.close(() => r()));
    await this.opts.upstream?.stop();
    await Promise.race([closed, new Promise((r) => setTimeout(r, 2000))]);
    this.clients.clear();
    this.opts.store.close();
    this.log.info("edge hub stopped");
  }
}

/** What the broker may deliver to subscribers. */
function forward(packet: AedesPublishPacket): AedesPublishPacket | null {
  if (packet.topic.startsWith("$edgetrust/")) return null;
  // `$iothub/` packets reach a client only when the hub wrote them to that client (no publishing client id).
  if (packet.topic.startsWith("$iothub/") && (packet as { clientId?: string }).clientId !== undefined) return null;
  return packet;
}
