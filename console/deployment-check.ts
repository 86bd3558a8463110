import { readFileSync } from "node:fs";
import { loadPolicy, resolveTrust, verifyManifest, type Policy, type TrustRoot } from "../policy/index.js";
import type { CaConfig, DeploymentRecord } from "../ca-service/index.js";

/** Which trusted signers a stored deployment carries, checked with policy/ against the trust root the policy names. */
export interface SignerCheck {
  /** Distinct trusted keys whose signature verifies. */
  signers: string[];
  threshold: number | null;
  met: boolean;
  /** Signature / threshold / trust-root problems, each as policy/ words it. */
  problems: string[];
  /** Why the check could not run (no policy configured, unreadable trust root). */
  unavailable?: string;
}

/** The policy file the CA appraises against (ca.attestation.policyFile, else ca.policyFile). */
export function policyFileOf(config: CaConfig): string {
  return config.attestation.policyFile || config.policyFile;
}

export async function loadTrust(config: CaConfig): Promise<{ policy: Policy; trustRoot: TrustRoot; file: string } | { error: string }> {
  const file = policyFileOf(config);
  if (!file) return { error: "no policy file configured (ca.attestation.policyFile or ca.policyFile)" };
  try {
    readFileSync(file);
    const { policy } = loadPolicy(file);
    return { policy, trustRoot: await resolveTrust(policy, file), file };
  } catch (e) {
    return { error: (e as Error).message };
  }
}

/**
 * Verify the deployment's signatures as a device would (policy/verifyManifest), keeping only what concerns the
 * signers: the device-specific checks (target, rollback, images) are the devices' own and show in their reports.
 */
export async function checkSigners(rec: DeploymentRecord, trust: Awaited<ReturnType<typeof loadTrust>>): Promise<SignerCheck> {
  if ("error" in trust) return { signers: [], threshold: null, met: false, problems: [], unavailable: trust.error };
  const target = rec.targets.find((t) => !/[*?[]/.test(t)) ?? "console-signer-check";
  const v = await verifyManifest(rec.jws, { policy: trust.policy, trustRoot: trust.trustRoot, deviceId: target, reloadAccepted: true });
  const problems = v.reasons.filter((r) => r.check === "signature" || r.check === "threshold" || r.check === "trust-root" || r.check === "format").map((r) => r.message);
  const threshold = trust.trustRoot.body.threshold;
  return { signers: v.signers, threshold, met: v.signers.length >= threshold && problems.length === 0, problems };
}
