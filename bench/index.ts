import type { Benchmark } from "./types.js";
import { hsmBenchmark } from "./hsm.js";
import { manifestBenchmark } from "./manifest.js";
import { hubBenchmark, hubMemoryBenchmark } from "./hub.js";
import { hubSasBenchmark } from "./hub-sas.js";
import { caBenchmark } from "./ca.js";
import { factoryBenchmark } from "./factory.js";
import { agentBenchmark } from "./agent.js";
import { enrollBenchmark, registrationBenchmark } from "./enroll.js";
import { identityBenchmark } from "./identity.js";
import { consoleBenchmark } from "./console.js";
import { revocationBenchmark } from "./revocation.js";
import { fleetBenchmark } from "./fleet.js";
import { serveBenchmark } from "./serve.js";

/** Every benchmark of the project, in the order `edgetrust bench` runs them. Components add theirs here. */
export const benchmarks: Benchmark[] = [hsmBenchmark, manifestBenchmark, hubBenchmark, hubMemoryBenchmark, hubSasBenchmark, factoryBenchmark, serveBenchmark, caBenchmark, agentBenchmark, enrollBenchmark, registrationBenchmark, identityBenchmark, consoleBenchmark, revocationBenchmark, fleetBenchmark];

