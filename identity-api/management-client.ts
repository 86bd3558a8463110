import { EventEmitter } from "node:events";
import type { TSchema, Static } from "@sinclair/typebox";
import { EdgeTrustError, createLogger, httpCall, refusal, registerCompiledValidator, validateValue, type Logger } from "../common/index.js";
import type { AttestationEvent, AttestationSource, ModuleAttestationState } from "./attestation.js";
import {
  EventsPageSchema, EvidenceResponse, ModuleListSchema, ModuleViewSchema, ReportSchema, SasVerifyResponse,
  type AttestedModuleInput, type EventsPage, type ModuleEvent, type ModuleView, type RenewKind, type SasVerifyAnswer,
} from "./management.js";
import { eventsPageAnswer, evidenceAnswer, moduleListAnswer, moduleViewAnswer, reportAnswer, sasVerifyAnswer } from "./answer-validators.js";

// Answers are checked by validators compiled at build time (scripts/compiled-validators.mjs), not at the first request.
for (const [schema, validate] of [
  [ModuleViewSchema, moduleViewAnswer], [ModuleListSchema, moduleListAnswer], [EventsPageSchema, eventsPageAnswer],
  [ReportSchema, reportAnswer], [EvidenceResponse, evidenceAnswer], [SasVerifyResponse, sasVerifyAnswer],
] as const) registerCompiledValidator(schema, validate);

/**
 * Client of the device identity daemon's management socket (root-only), for the edge agent and the hub. Every answer
 * is validated against the wire schema before it is returned; every failure is an EdgeTrustError carrying the daemon's
 * problem+json code and detail (403 FORBIDDEN says why a module was refused).
 */
export class ManagementClient {
  constructor(readonly socketPath: string, private readonly timeoutMs = 30_000) {}

  /** Vouch for a module the agent created from a verified manifest; the daemon checks the container before it agrees. */
  register(m: AttestedModuleInput): Promise<ModuleView> {
    return this.call("POST", "/v1/modules", ModuleViewSchema, m);
  }

  async deregister(name: string, reason?: string): Promise<void> {
    const q = reason ? `?reason=${encodeURIComponent(reason)}` : "";
    await this.call("DELETE", `/v1/modules/${encodeURIComponent(name)}${q}`, undefined);
  }

  async list(): Promise<ModuleView[]> {
    return (await this.call("GET", "/v1/modules", ModuleListSchema)).modules;
  }

  /** The module, or undefined when it is not registered. */
  async get(name: string): Promise<ModuleView | undefined> {
    try {
      return await this.call("GET", `/v1/modules/${encodeURIComponent(name)}`, ModuleViewSchema);
    } catch (e) {
      if (e instanceof EdgeTrustError && e.code === "NOT_FOUND") return undefined;
      throw e;
    }
  }

  status(): Promise<Record<string, unknown>> {
    return this.call("GET", "/v1/status", ReportSchema);
  }

  /** Attestation changes after `after`; waits up to `waitSeconds` for one (long poll). */
  events(after: number, waitSeconds = 0, signal?: AbortSignal): Promise<EventsPage> {
    return this.call("GET", `/v1/events?after=${after}&waitSeconds=${waitSeconds}`, EventsPageSchema, undefined, signal, (waitSeconds + 10) * 1000);
  }

  /** Renew now, whatever the schedule says (operators, tests). */
  renew(kind: RenewKind, rekey = false): Promise<Record<string, unknown>> {
    return this.call("POST", "/v1/renew", ReportSchema, { kind, rekey });
  }

  /** Attestation evidence (EAT-style JWT signed by the device key) bound to the verifier's nonce. */
  async evidence(nonce: string): Promise<string> {
    return (await this.call("POST", "/v1/attestation/evidence", EvidenceResponse, { nonce })).evidence;
  }

  /** Is this a genuine, unexpired SAS token of a module registered with `auth: sas`? 403 FORBIDDEN says why not. */
  verifySas(token: string): Promise<SasVerifyAnswer> {
    return this.call("POST", "/v1/sas/verify", SasVerifyResponse, { token });
  }

  /** One request; a 2xx answer must match `answer` (no schema: no body expected). */
  private async call<S extends TSchema | undefined>(
    method: string, path: string, answer: S, body?: unknown, signal?: AbortSignal, timeoutMs = this.timeoutMs,
  ): Promise<S extends TSchema ? Static<S> : undefined> {
    type T = S extends TSchema ? Static<S> : undefined;
    const a = await httpCall({
      method, socketPath: this.socketPath, url: path, body, timeoutMs, ...(signal ? { signal } : {}),
      peer: `device identity daemon at ${this.socketPath}`, unreachableHint: "is `edgetrust device run` running, and is this process root?",
    });
    if (a.status >= 200 && a.status < 300) {
      let parsed: unknown;
      try {
        parsed = answer ? JSON.parse(a.text) : undefined;
      } catch (e) {
        throw new EdgeTrustError("UNAVAILABLE", `device identity daemon answered ${method} ${path.split("?")[0]} with no JSON: ${(e as Error).message}`);
      }
      return (answer ? validateValue(parsed, answer, `device identity daemon's answer to ${method} ${path.split("?")[0]}`, "UNAVAILABLE") : undefined) as T;
    }
    throw refusal(a, { fallback: (status) => (status === 403 ? "FORBIDDEN" : "UNAVAILABLE"), message: (detail) => detail ?? `device identity daemon answered ${a.status} to ${method} ${path}` });
  }
}

/**
 * AttestationSource over the management socket, for a hub in another process: a cache filled from `GET /v1/modules`
 * and kept current by long-polling `GET /v1/events`. While the daemon is unreachable the last known state is kept
 * (modules keep working offline); after it restarts (new epoch) the cache is rebuilt and differences are reported.
 */
export class ManagementAttestationSource implements AttestationSource {
  private readonly cache = new Map<string, ModuleAttestationState>();
  private readonly emitter = new EventEmitter();
  private epoch = "";
  private after = 0;
  private stopped = false;
  private readonly abort = new AbortController();
  private loop: Promise<void> | undefined;
  private readonly log: Logger;

  constructor(private readonly client: ManagementClient, private readonly deviceId: string, opts: { waitSeconds?: number; retryMs?: number; log?: Logger } = {}) {
    this.waitSeconds = opts.waitSeconds ?? 25;
    this.retryMs = opts.retryMs ?? 2000;
    this.log = opts.log ?? createLogger("identity-api");
  }
  private readonly waitSeconds: number;
  private readonly retryMs: number;

  /** Load the current modules, then follow changes in the background. */
  async start(): Promise<void> {
    await this.resync();
    this.loop = this.follow();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.abort.abort();
    await this.loop;
  }

  current(deviceId: string, module: string): ModuleAttestationState | undefined {
    if (deviceId !== this.deviceId) return undefined;
    const v = this.cache.get(module);
    return v ? { ...v } : undefined;
  }

  subscribe(listener: (event: AttestationEvent) => void): () => void {
    this.emitter.on("event", listener);
    return () => this.emitter.off("event", listener);
  }

  private emit(type: AttestationEvent["type"], module: string): void {
    this.emitter.emit("event", { type, deviceId: this.deviceId, module } satisfies AttestationEvent);
  }

  private async resync(): Promise<void> {
    const page = await this.client.events(0, 0, this.abort.signal);
    const mods = await this.client.list();
    const seen = new Set<string>();
    for (const m of mods) {
      seen.add(m.name);
      const prev = this.cache.get(m.name);
      this.cache.set(m.name, { imageDigest: m.imageDigest, manifestVersion: m.manifestVersion });
      if (prev && (prev.imageDigest !== m.imageDigest || prev.manifestVersion !== m.manifestVersion)) this.emit("updated", m.name);
    }
    for (const name of [...this.cache.keys()]) {
      if (!seen.has(name)) {
        this.cache.delete(name);
        this.emit("deregistered", name);
      }
    }
    this.epoch = page.epoch;
    this.after = page.next;
  }

  private async refresh(name: string, type: ModuleEvent["type"]): Promise<void> {
    if (type === "deregistered") {
      if (this.cache.delete(name)) this.emit("deregistered", name);
      return;
    }
    const m = await this.client.get(name);
    const prev = this.cache.get(name);
    if (!m) {
      if (prev) {
        this.cache.delete(name);
        this.emit("deregistered", name);
      }
      return;
    }
    this.cache.set(name, { imageDigest: m.imageDigest, manifestVersion: m.manifestVersion });
    if (prev && (prev.imageDigest !== m.imageDigest || prev.manifestVersion !== m.manifestVersion)) this.emit("updated", name);
  }

  private async follow(): Promise<void> {
    while (!this.stopped) {
      try {
        const page = await this.client.events(this.after, this.waitSeconds, this.abort.signal);
        if (page.epoch !== this.epoch || page.gap) {
          await this.resync();
          continue;
        }
        for (const ev of page.events) await this.refresh(ev.module, ev.type);
        this.after = page.next;
      } catch (e) {
        if (this.stopped) return;
        this.log.warn({ err: (e as Error).message }, "attestation events unavailable; keeping the last known modules");
        await new Promise((r) => setTimeout(r, this.retryMs));
      }
    }
  }
}
