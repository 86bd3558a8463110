import { relative } from "node:path";
import { defineConfig } from "vitest/config";
import { BaseSequencer, type TestSpecification } from "vitest/node";

/**
 * The files that take longest in a full run, longest first (per-file durations of `make test` at 81b89cd, over 15 s).
 * Two workers take files from one queue: a long file that starts last keeps one worker busy while the other idles.
 * Vitest's own order without a results cache (a clean clone, i.e. CI) is by file size, which put small long files such
 * as the renewal soak and the CLI tests near the end. Unlisted files follow in vitest's order; a stale list costs
 * minutes, never a result.
 */
const SLOW_FIRST = [
  "fleet/fleet.test.ts", "ca-service/cluster.test.ts", "test/demo.e2e.test.ts", "ca-service/serve-crash.test.ts",
  "ca-service/scaleout.test.ts", "ca-service/enrollment/import.test.ts", "device-identity/hsm-fault.test.ts",
  "hsm/cli.test.ts", "ca-service/audit-checkpoint.test.ts", "console/serve.test.ts", "fleet/cli.test.ts",
  "ca-service/enrollment/cli.test.ts", "ca-service/cli.test.ts", "test/renewal-soak.e2e.test.ts",
  "edge-hub/cli.test.ts", "console/console.test.ts", "device-identity/provision.test.ts", "edge-agent/cli.test.ts",
  "ca-service/store-identity.test.ts", "device-identity/renewal.test.ts", "device-identity/attestation.test.ts",
  "test/attested-module.e2e.test.ts", "ca-service/enrollment/refusals.test.ts", "certs-dev/certs-dev.test.ts",
  "edge-agent/faults.test.ts", "ca-service/enrollment/tpm.test.ts", "device-identity/workload.test.ts",
  "edge-hub/revocation-signal.test.ts", "test/azure-module.e2e.test.ts", "edge-agent/rollback.test.ts",
];

class SlowFirstSequencer extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const root = this.ctx.config.root;
    const rank = (f: TestSpecification): number => {
      const i = SLOW_FIRST.indexOf(relative(root, f.moduleId));
      return i === -1 ? SLOW_FIRST.length : i;
    };
    // Array.prototype.sort is stable: the rest keep vitest's order.
    return (await super.sort(files)).sort((a, b) => rank(a) - rank(b));
  }
}

export default defineConfig({
  test: {
    include: ["**/*.test.ts"],
    // @peculiar/x509 resolves its ASN.1 helpers through tsyringe, which needs the Reflect polyfill loaded first.
    setupFiles: ["reflect-metadata"],
    exclude: ["node_modules/**", "dist/**"],
    // HSM tokens, dockerd and TLS handshakes are real: give them time, and keep the 2-core machine from thrashing.
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: "forks",
    maxWorkers: 2,
    reporters: ["default"],
    sequence: { sequencer: SlowFirstSequencer },
  },
});
