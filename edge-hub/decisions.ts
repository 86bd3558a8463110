import type { Logger } from "../common/index.js";
import { decideTopic, type Policy } from "../policy/index.js";
import { Rejected } from "./rejection.js";
import type { ClientIdentity } from "./verify.js";

/** Policy decisions remembered: at most this many, for topics up to this many characters. */
const DECISION_CACHE_MAX = 4096;
const DECISION_TOPIC_MAX = 256;

/**
 * The policy's hub rules (deny by default; audit mode logs and lets through). The outcome depends only on (policy,
 * principal, identity, action, topic) and the policy of a hub never changes, so it is remembered: a module publishing
 * to the same topic again costs one map lookup. Bounded (cleared when full; long topics are not kept).
 */
export class TopicDecisions {
  private readonly decisions = new Map<string, { permitted: boolean; allowed: boolean; detail: string }>();

  constructor(
    private readonly policy: Policy,
    private readonly log: Logger,
  ) {}

  /** Throws Rejected (`policy-denied`) when the policy refuses. */
  decide(id: ClientIdentity, action: "publish" | "subscribe", topic: string): void {
    const key = topic.length <= DECISION_TOPIC_MAX ? `${id.principal}\u0000${id.key}\u0000${action}\u0000${topic}` : undefined;
    let d = key === undefined ? undefined : this.decisions.get(key);
    if (!d) {
      const full = decideTopic(this.policy, principal(id), action, topic);
      d = { permitted: full.permitted, allowed: full.allowed, detail: full.permitted ? "" : `${full.subject}: ${full.rules.map((r) => r.reason).join("; ")}` };
      if (key !== undefined) {
        if (this.decisions.size >= DECISION_CACHE_MAX) this.decisions.clear();
        this.decisions.set(key, d);
      }
    }
    if (!d.permitted) throw new Rejected("policy-denied", d.detail);
    if (!d.allowed) this.log.warn({ identity: id.key, action, topic }, "audit mode: would be denied");
  }
}

function principal(id: ClientIdentity): { principal: "module" | "device" | "leaf"; device: string; module?: string } {
  return id.moduleId === undefined ? { principal: id.principal, device: id.deviceId } : { principal: id.principal, device: id.deviceId, module: id.moduleId };
}
