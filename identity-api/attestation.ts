/**
 * The seam between the hub and device-identity: what a module is attested to run right now. device-identity's daemon
 * implements it (the agent registers/deregisters attested modules there); the hub only reads it, in the daemon's
 * process (`LocalAttestationSource`) or over the management socket (`ManagementAttestationSource`).
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
