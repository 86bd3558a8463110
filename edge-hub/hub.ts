import { EventEmitter } from "node:events";
import { randomBytes } from "node:crypto";
import type { AddressInfo } from "node:net";
import { createServer, type SecureContextOptions, type Server, type TLSSocket } from "node:tls";
import { Aedes, type AuthErrorCode, type AuthenticateError, type Client, type PublishPacket, type Subscription, type AedesPublishPacket } from "aedes";
import { EdgeTrustError, createLogger, isEdgeTrustError, type Logger } from "../common/index.js";
import { decideTopic, type Policy } from "../policy/index.js";
import type { AttestationEvent, AttestationSource } from "../identity-api/index.js";
import type { CrlCache } from "./crl.js";
import { IOTHUB_SUBSCRIPTIONS, cloudFilters, cloudMethodResponseTopic, desiredPatchTopic, inputTopic, methodRequestTopic, parseCloudTopic, parseTopic, telemetryTopic, twinResponseTopic } from "./dialect.js";
import { HubMetrics } from "./metrics.js";
import type { Redactor } from "./privacy.js";
import { matchRoutes, type Route } from "./routes.js";
import type { HubStore } from "./store.js";
import type { Upstream } from "./upstream.js";
import type { ClientIdentity, ClientVerifier, RejectReason } from "./verify.js";
import { authenticateSas, type SasRejectReason, type SasTokenVerifier } from "./sas-auth.js";

export interface HubLimits {
  maxPayloadBytes: number;
  maxTopicLevels: number;
  /** Allow a subscription whose first level is `#` or `+` (never for `$` topics). Default false. */
  allowRootWildcard: boolean;
}

export interface RouteOptions {
  priority: number;
  ttlSeconds: number;
}

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
  /** The verifier's CRL cache: when it loads a new CRL, connected clients are checked again (revoked ones cut off). */
  crl?: CrlCache;
  /** Accept modules the policy grants `auth: sas` with their SAS token instead of a certificate (sas-auth.ts). */
  sas?: SasTokenVerifier;
  metrics?: HubMetrics;
  log?: Logger;
}

/** `protocol`: refused by the MQTT layer (aedes) before the hub's own checks ran, e.g. a topic of more than 100 levels. */
export type RejectionStage = "connect" | "publish" | "subscribe" | "session" | "protocol";
export type HubRejectReason =
  | RejectReason
  | "tls-handshake"
  | "will-denied"
  | "policy-denied"
  | "reserved-topic"
  | "wildcard-root"
  | "topic-too-deep"
  | "payload-too-large"
  | "outbox-full"
  | "privacy-unparseable"
  | "deregistered"
  | "attestation-changed"
  | "iothub-unsupported"
  | SasRejectReason
  | "sas-expired";

export interface Rejection {
  stage: RejectionStage;
  reason: HubRejectReason;
  detail: string;
  identity?: string;
}

export interface HubEvents {
  rejected: [Rejection];
  connected: [ClientIdentity];
  disconnected: [ClientIdentity];
  /** A client's subscriptions are in place (after SUBACK): the granted filters. */
  subscribed: [ClientIdentity, string[]];
  upstreamQueued: [{ route: string; topic: string }];
}

interface ClientState {
  identity?: ClientIdentity;
  /** The peer certificate (DER), to check the connection again when revocation or attestation changes. */
  der?: Buffer;
  rejected?: { reason: HubRejectReason; detail: string };
  /** No certificate, SAS enabled: the token in CONNECT decides (the will is checked once the module is known). */
  sas?: { will?: { topic: string; payload: Buffer }; expiry?: NodeJS.Timeout };
}

/** Policy decisions remembered (see `decide`): at most this many, for topics up to this many characters. */
const DECISION_CACHE_MAX = 4096;
const DECISION_TOPIC_MAX = 256;

/** Client publishes to `$iothub/...` are answered by the hub and then published here, where nothing can subscribe. */
const SINK = "$edgetrust/hub/sink";

/** The TLS layer's verdict on the client certificate (OpenSSL's chain + validity check against `clientCa`). */
function handshakeProblem(socket: TLSSocket): { reason: HubRejectReason; detail: string } | undefined {
  if (socket.authorized) return undefined;
  const peer = socket.getPeerCertificate(false);
  if (!peer || !("raw" in peer) || !peer.raw) return { reason: "no-certificate", detail: "the client presented no certificate" };
  const err = socket.authorizationError;
  const code = err === null || err === undefined ? "unknown" : typeof err === "string" ? err : ((err as NodeJS.ErrnoException).code ?? err.message);
  if (code === "CERT_HAS_EXPIRED" || code === "CERT_NOT_YET_VALID") return { reason: "certificate-expired", detail: `TLS: ${code} (valid ${peer.valid_from} .. ${peer.valid_to})` };
  return { reason: "tls-handshake", detail: `TLS: client certificate not verified (${code})` };
}

class Rejected extends Error {
  constructor(readonly reason: HubRejectReason, detail: string) {
    super(detail);
  }
}

/**
 * The edge hub: an aedes MQTT broker behind a Node TLS server that requires client certificates. See README.md for
 * the order of checks. Identity comes only from the verified certificate (the MQTT client id is replaced by it).
 */
export class EdgeHub extends EventEmitter<HubEvents> {
  readonly metrics: HubMetrics;
  private readonly log: Logger;
  private broker: Aedes | undefined;
  private server: Server | undefined;
  private readonly states = new WeakMap<Client, ClientState>();
  private readonly clients = new Map<string, Client>();
  private readonly decisions = new Map<string, { permitted: boolean; allowed: boolean; detail: string }>();
  private readonly pendingMethods = new Map<string, { resolve: (r: { status: number; payload: Buffer }) => void; timer: NodeJS.Timeout }>();
  private unsubscribeAttestation: (() => void) | undefined;
  private unsubscribeCrl: (() => void) | undefined;
  private routes: Route[];
  boundPort = 0;

  constructor(private readonly opts: HubOptions) {
    super();
    this.log = opts.log ?? createLogger("edge-hub");
    this.metrics = opts.metrics ?? new HubMetrics(() => opts.store.depth().messages);
    this.routes = opts.routes;
  }

  async start(): Promise<void> {
    const broker = new Aedes({
      id: `edgehub-${randomBytes(4).toString("hex")}`,
      maxClientsIdLength: 256,
      maxTopicLevels: 100,
      connectTimeout: 10_000,
      heartbeatInterval: 60_000,
      preConnect: (client, packet, cb) => {
        try {
          this.preConnect(client, packet.will ? { topic: packet.will.topic, payload: Buffer.from(packet.will.payload) } : undefined);
          const st = this.states.get(client);
          if (st?.identity) packet.clientId = st.identity.key;
          cb(null, true);
        } catch (e) {
          cb(e instanceof Error ? e : new Error(String(e)), false);
        }
      },
      authenticate: (client, username, password, done) => {
        // Username and password are ignored for certificate clients: the certificate is the credential.
        const st = this.states.get(client);
        if (st?.sas && !st.identity && !st.rejected) {
          void this.authenticateSas(client, st, username, password).then(() => this.finishAuthenticate(st, done));
          return;
        }
        this.finishAuthenticate(st, done);
      },
      authorizePublish: (client, packet, cb) => {
        if (!client) return cb(new Error("will of an unknown client"));
        try {
          this.onPublish(client, packet);
          cb(null);
        } catch (e) {
          const st = this.states.get(client);
          if (e instanceof Rejected) {
            this.reject({ stage: "publish", reason: e.reason, detail: e.message, ...(st?.identity ? { identity: st.identity.key } : {}) });
            cb(e);
          } else {
            this.log.error({ err: (e as Error).message }, "publish handling failed");
            cb(e instanceof Error ? e : new Error(String(e)));
          }
        }
      },
      authorizeSubscribe: (client, sub, cb) => {
        const st = this.states.get(client);
        const why = st?.identity ? this.subscribeProblem(st.identity, sub) : { reason: "no-certificate" as const, detail: "no identity" };
        if (why) {
          this.reject({ stage: "subscribe", reason: why.reason, detail: `${sub.topic}: ${why.detail}`, ...(st?.identity ? { identity: st.identity.key } : {}) });
          cb(null, null);
          return;
        }
        this.log.debug({ identity: st?.identity?.key, topic: sub.topic }, "subscribed");
        cb(null, sub);
      },
      authorizeForward: (_client, packet) => this.forward(packet),
    });
    await broker.listen();
    broker.on("clientReady", (client) => {
      const id = this.states.get(client)?.identity;
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
      if (id.principal === "leaf") for (const f of cloudFilters(id.deviceId)) this.opts.upstream?.subscribe(this.upstreamPrefix + f);
      this.emit("connected", id);
    });
    broker.on("clientDisconnect", (client) => {
      clearTimeout(this.states.get(client)?.sas?.expiry);
      const id = this.states.get(client)?.identity;
      if (!id) return;
      if (this.clients.get(id.key) === client) {
        this.clients.delete(id.key);
        if (id.principal === "leaf") for (const f of cloudFilters(id.deviceId)) this.opts.upstream?.unsubscribe(this.upstreamPrefix + f);
      }
      this.metrics.connected.dec();
      this.emit("disconnected", id);
    });
    broker.on("subscribe", (subs, client) => {
      const id = this.states.get(client)?.identity;
      const granted = subs.filter((x) => (x.qos as number) !== 128).map((x) => x.topic);
      if (id && granted.length > 0) this.emit("subscribed", id, granted);
    });
    broker.on("clientError", (client, err) => {
      // aedes refuses a topic or filter deeper than its own ceiling (100 levels) before authorizePublish/Subscribe
      // run, and closes the connection: still a refusal of the hub, counted with the same reason.
      if (/too many levels/.test(err.message)) {
        const id = this.states.get(client)?.identity;
        this.reject({ stage: "protocol", reason: "topic-too-deep", detail: `${err.message}; disconnected`, ...(id ? { identity: id.key } : {}) });
        return;
      }
      this.log.debug({ client: client.id, err: err.message }, "client error");
    });
    broker.on("connectionError", (_client, err) => this.log.debug({ err: err.message }, "connection error"));
    this.broker = broker;

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

    this.unsubscribeAttestation = this.opts.attestation.subscribe((ev) => this.onAttestation(ev));
    const crl = this.opts.crl;
    if (crl) {
      const onCrl = () => this.recheckAll("CRL updated");
      crl.on("updated", onCrl);
      this.unsubscribeCrl = () => crl.off("updated", onCrl);
    }
    const up = this.opts.upstream;
    if (up) {
      // Cloud → device: direct methods and desired properties for this device and its modules (leaf devices are
      // added while they are connected).
      for (const f of [...cloudFilters(this.opts.verifier.deviceId), ...cloudFilters(this.opts.verifier.deviceId, "+")]) up.subscribe(this.upstreamPrefix + f);
      up.on("message", (topic, payload) => this.onCloud(topic, payload));
      up.on("connected", () => this.metrics.upstreamUp.set(1));
      up.on("disconnected", () => this.metrics.upstreamUp.set(0));
      up.on("delivered", () => this.metrics.messagesOut.inc({ destination: "upstream" }));
      up.start();
    }
    this.log.info({ host: this.opts.host, port: this.boundPort }, "edge hub listening");
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
    this.routes = routes;
  }

  /** Identities connected now. */
  connectedIdentities(): string[] {
    return [...this.clients.keys()];
  }

  private reject(r: Rejection): void {
    this.metrics.reject(r.reason);
    this.log.warn(r, "refused");
    this.emit("rejected", r);
  }

  /** The CONNECT verdict: an identity from the certificate or the SAS token, or the recorded refusal. */
  private finishAuthenticate(st: ClientState | undefined, done: (err: AuthenticateError | null, ok: boolean | null) => void): void {
    if (!st?.identity || st.rejected) {
      const r = st?.rejected ?? { reason: "no-certificate" as const, detail: "no verified certificate" };
      this.reject({ stage: "connect", reason: r.reason, detail: r.detail, ...(st?.identity ? { identity: st.identity.key } : {}) });
      this.metrics.connections.inc({ result: "refused", principal: st?.identity?.principal ?? "unknown" });
      const err = Object.assign(new Error(`not authorized: ${r.reason}`), { returnCode: 5 as AuthErrorCode }) as AuthenticateError;
      done(err, false);
      return;
    }
    done(null, true);
  }

  /** A module without a certificate: its SAS token, checked by the identity daemon (key in the HSM) and here. */
  private async authenticateSas(client: Client, st: ClientState, username: string | undefined, password: Buffer | undefined): Promise<void> {
    const sas = st.sas;
    const verifier = this.opts.sas;
    if (!sas || !verifier) return;
    const r = await authenticateSas(
      { verifier, policy: this.opts.policy, attestation: this.opts.attestation, deviceId: this.opts.verifier.deviceId },
      { clientId: client.id, username, password },
    );
    if (!r.ok) {
      st.rejected = { reason: r.reason, detail: r.detail };
      return;
    }
    st.identity = r.identity;
    if (sas.will) {
      try {
        this.checkPublish(r.identity, sas.will.topic, sas.will.payload);
      } catch (e) {
        if (!(e instanceof Rejected)) throw e;
        st.rejected = { reason: "will-denied", detail: `will on ${sas.will.topic}: ${e.message}` };
        return;
      }
    }
    // IoT Hub closes a SAS connection when its token expires; the SDKs reconnect with a fresh one before that.
    const left = r.identity.notAfter.getTime() - Date.now();
    sas.expiry = setTimeout(() => {
      if (this.states.get(client)?.identity !== r.identity) return;
      this.reject({ stage: "session", reason: "sas-expired", detail: `module ${r.identity.moduleId ?? ""}: SAS token expired; disconnected`, identity: r.identity.key });
      client.close();
    }, Math.max(0, Math.min(left, 2 ** 31 - 1)));
    sas.expiry.unref();
  }

  private preConnect(client: Client, will: { topic: string; payload: Buffer } | undefined): void {
    const sock = client.conn as TLSSocket;
    const peer = typeof sock.getPeerCertificate === "function" ? sock.getPeerCertificate(false) : undefined;
    let res;
    try {
      res = this.opts.verifier.verify(peer && "raw" in peer ? peer.raw : undefined);
    } catch (e) {
      res = { ok: false as const, reason: "bad-uri-san" as const, detail: `certificate could not be read: ${(e as Error).message}` };
    }
    if (!res.ok) {
      const noCert = !(peer && "raw" in peer && peer.raw);
      this.states.set(client, noCert && this.opts.sas ? { sas: will ? { will } : {} } : { rejected: { reason: res.reason, detail: res.detail } });
      return;
    }
    const st: ClientState = { identity: res.identity, ...(peer && "raw" in peer ? { der: peer.raw } : {}) };
    if (will) {
      try {
        this.checkPublish(res.identity, will.topic, will.payload);
      } catch (e) {
        if (!(e instanceof Rejected)) throw e;
        st.rejected = { reason: "will-denied", detail: `will on ${will.topic}: ${e.message}` };
      }
    }
    this.states.set(client, st);
  }

  /** Caps, reserved topics and the policy's publish rules. Throws Rejected. */
  private checkPublish(id: ClientIdentity, topic: string, payload: Buffer): void {
    const l = this.opts.limits;
    if (payload.length > l.maxPayloadBytes) throw new Rejected("payload-too-large", `payload ${payload.length} bytes > ${l.maxPayloadBytes}`);
    if (topic.split("/").length > l.maxTopicLevels) throw new Rejected("topic-too-deep", `topic has more than ${l.maxTopicLevels} levels`);
    if (topic.startsWith("$")) throw new Rejected("reserved-topic", `${topic.slice(0, 64)} is reserved`);
    this.decide(id, "publish", topic);
  }

  /**
   * The policy's hub rules (deny by default; audit mode logs and lets through). Throws Rejected. The outcome depends
   * only on (policy, principal, identity, action, topic) and the policy of a hub never changes, so it is remembered:
   * a module publishing to the same topic again costs one map lookup. Bounded (cleared when full; long topics are
   * not kept).
   */
  private decide(id: ClientIdentity, action: "publish" | "subscribe", topic: string): void {
    const key = topic.length <= DECISION_TOPIC_MAX ? `${id.principal}\u0000${id.key}\u0000${action}\u0000${topic}` : undefined;
    let d = key === undefined ? undefined : this.decisions.get(key);
    if (!d) {
      const full = decideTopic(this.opts.policy, this.principal(id), action, topic);
      d = { permitted: full.permitted, allowed: full.allowed, detail: full.permitted ? "" : `${full.subject}: ${full.rules.map((r) => r.reason).join("; ")}` };
      if (key !== undefined) {
        if (this.decisions.size >= DECISION_CACHE_MAX) this.decisions.clear();
        this.decisions.set(key, d);
      }
    }
    if (!d.permitted) throw new Rejected("policy-denied", d.detail);
    if (!d.allowed) this.log.warn({ identity: id.key, action, topic }, "audit mode: would be denied");
  }

  private subscribeProblem(id: ClientIdentity, sub: Subscription): { reason: HubRejectReason; detail: string } | undefined {
    const topic = sub.topic;
    if (topic.split("/").length > this.opts.limits.maxTopicLevels) return { reason: "topic-too-deep", detail: `more than ${this.opts.limits.maxTopicLevels} levels` };
    // The three `$iothub/` filters only ever receive what the hub writes to this connection; every other `$` is closed.
    if (topic.startsWith("$") && !IOTHUB_SUBSCRIPTIONS.includes(topic)) return { reason: "reserved-topic", detail: "`$` topics are not for clients" };
    const first = topic.split("/")[0];
    if (!this.opts.limits.allowRootWildcard && (first === "#" || first === "+")) return { reason: "wildcard-root", detail: "a filter may not start with a wildcard" };
    try {
      this.decide(id, "subscribe", topic);
    } catch (e) {
      if (e instanceof Rejected) return { reason: e.reason, detail: e.message };
      throw e;
    }
    return undefined;
  }

  private principal(id: ClientIdentity): { principal: "module" | "device" | "leaf"; device: string; module?: string } {
    return id.moduleId === undefined ? { principal: id.principal, device: id.deviceId } : { principal: id.principal, device: id.deviceId, module: id.moduleId };
  }

  private forward(packet: AedesPublishPacket): AedesPublishPacket | null {
    if (packet.topic.startsWith("$edgetrust/")) return null;
    // `$iothub/` packets reach a client only when the hub wrote them to that client (no publishing client id).
    if (packet.topic.startsWith("$iothub/") && (packet as { clientId?: string }).clientId !== undefined) return null;
    return packet;
  }

  private onPublish(client: Client, packet: PublishPacket): void {
    const id = this.states.get(client)?.identity;
    if (!id) throw new Rejected("no-certificate", "no identity");
    const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
    if (packet.topic.startsWith("$iothub/")) {
      if (payload.length > this.opts.limits.maxPayloadBytes) throw new Rejected("payload-too-large", `payload ${payload.length} bytes > ${this.opts.limits.maxPayloadBytes}`);
      this.decide(id, "publish", packet.topic);
      this.onIotHub(client, id, packet.topic, payload);
      packet.topic = SINK;
      packet.retain = false;
      return;
    }
    this.checkPublish(id, packet.topic, payload);
    this.metrics.messagesIn.inc({ principal: id.principal });
    this.route(id, packet.topic, payload, packet.qos);
  }

  /** Routes for telemetry a client sends about itself: module inputs and the outbox. Throws Rejected (outbox full). */
  private route(id: ClientIdentity, topic: string, body: Buffer, qos: 0 | 1 | 2): void {
    const t = parseTopic(topic);
    this.log.debug({ identity: id.key, topic, kind: t.kind }, "publish");
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
      const upTopic = (this.opts.upstreamTopicPrefix ?? "") + telemetryTopic(id.deviceId, id.moduleId, t.bag);
      const redacted = this.opts.redactor ? this.opts.redactor.redact(upTopic, body) : body;
      if (!redacted) {
        this.reject({ stage: "publish", reason: "privacy-unparseable", detail: `route ${r.name}: body is not JSON but privacy rules apply; not sent upstream`, identity: id.key });
        continue;
      }
      const o = { ...this.opts.defaultRoute, ...(this.opts.routeOptions?.[r.name] ?? {}) };
      items.push({ route: r.name, priority: o.priority, ttlSeconds: o.ttlSeconds, topic: upTopic, payload: redacted });
    }
    try {
      this.opts.store.enqueue(items);
    } catch (e) {
      if (isEdgeTrustError(e, "HUB_OUTBOX_FULL")) throw new Rejected("outbox-full", e.message);
      throw e;
    }
    for (const it of items) this.emit("upstreamQueued", { route: it.route, topic: it.topic });
    if (items.length > 0) this.opts.upstream?.kick();
    for (const r of matched) {
      if (r.sink.kind !== "module") continue;
      const bag = { app: t.bag.app, system: { ...t.bag.system } };
      delete bag.system.on;
      this.broker?.publish({ cmd: "publish", topic: inputTopic(this.opts.verifier.deviceId, r.sink.module, r.sink.input, bag), payload: body, qos: qos === 2 ? 1 : qos, retain: false, dup: false }, (err) => {
        this.log.debug({ route: r.name, module: r.sink.kind === "module" ? r.sink.module : "" }, "routed to module");
        if (err) this.log.warn({ err: err.message, route: r.name }, "module delivery failed");
        else this.metrics.messagesOut.inc({ destination: "module" });
      });
    }
  }

  private writeTo(client: Client, topic: string, payload: Buffer | string): void {
    client.publish({ cmd: "publish", topic, payload: Buffer.isBuffer(payload) ? payload : Buffer.from(payload), qos: 0, retain: false, dup: false }, () => undefined);
  }

  /** Twin and method traffic: answered on this connection only. */
  private onIotHub(client: Client, id: ClientIdentity, topic: string, payload: Buffer): void {
    const t = parseTopic(topic);
    switch (t.kind) {
      case "twin-get": {
        const tw = this.opts.store.getTwin(id.key);
        const body = { desired: { ...tw.desired, $version: tw.desiredVersion }, reported: { ...tw.reported, $version: tw.reportedVersion } };
        this.writeTo(client, twinResponseTopic(200, t.rid), JSON.stringify(body));
        return;
      }
      case "twin-reported": {
        let patch: unknown;
        try {
          patch = JSON.parse(payload.toString("utf8"));
        } catch {
          patch = undefined;
        }
        if (typeof patch !== "object" || patch === null || Array.isArray(patch)) {
          this.writeTo(client, twinResponseTopic(400, t.rid), JSON.stringify({ message: "reported patch must be a JSON object" }));
          return;
        }
        const v = this.opts.store.patchReported(id.key, patch as Record<string, unknown>);
        this.writeTo(client, twinResponseTopic(204, t.rid, v), "");
        return;
      }
      case "method-response": {
        const k = `${id.key}\u0000${t.rid}`;
        const p = this.pendingMethods.get(k);
        if (p) {
          this.pendingMethods.delete(k);
          clearTimeout(p.timer);
          p.resolve({ status: t.status, payload });
        }
        return;
      }
      default:
        this.reject({ stage: "publish", reason: "iothub-unsupported", detail: `${topic.slice(0, 80)} is not handled`, identity: id.key });
    }
  }

  /** Invoke a direct method on a connected client; only that client's response (same identity, same $rid) counts. */
  async invokeMethod(identity: string, method: string, payload: unknown, timeoutMs = this.opts.methodTimeoutMs ?? 30_000): Promise<{ status: number; payload: unknown }> {
    const r = await this.callMethod(identity, method, Buffer.from(JSON.stringify(payload ?? null)), timeoutMs);
    let body: unknown = r.payload.toString("utf8");
    try {
      body = JSON.parse(String(body));
    } catch {
      /* not JSON: the text */
    }
    return { status: r.status, payload: body };
  }

  /** The method request goes to that connection only, under a request id the hub makes (never the caller's). */
  private callMethod(identity: string, method: string, payload: Buffer, timeoutMs: number): Promise<{ status: number; payload: Buffer }> {
    const client = this.clients.get(identity);
    if (!client) return Promise.reject(new EdgeTrustError("NOT_FOUND", `${identity} is not connected`));
    const rid = randomBytes(8).toString("hex");
    const k = `${identity}\u0000${rid}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pendingMethods.delete(k);
        reject(new EdgeTrustError("HUB_METHOD_TIMEOUT", `method ${method} on ${identity} did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pendingMethods.set(k, { timer, resolve });
      this.writeTo(client, methodRequestTopic(method, rid), payload);
    });
  }

  /** Patch an identity's desired properties; a connected client gets the patch on its own connection. */
  updateDesired(identity: string, patch: Record<string, unknown>): number {
    const v = this.opts.store.patchDesired(identity, patch);
    this.pushDesired(identity, patch, v);
    return v;
  }

  private pushDesired(identity: string, patch: Record<string, unknown>, version: number): void {
    const client = this.clients.get(identity);
    if (client) this.writeTo(client, desiredPatchTopic(version), JSON.stringify({ ...patch, $version: version }));
  }

  private get upstreamPrefix(): string {
    return this.opts.upstreamTopicPrefix ?? "";
  }

  /**
   * A message from the cloud broker: a direct method call or a desired patch for this device, one of its modules or a
   * connected leaf device. Relayed to that identity's connection only; the method's answer goes back upstream.
   */
  private onCloud(topic: string, payload: Buffer): void {
    const prefix = this.upstreamPrefix;
    if (!topic.startsWith(prefix)) return;
    const t = parseCloudTopic(topic.slice(prefix.length));
    if (!t) {
      this.log.debug({ topic: topic.slice(0, 120) }, "cloud message ignored");
      return;
    }
    const self = this.opts.verifier.deviceId;
    // Modules exist only on this device; other device ids are leaf devices (subscribed only while connected here).
    if (t.moduleId !== undefined && t.deviceId !== self) return;
    const identity = t.moduleId === undefined ? t.deviceId : `${t.deviceId}/${t.moduleId}`;
    if (t.kind === "method") {
      const answer = (status: number, body: Buffer) => this.opts.upstream?.publishDirect(prefix + cloudMethodResponseTopic(t.deviceId, t.moduleId, status, t.rid), body);
      this.callMethod(identity, t.method, payload, this.opts.methodTimeoutMs ?? 30_000).then(
        (r) => answer(r.status, r.payload),
        (e: unknown) => {
          const notConnected = isEdgeTrustError(e, "NOT_FOUND");
          answer(notConnected ? 404 : 504, Buffer.from(JSON.stringify({ message: (e as Error).message })));
        },
      );
      this.log.info({ identity, method: t.method }, "cloud method relayed");
      return;
    }
    let patch: unknown;
    try {
      patch = JSON.parse(payload.toString("utf8"));
    } catch {
      patch = undefined;
    }
    if (typeof patch !== "object" || patch === null || Array.isArray(patch)) {
      this.log.warn({ identity }, "cloud desired patch is not a JSON object; ignored");
      return;
    }
    const body = { ...(patch as Record<string, unknown>) };
    const inBody = body.$version;
    delete body.$version;
    const version = t.version ?? (typeof inBody === "number" && Number.isSafeInteger(inBody) && inBody > 0 ? inBody : undefined);
    const v = this.opts.store.applyCloudDesired(identity, body, version);
    if (v === undefined) {
      this.log.debug({ identity, version }, "cloud desired patch already applied (duplicate or stale); ignored");
      return;
    }
    this.pushDesired(identity, body, v);
  }

  /** Check every connection's certificate again (a new CRL): what no longer passes is disconnected. */
  private recheckAll(why: string): void {
    for (const [key, client] of this.clients) {
      const st = this.states.get(client);
      if (!st?.der) continue;
      const res = this.opts.verifier.verify(st.der);
      if (res.ok) continue;
      this.reject({ stage: "session", reason: res.reason, detail: `${why}: ${res.detail}; disconnected`, identity: key });
      client.close();
    }
  }

  private onAttestation(ev: AttestationEvent): void {
    for (const [key, client] of this.clients) {
      const id = this.states.get(client)?.identity;
      if (!id || id.moduleId !== ev.module || id.deviceId !== ev.deviceId) continue;
      if (this.opts.verifier.stillAttested(id)) continue;
      const reason = ev.type === "deregistered" ? "deregistered" : "attestation-changed";
      this.reject({ stage: "session", reason, detail: `module ${ev.module}: ${ev.type}; disconnected`, identity: key });
      client.close();
    }
  }

  /** Stop accepting, disconnect clients, stop upstream, close the store. */
  async stop(): Promise<void> {
    this.unsubscribeAttestation?.();
    this.unsubscribeCrl?.();
    for (const p of this.pendingMethods.values()) clearTimeout(p.timer);
    this.pendingMethods.clear();
    const server = this.server;
    this.server = undefined;
    const closed = server ? new Promise<void>((r) => server.close(() => r())) : Promise.resolve();
    const broker = this.broker;
    this.broker = undefined;
    if (broker) await new Promise<void>((r) => broker.close(() => r()));
    await this.opts.upstream?.stop();
    await Promise.race([closed, new Promise((r) => setTimeout(r, 2000))]);
    this.clients.clear();
    this.opts.store.close();
    this.log.info("edge hub stopped");
  }
}
