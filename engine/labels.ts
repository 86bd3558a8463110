/**
 * Labels every container the agent creates carries: the agent's reconcile finds its containers by them, and the identity
 * daemon checks a registered module's container against them before it issues a certificate.
 */
export const LABELS = {
  managed: "io.edgetrust.managed",
  device: "io.edgetrust.device",
  module: "io.edgetrust.module",
  deployment: "io.edgetrust.deployment-id",
  version: "io.edgetrust.manifest-version",
  digest: "io.edgetrust.image-digest",
  repository: "io.edgetrust.image-repository",
} as const;
