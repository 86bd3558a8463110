import type { Benchmark } from "./types.js";
import { hsmBenchmark } from "./hsm.js";
import { manifestBenchmark } from "./manifest.js";
import { hubBenchmark } from "./hub.js";
import { caBenchmark } from "./ca.js";
import { factoryBenchmark } from "./factory.js";
import { agentBenchmark } from "./agent.js";
import { enrollBenchmark, registrationBenchmark } from "./enroll.js";
import { identityBenchmark } from "./identity.js";
import { consoleBenchmark } from "./console.js";
import { revocationBenchmark } from "./revocation.js";

/** Every benchmark of the project, in the order `edgetrust bench` runs them. Components add theirs here. */
export const benchmarks: Benchmark[] = [hsmBenchmark, manifestBenchmark, hubBenchmark, factoryBenchmark, caBenchmark, agentBenchmark, enrollBenchmark, registrationBenchmark, identityBenchmark, consoleBenchmark, revocationBenchmark];

export type { Benchmark, BenchRow, Progress } from "./types.js";
export { row, skippedRow } from "./types.js";
