import { DEFAULT_CRL_POLL_SECONDS } from "../edge-hub/index.js";
import { RevocationRig } from "../test/fixtures/revocation-rig.js";
import { row, type Benchmark, type BenchRow, type Progress } from "./types.js";

/** A revocation lands uniformly in a poll cycle: 7 rounds gave medians from 1.05 to 3.58 s in one hour; 15 scatter less. */
const ROUNDS = 15;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

/**
 * Revocation → hub refusal, end to end with the real parts (`RevocationRig`: ca-service on a SoftHSM token serving
 * its CRL with an ETag; an edge hub polling it with a conditional GET every `crlRefreshSeconds`, the default; leaf
 * devices connected over mTLS). The revocation is made through the CA at a random point of the poll cycle; the latency
 * is until the hub cuts the live session. The reference is the configured poll interval: the median should be about
 * half of it (a revocation lands anywhere in an interval). `test/revocation.e2e.test.ts` asserts the same path.
 */
export const revocationBenchmark: Benchmark = {
  id: "revocation",
  description: "revoke at ca-service → edge hub cuts the revoked leaf's live session, default CRL poll (conditional GET), vs the configured interval",
  async run(progress: Progress): Promise<BenchRow[]> {
    progress.step("cloud CA on SoftHSM (CRL on its revocation listener); edge hub with CA-issued certificates polling it at the default interval");
    const rig = await RevocationRig.start();
    try {
      const latencies: number[] = [];
      for (let i = 0; i < ROUNDS; i++) {
        const leaf = await rig.connectLeaf(`bench-leaf${i}`);
        // Land the revocation at a random point of the poll cycle, as a real one would.
        await new Promise((r) => setTimeout(r, Math.random() * DEFAULT_CRL_POLL_SECONDS * 1000));
        const cut = rig.sessionCut(leaf.id);
        const at = performance.now();
        await rig.ca.revoke(leaf.serial, "keyCompromise", "bench");
        const ms = (await cut).at - at;
        latencies.push(ms / 1000);
        progress.step(`revocation round ${i + 1}/${ROUNDS}: ${(ms / 1000).toFixed(2)} s`);
      }
      return [
        row({
          name: `revoke at ca-service → hub cuts the leaf's live session, median of ${ROUNDS} (rounds ${Math.min(...latencies).toFixed(2)}–${Math.max(...latencies).toFixed(2)} s; default CRL poll, conditional GET)`,
          value: median(latencies), unit: "s", higherIsBetter: false,
          reference: { name: "configured poll interval (hub.crlRefreshSeconds default)", value: DEFAULT_CRL_POLL_SECONDS },
          target: 1, source: "issue 17",
        }),
      ];
    } finally {
      await rig.close();
    }
  },
};
