import { EventEmitter } from "node:events";
import type { AttestationEvent, AttestationSource, ModuleAttestationState } from "../identity-api/index.js";

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
