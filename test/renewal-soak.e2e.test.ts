import { describe, expect, it } from "vitest";
import { runRenewalSoak, soakTable, DEFAULT_SOAK } from "./soak/renewal-soak.js";

/**
 * The shortened renewal soak (`make soak` runs 100 rounds): a few rounds in which every certificate of the device is
 * renewed — the device identity, the Edge CA and (with it) the hub server certificate each with a new HSM key — while
 * two modules publish QoS 1 through
 * `hub run` to the cloud broker. Also the end-to-end rekey: after each rotation the hub's upstream session comes back
 * presenting the renewed device certificate and the running agent's cloud requests are answered, with the old key
 * already erased from the token.
 */
describe("renewal soak (shortened)", () => {
  it("renews every certificate of the device each round with nothing lost and no connection dropped outside its own renewal", async () => {
    const rounds = 3;
    const r = await runRenewalSoak({ ...DEFAULT_SOAK, rounds, drainTimeoutMs: 60_000, onProgress: (l) => process.env.SOAK_VERBOSE && process.stderr.write(`${l}\n`) });
    const table = soakTable(r);
    expect(r.problems, table).toEqual([]);
    expect(r.renewals).toEqual({ device: rounds, edgeCa: rounds, hub: rounds, module: rounds * r.modules });
    expect(r.keyRotations).toEqual({ device: rounds, edgeCa: rounds, hub: rounds });
    expect(r.messages.sent, table).toBeGreaterThan(0);
    expect(r.messages.delivered, table).toBe(r.messages.sent);
    expect(r.messages.missing).toBe(0);
    expect(r.disconnects.unplannedModule, table).toBe(0);
    expect(r.disconnects.unplannedUpstream, table).toBe(0);
    expect(r.disconnects.plannedUpstream).toBe(rounds);
    // Rekey end to end: every upstream connection after a rotation presented the certificate then in force.
    expect(r.upstream.staleCertificate, table).toBe(0);
    expect(r.upstream.connections).toBe(rounds + 1);
    // The agent's next request after every rekey was answered (a missing one is in r.problems), and none failed: a
    // request reading the certificate just before the switch and its key just after the old one's erasure once failed
    // (1 in 645 before hsm/tls.ts read the certificate again when its key is gone; 0 of 1,220 in two 100-round runs since).
    expect(r.agent.requestsAnswered).toBeGreaterThanOrEqual(rounds);
    expect(r.agent.requestsFailed, table).toBe(0);
  }, 600_000);
});
