import { EventEmitter } from "node:events";

/**
 * The seam between the hub and device-identity: what a module is attested to run right now. device-identity's daemon
 * implements it (the agent registers/deregisters attested modules there); the hub only reads it.
 */
export interface ModuleAttestationState {
  /** `sha256:<64 hex>`: the image digest the module's container was attested with. */
  imageDigest: string;
  /** Version of the signed deployment manifest that pinned the image. */
  manifestVersion: number;
}

export type AttestationEvent =
  | { type: "deregistered"; deviceId: string; module: string }
  /** The module's attestation changed (new image digest or manifest version): certificates for the old one are stale. */
  | { type: "updated"; deviceId: string; module: string };

export interface AttestationSource {
  /** The module's current attestation, or undefined when it is not (or no longer) registered as attested. */
  current(deviceId: string, module: string): ModuleAttestationState | undefined;
  /** Be told when a module is deregistered (or its attestation changes). Returns a function that unsubscribes. */
  subscribe(listener: (event: AttestationEvent) => void): () => void;
}

/**
 * An in-memory AttestationSource: the whole contract, held in a Map. Used by tests and by `hub run` when no
 * device-identity daemon is configured (then modules are registered from a file; see README).
 */
export class MemoryAttestationSource implements AttestationSource {
  private readonly modules = new Map<string, ModuleAttestationState>();
  private readonly events = new EventEmitter();

  private static key(deviceId: string, module: string): string {
    return `${deviceId}\u0000${module}`;
  }

  current(deviceId: string, module: string): ModuleAttestationState | undefined {
    const v = this.modules.get(MemoryAttestationSource.key(deviceId, module));
    return v ? { ...v } : undefined;
  }

  register(deviceId: string, module: string, state: ModuleAttestationState): void {
    const k = MemoryAttestationSource.key(deviceId, module);
    const had = this.modules.get(k);
    this.modules.set(k, { ...state });
    if (had && (had.imageDigest !== state.imageDigest || had.manifestVersion !== state.manifestVersion)) {
      this.events.emit("event", { type: "updated", deviceId, module } satisfies AttestationEvent);
    }
  }

  deregister(deviceId: string, module: string): void {
    if (this.modules.delete(MemoryAttestationSource.key(deviceId, module))) {
      this.events.emit("event", { type: "deregistered", deviceId, module } satisfies AttestationEvent);
    }
  }

  subscribe(listener: (event: AttestationEvent) => void): () => void {
    this.events.on("event", listener);
    return () => this.events.off("event", listener);
  }
}
