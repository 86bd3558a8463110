import { isPermanentCaRefusal } from "./ca-client.js";
import type { ClockWatch } from "./clock-watch.js";
import { CERT_KINDS, type CertKind, type IdentityOptions } from "./identity-options.js";
import { backoffMs, type Assessment } from "./renewal.js";

/** What one pass of the schedule needs of the identity. */
interface ScheduleContext {
  opts: IdentityOptions;
  now(): Date;
  assess(now?: Date): Record<CertKind, Assessment>;
  /** Renew one certificate now (the caller already holds the identity's lock). */
  renew(kind: CertKind, rekey: boolean): Promise<unknown>;
  clock: ClockWatch;
}

interface RenewalFailure {
  count: number;
  retryAt: number;
  error: string;
  /** Failed because the HSM was unavailable: retried as soon as it is back. */
  hsm?: boolean;
}

/**
 * The renewal schedule: renew what is due (or expired), back off after failures, never act on a clock that reads
 * earlier than our certificates. Failures are remembered per certificate, for the backoff and the status.
 */
export class RenewalSchedule {
  private readonly failures = new Map<CertKind, RenewalFailure>();

  constructor(private readonly ctx: ScheduleContext) {}

  failure(kind: CertKind): RenewalFailure | undefined {
    return this.failures.get(kind);
  }

  /** The HSM works again: renewals that waited for it are retried at the next pass instead of after their backoff. */
  hsmRecovered(): void {
    for (const f of this.failures.values()) if (f.hsm) f.retryAt = 0;
  }

  /** One pass. Returns how long to wait before the next one. */
  async pass(maxWaitMs: number): Promise<number> {
    const { opts, clock } = this.ctx;
    const now = this.ctx.now();
    const assessed = this.ctx.assess(now);
    let wait = maxWaitMs;
    let seen: string | undefined;
    for (const kind of CERT_KINDS) {
      const a = assessed[kind];
      if (a.status === "clock-behind") {
        seen = a.detail;
        continue;
      }
      if (a.status === "valid") {
        wait = Math.min(wait, Math.max(1000, a.renewAt.getTime() - now.getTime()));
        continue;
      }
      if (kind === "hub" && (assessed["edge-ca"].status !== "valid" && assessed["edge-ca"].status !== "due" || a.notAfter.getTime() >= assessed["edge-ca"].notAfter.getTime() - 60_000)) {
        // The hub certificate is issued by the Edge CA and never outlives it: reissuing now would not extend it.
        // It is reissued with the Edge CA's renewal.
        continue;
      }
      if (a.status === "expired" && clock.aheadOfCa()) {
        // The CA already told us our clock is ahead of its own: renewing again would only loop. Report, wait.
        seen = clock.aheadOfCa();
        continue;
      }
      const f = this.failures.get(kind);
      if (f && f.retryAt > now.getTime()) {
        wait = Math.min(wait, f.retryAt - now.getTime());
        continue;
      }
      const fail = (error: string, permanent: boolean, hsm: boolean): void => {
        const count = (f?.count ?? 0) + 1;
        const delay = permanent ? opts.retryMaxMs : backoffMs(count, opts.retryInitialMs, opts.retryMaxMs);
        this.failures.set(kind, { count, retryAt: now.getTime() + delay, error, ...(hsm ? { hsm } : {}) });
        wait = Math.min(wait, delay);
        opts.log.warn({ kind, attempt: count, retryInSeconds: Math.round(delay / 1000), err: error, permanent }, "renewal failed; serving with the current certificate and retrying");
      };
      const hsm = opts.hsmProblem?.();
      if (hsm) {
        // No key operation can succeed: do not call the CA with a renewal that cannot be signed; back off.
        fail(`the HSM is unavailable: ${hsm}`, false, true);
        continue;
      }
      if (a.status === "expired") opts.log.error({ kind, notAfter: a.notAfter.toISOString() }, "certificate expired; renewing (the CA accepts renewals for a while after expiry)");
      try {
        await this.ctx.renew(kind, opts.rotateKeys);
        this.failures.delete(kind);
      } catch (e) {
        fail((e as Error).message, isPermanentCaRefusal(e), Boolean(opts.hsmProblem?.()));
      }
    }
    clock.afterPass(seen, () => Object.values(this.ctx.assess()).every((x) => x.status === "valid" || x.status === "due"));
    return wait;
  }
}
