import type { TLSSocket } from "node:tls";
import type { AuthErrorCode, AuthenticateError, Client, Subscription } from "aedes";
import type { Policy } from "../policy/index.js";
import type { AttestationSource } from "../identity-api/index.js";
import { IOTHUB_SUBSCRIPTIONS } from "./dialect.js";
import type { TopicDecisions } from "./decisions.js";
import type { HubMetrics } from "./metrics.js";
import { Rejected, type HubRejectReason, type Reject } from "./rejection.js";
import { authenticateSas, type SasTokenVerifier } from "./sas-auth.js";
import type { ClientIdentity, ClientVerifier } from "./verify.js";

export interface HubLimits {
  maxPayloadBytes: number;
  maxTopicLevels: number;
  /** Allow a subscription whose first level is `#` or `+` (never for `$` topics). Default false. */
  allowRootWildcard: boolean;
}

interface ClientState {
  identity?: ClientIdentity;
  /** The peer certificate (DER), to check the connection again when revocation or attestation changes. */
  der?: Buffer;
  rejected?: { reason: HubRejectReason; detail: string };
  /** No certificate, SAS enabled: the token in CONNECT decides (the will is checked once the module is known). */
  sas?: { will?: { topic: string; payload: Buffer }; expiry?: NodeJS.Timeout };
}

interface ClientAuthOptions {
  verifier: ClientVerifier;
  attestation: AttestationSource;
  policy: Policy;
  limits: HubLimits;
  decisions: TopicDecisions;
  metrics: HubMetrics;
  reject: Reject;
  sas?: SasTokenVerifier;
}

/** The TLS layer's verdict on the client certificate (OpenSSL's chain + validity check against `clientCa`). */
export function handshakeProblem(socket: TLSSocket): { reason: HubRejectReason; detail: string } | undefined {
  if (socket.authorized) return undefined;
  const peer = socket.getPeerCertificate(false);
  if (!peer || !("raw" in peer) || !peer.raw) return { reason: "no-certificate", detail: "the client presented no certificate" };
  const err = socket.authorizationError;
  const code = err === null || err === undefined ? "unknown" : typeof err === "string" ? err : ((err as NodeJS.ErrnoException).code ?? err.message);
  if (code === "CERT_HAS_EXPIRED" || code === "CERT_NOT_YET_VALID") return { reason: "certificate-expired", detail: `TLS: ${code} (valid ${peer.valid_from} .. ${peer.valid_to})` };
  return { reason: "tls-handshake", detail: `TLS: client certificate not verified (${code})` };
}

/**
 * The broker's auth hooks: who a connection is (its verified certificate, or a SAS token in CONNECT), and whether it
 * may publish or subscribe to a topic. Identity comes only from the certificate or the daemon-checked token; the
 * verdict of each connection is kept here, keyed by the aedes client.
 */
export class ClientAuth {
  private readonly states = new WeakMap<Client, ClientState>();

  constructor(private readonly o: ClientAuthOptions) {}

  /** The identity a connection authenticated as, if it did. */
  identityOf(client: Client): ClientIdentity | undefined {
    return this.states.get(client)?.identity;
  }

  /** The peer certificate (DER) of a certificate client, to check it again. */
  certificateOf(client: Client): Buffer | undefined {
    return this.states.get(client)?.der;
  }

  /** Before CONNECT is processed: the certificate's verdict and the will, recorded for `authenticate`. */
  preConnect(client: Client, will: { topic: string; payload: Buffer } | undefined): void {
    const sock = client.conn as TLSSocket;
    const peer = typeof sock.getPeerCertificate === "function" ? sock.getPeerCertificate(false) : undefined;
    let res;
    try {
      res = this.o.verifier.verify(peer && "raw" in peer ? peer.raw : undefined);
    } catch (e) {
      res = { ok: false as const, reason: "bad-uri-san" as const, detail: `certificate could not be read: ${(e as Error).message}` };
    }
    if (!res.ok) {
      const noCert = !(peer && "raw" in peer && peer.raw);
      this.states.set(client, noCert && this.o.sas ? { sas: will ? { will } : {} } : { rejected: { reason: res.reason, detail: res.detail } });
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

  /** The CONNECT hook. Username and password are ignored for certificate clients: the certificate is the credential. */
  authenticate(client: Client, username: string | undefined, password: Buffer | undefined, done: (err: AuthenticateError | null, ok: boolean | null) => void): void {
    const st = this.states.get(client);
    if (st?.sas && !st.identity && !st.rejected) {
      void this.authenticateSas(client, st, username, password).then(() => this.finishAuthenticate(st, done));
      return;
    }
    this.finishAuthenticate(st, done);
  }

  /** The connection is gone: its SAS expiry timer with it. */
  forget(client: Client): void {
    clearTimeout(this.states.get(client)?.sas?.expiry);
  }

  /** The CONNECT verdict: an identity from the certificate or the SAS token, or the recorded refusal. */
  private finishAuthenticate(st: ClientState | undefined, done: (err: AuthenticateError | null, ok: boolean | null) => void): void {
    if (!st?.identity || st.rejected) {
      const r = st?.rejected ?? { reason: "no-certificate" as const, detail: "no verified certificate" };
      this.o.reject({ stage: "connect", reason: r.reason, detail: r.detail, ...(st?.identity ? { identity: st.identity.key } : {}) });
      this.o.metrics.connections.inc({ result: "refused", principal: st?.identity?.principal ?? "unknown" });
      const err = Object.assign(new Error(`not authorized: ${r.reason}`), { returnCode: 5 as AuthErrorCode }) as AuthenticateError;
      done(err, false);
      return;
    }
    done(null, true);
  }

  /** A module without a certificate: its SAS token, checked by the identity daemon (key in the HSM) and here. */
  private async authenticateSas(client: Client, st: ClientState, username: string | undefined, password: Buffer | undefined): Promise<void> {
    const sas = st.sas;
    const verifier = this.o.sas;
    if (!sas || !verifier) return;
    const r = await authenticateSas(
      { verifier, policy: this.o.policy, attestation: this.o.attestation, deviceId: this.o.verifier.deviceId },
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
      this.o.reject({ stage: "session", reason: "sas-expired", detail: `module ${r.identity.moduleId ?? ""}: SAS token expired; disconnected`, identity: r.identity.key });
      client.close();
    }, Math.max(0, Math.min(left, 2 ** 31 - 1)));
    sas.expiry.unref();
  }

  /** Caps, reserved topics and the policy's publish rules. Throws Rejected. */
  checkPublish(id: ClientIdentity, topic: string, payload: Buffer): void {
    const l = this.o.limits;
    if (payload.length > l.maxPayloadBytes) throw new Rejected("payload-too-large", `payload ${payload.length} bytes > ${l.maxPayloadBytes}`);
    if (topic.split("/").length > l.maxTopicLevels) throw new Rejected("topic-too-deep", `topic has more than ${l.maxTopicLevels} levels`);
    if (topic.startsWith("$")) throw new Rejected("reserved-topic", `${topic.slice(0, 64)} is reserved`);
    this.o.decisions.decide(id, "publish", topic);
  }

  /** Why a subscription is refused, or undefined when it is granted. */
  subscribeProblem(id: ClientIdentity, sub: Subscription): { reason: HubRejectReason; detail: string } | undefined {
    const topic = sub.topic;
    const l = this.o.limits;
    if (topic.split("/").length > l.maxTopicLevels) return { reason: "topic-too-deep", detail: `more than ${l.maxTopicLevels} levels` };
    // The three `$iothub/` filters only ever receive what the hub writes to this connection; every other `$` is closed.
    if (topic.startsWith("$") && !IOTHUB_SUBSCRIPTIONS.includes(topic)) return { reason: "reserved-topic", detail: "`$` topics are not for clients" };
    const first = topic.split("/")[0];
    if (!l.allowRootWildcard && (first === "#" || first === "+")) return { reason: "wildcard-root", detail: "a filter may not start with a wildcard" };
    try {
      this.o.decisions.decide(id, "subscribe", topic);
    } catch (e) {
      if (e instanceof Rejected) return { reason: e.reason, detail: e.message };
      throw e;
    }
    return undefined;
  }
}
