import { Agent } from "node:https";
import { EdgeTrustError } from "../common/index.js";
import { deviceLife, randomPrefix, type DeviceOutcome, type Measurements, type SimContext } from "./device.js";
import { call, codeOf } from "./http.js";
import { countInto, StepTimes } from "./stats.js";
import { checkStore, type StoreCheck, type StoreTarget } from "./store-check.js";
import { softwareKeys, type DeviceKeySource } from "./keys.js";

/** Reference values as the CA reads them (`ca.attestation.referenceFile`): the simulated devices measure the first of each. */
export interface ReferenceDigests {
  agent?: string[];
  policy?: string[];
  trustRoot?: string[];
  manifest?: { minVersion: number; digests?: string[] };
  modules?: Record<string, string[]>;
}

interface SimulateOptions {
  /** Base URL of the CA (one process, or the load balancer in front of several). */
  caUrl: string;
  /** The root certificate (PEM) devices trust the CA's TLS listener with. */
  rootPem: string;
  devices: number;
  /** Devices living at once. */
  concurrency: number;
  /** A provisioning line token; without one, `adminToken` creates a line for the run. */
  lineToken?: string;
  /** Admin token: creates the line when none is given, and revokes the `revokePercent` devices. */
  adminToken?: string;
  /** Device ids are `<prefix>-<n>` (default `sim-<random>`). */
  prefix?: string;
  /** Share of devices revoked after renewal, which must then be refused (default 5; needs adminToken). */
  revokePercent?: number;
  references?: ReferenceDigests;
  /** Check each device's evidence on another CA process than the one that made its nonce (default true). */
  crossInstance?: boolean;
  /** Attempts per request before a device gives up (default 25: exponential backoff to 5 s, about 1.5 min). */
  maxAttempts?: number;
  /** Device keys: software (default) or a SoftHSM token of the simulator's own (`softHsmKeys`). */
  keys?: DeviceKeySource;
  /** Query this store afterwards for duplicates and lost records. */
  store?: StoreTarget;
  onProgress?: (done: number, errors: number) => void;
}

export interface SimulationResult {
  caUrl: string;
  prefix: string;
  /** Where the device keys lived. */
  keys: "software" | "softhsm";
  devices: number;
  completed: number;
  registered: number;
  attested: Record<string, number>;
  affirming: number;
  /** Devices whose evidence another process checked than the one that made the nonce. */
  crossInstanceAttestations: number;
  instances: string[];
  deployments: number;
  reported: number;
  renewed: number;
  revoked: number;
  refusedAsExpected: number;
  errors: number;
  errorsByCode: Record<string, number>;
  retriesByCode: Record<string, number>;
  /** For each key of `retriesByCode`, the first such answer's status, process and detail. */
  retryDetails: Record<string, string>;
  /** 503 answers that did not say when to retry (no Retry-After), by step and code. */
  unavailableWithoutRetryAfter: Record<string, number>;
  steps: Record<string, { count: number; p50Ms: number; p99Ms: number }>;
  seconds: number;
  devicesPerSecond: number;
  store?: StoreCheck;
  /** The first few failures, with their reasons. */
  sampleErrors: Array<{ deviceId: string; step: string; code: string; detail: string }>;
}

const ZERO = `sha256:${"0".repeat(64)}`;

function measurementsFrom(refs: ReferenceDigests = {}): Measurements {
  const version = refs.manifest?.minVersion ?? 1;
  return {
    agent: refs.agent?.[0] ?? ZERO,
    policy: refs.policy?.[0] ?? ZERO,
    trustRoot: refs.trustRoot?.[0] ?? ZERO,
    manifest: { digest: refs.manifest?.digests?.[0] ?? ZERO, version },
    modules: Object.fromEntries(Object.entries(refs.modules ?? {}).map(([name, ds]) => [name, { imageDigest: ds[0] ?? ZERO, manifestVersion: version }])),
  };
}

/**
 * Drive `devices` simulated devices through their life against a CA URL with bounded concurrency; afterwards (with
 * `store`) count in the store what was duplicated or lost. Never throws for a device's failure: it is counted.
 */
export async function simulateFleet(opts: SimulateOptions): Promise<SimulationResult> {
  const prefix = opts.prefix ?? randomPrefix();
  if (!/^[A-Za-z0-9.-]{1,40}$/.test(prefix)) throw new EdgeTrustError("INVALID_INPUT", `prefix ${JSON.stringify(prefix)} must be 1-40 letters, digits, dots or dashes`);
  if (!Number.isInteger(opts.devices) || opts.devices < 1) throw new EdgeTrustError("INVALID_INPUT", "devices must be a positive integer");
  const caUrl = opts.caUrl.replace(/\/$/, "");
  const pool = new Agent({ keepAlive: true, maxSockets: Math.max(1, opts.concurrency), ca: opts.rootPem });
  try {
    let lineToken = opts.lineToken;
    if (!lineToken) {
      if (!opts.adminToken) throw new EdgeTrustError("INVALID_INPUT", "a provisioning line token or an admin token (to create a line) is needed", { hint: "--line-token etl_… or --admin-token et_…" });
      const r = await call(pool, "POST", `${caUrl}/v1/lines`, { headers: { authorization: `Bearer ${opts.adminToken}` }, body: { name: `fleet simulation ${prefix}`, maxEnrollments: opts.devices, ratePerMinute: 1_000_000 } });
      if (r.status !== 201 || typeof r.json.token !== "string") throw new EdgeTrustError("UNAUTHENTICATED", `could not create a provisioning line: ${codeOf(r)} ${String(r.json.detail ?? "")}`);
      lineToken = r.json.token;
    }
    const ctx: SimContext = {
      caUrl, rootPem: opts.rootPem, lineToken, ...(opts.adminToken ? { adminToken: opts.adminToken } : {}), pool,
      keys: opts.keys ?? softwareKeys(), measurements: measurementsFrom(opts.references), crossInstance: opts.crossInstance ?? true, maxAttempts: opts.maxAttempts ?? 25,
      times: new StepTimes(), retries: {}, retryDetails: {}, unavailableWithoutRetryAfter: {},
    };
    const every = opts.revokePercent === undefined ? 20 : opts.revokePercent > 0 ? Math.max(1, Math.round(100 / opts.revokePercent)) : 0;
    const outcomes: DeviceOutcome[] = new Array<DeviceOutcome>(opts.devices);
    let next = 0;
    let done = 0;
    let errors = 0;
    const t0 = performance.now();
    const worker = async () => {
      for (let i = next++; i < opts.devices; i = next++) {
        const o = await deviceLife(ctx, `${prefix}-${i}`, every > 0 && i % every === every - 1);
        outcomes[i] = o;
        done++;
        if (o.error) errors++;
        opts.onProgress?.(done, errors);
      }
    };
    await Promise.all(Array.from({ length: Math.min(opts.devices, Math.max(1, opts.concurrency)) }, worker));
    const seconds = (performance.now() - t0) / 1000;
    const attested: Record<string, number> = {};
    const errorsByCode: Record<string, number> = {};
    for (const o of outcomes) {
      if (o.attestation) countInto(attested, o.attestation);
      if (o.error) countInto(errorsByCode, `${o.error.step}:${o.error.code}`);
    }
    const result: SimulationResult = {
      caUrl, prefix, keys: ctx.keys.kind, devices: opts.devices,
      completed: outcomes.filter((o) => !o.error).length,
      registered: outcomes.filter((o) => o.registered).length,
      attested, affirming: attested.affirming ?? 0,
      crossInstanceAttestations: outcomes.filter((o) => o.nonceInstance && o.verifyInstance && o.nonceInstance !== o.verifyInstance).length,
      instances: [...new Set(outcomes.flatMap((o) => [o.nonceInstance, o.verifyInstance]).filter((x): x is string => Boolean(x)))].sort(),
      deployments: outcomes.filter((o) => o.deployment).length,
      reported: outcomes.filter((o) => o.reported).length,
      renewed: outcomes.filter((o) => o.renewed).length,
      revoked: outcomes.filter((o) => o.revoked).length,
      refusedAsExpected: outcomes.filter((o) => o.refusedAsExpected).length,
      errors, errorsByCode, retriesByCode: ctx.retries, retryDetails: ctx.retryDetails, unavailableWithoutRetryAfter: ctx.unavailableWithoutRetryAfter, steps: ctx.times.summary(),
      seconds: Math.round(seconds * 10) / 10, devicesPerSecond: Math.round((opts.devices / seconds) * 100) / 100,
      sampleErrors: outcomes.filter((o) => o.error).slice(0, 5).map((o) => ({ deviceId: o.deviceId, ...(o.error as NonNullable<DeviceOutcome["error"]>) })),
    };
    if (opts.store) result.store = await checkStore(opts.store, prefix, outcomes);
    return result;
  } finally {
    pool.destroy();
  }
}

/** The result as the table `edgetrust fleet simulate` prints. */
export function formatResult(r: SimulationResult): string {
  const rows: Array<[string, string]> = [
    ["devices", `${r.devices} (keys: ${r.keys === "softhsm" ? "SoftHSM token of the simulator's own" : "software"})`],
    ["completed (whole life, no error)", String(r.completed)],
    ["registered", String(r.registered)],
    ["attested", Object.entries(r.attested).map(([k, v]) => `${v} ${k}`).join(", ") || "0"],
    ["  nonce and evidence on different CA processes", `${r.crossInstanceAttestations} (processes seen: ${r.instances.length})`],
    ["deployment fetched (mTLS)", String(r.deployments)],
    ["reported", String(r.reported)],
    ["renewed", String(r.renewed)],
    ["revoked, then refused as expected", `${r.refusedAsExpected} of ${r.revoked}`],
    ["errors", r.errors === 0 ? "0" : `${r.errors}: ${Object.entries(r.errorsByCode).map(([k, v]) => `${k} ×${v}`).join(", ")}`],
    ["retried requests", Object.entries(r.retriesByCode).map(([k, v]) => `${k} ×${v}`).join(", ") || "none"],
    ["503 without Retry-After", Object.entries(r.unavailableWithoutRetryAfter).map(([k, v]) => `${k} ×${v}`).join(", ") || "none"],
    ["time", `${r.seconds} s (${r.devicesPerSecond} devices/s)`],
  ];
  if (r.store) {
    const s = r.store;
    rows.push(
      ["store: enrollments / registrations / certificates", `${s.enrollments} / ${s.registrations} / ${s.certificates}`],
      ["store: duplicated certificates / lost / undelivered", `${s.duplicateCertificates} / ${s.lostCertificates} / ${s.undeliveredCertificates}`],
      ["store: reports (duplicated / lost)", `${s.reports} (${s.duplicateReports} / ${s.lostReports})`],
      ["store: audit chain", s.auditChainOk ? `verifies (${s.auditEntries} entries)` : `BROKEN: ${s.auditProblem ?? "?"}`],
    );
  } else {
    rows.push(["store", "not checked (give --database-url or --sqlite-path)"]);
  }
  const w = Math.max(...rows.map(([k]) => k.length));
  const steps = Object.entries(r.steps).map(([k, v]) => `  ${k.padEnd(12)} n=${String(v.count).padEnd(7)} p50 ${v.p50Ms} ms   p99 ${v.p99Ms} ms`);
  return [...rows.map(([k, v]) => `${k.padEnd(w)}  ${v}`), "per step (including retries):", ...steps,
    ...r.sampleErrors.map((e) => `  error ${e.deviceId} ${e.step} ${e.code}: ${e.detail}`)].join("\n");
}
