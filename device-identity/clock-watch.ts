import type { Logger } from "../common/index.js";
import type { CertKind } from "./identity-options.js";
import type { Assessment } from "./renewal.js";

/**
 * What the identity knows about its own clock. A wrong clock is reported (status; module issuance refuses while it
 * lasts), never acted on: nothing is renewed or discarded on its word.
 */
export class ClockWatch {
  private problem: string | undefined;
  /** Set when a certificate fresh from the CA already looks expired here: the device clock runs ahead. */
  private ahead: string | undefined;

  constructor(private readonly log: Logger) {}

  /** A clock problem seen at the last check, if any. */
  current(): string | undefined {
    return this.problem;
  }

  /** The CA already told us our clock is ahead of its own, if it did: renewing an "expired" certificate would only loop. */
  aheadOfCa(): string | undefined {
    return this.ahead;
  }

  /**
   * After a renewal: the CA's clock (`caDisagreement`, from its HTTP Date) and the fresh certificate judged by the
   * device's clock (`fresh`). A certificate issued just now that is not valid here means the device clock is wrong.
   */
  afterRenewal(kind: CertKind, caDisagreement: string | undefined, fresh: Assessment, now: Date): void {
    if (caDisagreement || fresh.status === "expired" || fresh.status === "clock-behind") {
      this.problem = caDisagreement ?? `a certificate issued just now is not valid at the device's time ${now.toISOString()}: the device clock is wrong`;
      if (fresh.status === "expired") this.ahead = this.problem;
      this.log.error({ kind, problem: this.problem }, "device clock disagrees with the CA");
    } else {
      this.ahead = undefined;
    }
  }

  /**
   * After a pass of the schedule: `seen` is the clock problem a certificate showed (clock behind notBefore, or ahead of
   * the CA), if any. A problem clears once every certificate is valid or due again (`allInForce`).
   */
  afterPass(seen: string | undefined, allInForce: () => boolean): void {
    if (seen && seen !== this.problem) this.log.error({ problem: seen }, "device clock is wrong: not renewing, still serving with the stored certificates");
    if (seen) this.problem = seen;
    else if (this.problem && allInForce()) {
      this.problem = undefined;
      this.ahead = undefined;
    }
  }
}
