import type { Benchmark } from "./types.js";
import { hsmBenchmark } from "./hsm.js";
import { manifestBenchmark } from "./manifest.js";
import { hubBenchmark } from "./hub.js";
import { caBenchmark } from "./ca.js";
import { agentBenchmark } from "./agent.js";
import { enrollBenchmark } from "./enroll.js";

/** Every benchmark of the project, in the order `edgetrust bench` runs them. Components add theirs here. */
export const benchmarks: Benchmark[] = [hsmBenchmark, manifestBenchmark, hubBenchmark, caBenchmark, agentBenchmark, enrollBenchmark];

export type { Benchmark, BenchRow, Progress } from "./types.js";
export { row } from "./types.js";
