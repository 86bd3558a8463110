import type { RejectReason } from "./verify.js";
import type { SasRejectReason } from "./sas-auth.js";

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

/** Counts, logs and announces a refusal (the hub's one way to say no). */
export type Reject = (r: Rejection) => void;

/** Thrown by a check to refuse a packet; the broker hook turns it into a Rejection. */
export class Rejected extends Error {
  constructor(readonly reason: HubRejectReason, detail: string) {
    super(detail);
  }
}
