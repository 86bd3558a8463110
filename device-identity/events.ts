import { randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import type { AttestationEvent, AttestationSource, ModuleAttestationState, ModuleEvent } from "../identity-api/index.js";
import type { AttestedModule, AttestedModules } from "./attested-modules.js";

/**
 * A numbered, bounded log of attestation changes for clients in other processes (the hub): they long-poll
 * `GET /v1/events?after=<seq>`. The epoch changes when the daemon restarts; a client that sees a new epoch (or fell
 * behind the buffer) resynchronises from `GET /v1/modules`.
 *
 * Mapping from registry events: a re-registration with another image digest or manifest version is `updated`; the
 * `replaced` deregistration that precedes it is folded into that; with the same attestation (a restarted container)
 * nothing is reported, because certificates issued for it are still right.
 */
export class ModuleEventLog {
  readonly epoch = randomUUID();
  private seq = 0;
  private readonly buffer: ModuleEvent[] = [];
  private readonly emitter = new EventEmitter();
  private readonly known = new Map<string, { imageDigest: string; manifestVersion: number }>();
  private readonly detach: () => void;

  constructor(modules: AttestedModules, private readonly capacity = 1000) {
    this.emitter.setMaxListeners(0);
    for (const m of modules.list()) this.known.set(m.name, { imageDigest: m.imageDigest, manifestVersion: m.manifestVersion });
    const onRegistered = (m: AttestedModule): void => {
      const prev = this.known.get(m.name);
      this.known.set(m.name, { imageDigest: m.imageDigest, manifestVersion: m.manifestVersion });
      if (!prev) this.push({ type: "registered", module: m.name });
      else if (prev.imageDigest !== m.imageDigest || prev.manifestVersion !== m.manifestVersion) this.push({ type: "updated", module: m.name });
    };
    const onDeregistered = (m: AttestedModule, reason: string): void => {
      if (reason === "replaced") return;
      this.known.delete(m.name);
      this.push({ type: "deregistered", module: m.name, reason });
    };
    modules.on("registered", onRegistered);
    modules.on("deregistered", onDeregistered);
    this.detach = () => {
      modules.off("registered", onRegistered);
      modules.off("deregistered", onDeregistered);
    };
  }

  get lastSeq(): number {
    return this.seq;
  }

  /** Events after `seq`; `gap` when some were already dropped from the buffer (resync needed). */
  since(seq: number): { events: ModuleEvent[]; gap: boolean } {
    const first = this.buffer[0];
    const gap = first !== undefined && seq < first.seq - 1;
    return { events: this.buffer.filter((e) => e.seq > seq), gap };
  }

  /** Resolves when an event after `seq` exists or after `ms` (or when `signal` aborts). */
  async wait(seq: number, ms: number, signal?: AbortSignal): Promise<void> {
    if (this.seq > seq || ms <= 0) return;
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.emitter.off("event", done);
        signal?.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.emitter.on("event", done);
      signal?.addEventListener("abort", done);
    });
  }

  /** Called for every new event; returns an unsubscribe function. */
  onEvent(listener: (e: ModuleEvent) => void): () => void {
    const l = (e: ModuleEvent | undefined): void => {
      if (e) listener(e);
    };
    this.emitter.on("event", l);
    return () => this.emitter.off("event", l);
  }

  close(): void {
    this.detach();
    this.emitter.emit("event");
  }

  private push(e: Omit<ModuleEvent, "seq" | "at">): void {
    const ev: ModuleEvent = { ...e, seq: ++this.seq, at: new Date().toISOString() };
    this.buffer.push(ev);
    if (this.buffer.length > this.capacity) this.buffer.shift();
    this.emitter.emit("event", ev);
  }
}

/** The hub's AttestationSource when it runs in the daemon's process: reads the registry directly. */
export class LocalAttestationSource implements AttestationSource {
  constructor(private readonly modules: AttestedModules, private readonly events: ModuleEventLog, private readonly deviceId: string) {}

  current(deviceId: string, module: string): ModuleAttestationState | undefined {
    if (deviceId !== this.deviceId) return undefined;
    const m = this.modules.get(module);
    return m ? { imageDigest: m.imageDigest, manifestVersion: m.manifestVersion } : undefined;
  }

  subscribe(listener: (event: AttestationEvent) => void): () => void {
    return this.events.onEvent((e) => {
      if (e.type === "registered") return;
      listener({ type: e.type, deviceId: this.deviceId, module: e.module });
    });
  }
}
