import * as jose from "jose";
import { parsePolicy } from "./policy.js";
import type { Manifest, Policy } from "./schema.js";
import { signerFromPrivateKey, type JwsSigner } from "./sign.js";
import { parseTrustRoot, signTrustRoot, type TrustRoot } from "./trust-root.js";

/** Test and bench fixtures: throwaway keys, a policy, a trust root and manifests. Never for production. */

export const FIXTURE_NOW = new Date("2026-01-15T12:00:00Z");
export const DIGEST = "a".repeat(64);

export async function makeSigner(alg: "ES256" | "ES384" | "EdDSA"): Promise<JwsSigner> {
  const { privateKey } = await jose.generateKeyPair(alg, { extractable: true, ...(alg === "EdDSA" ? { crv: "Ed25519" } : {}) });
  return signerFromPrivateKey(JSON.stringify(await jose.exportJWK(privateKey)));
}

export async function makeSigners(): Promise<JwsSigner[]> {
  return [await makeSigner("ES256"), await makeSigner("ES384"), await makeSigner("EdDSA")];
}

export async function makeTrustRoot(signers: JwsSigner[], opts: { version?: number; threshold?: number; expires?: string; signWith?: JwsSigner[] } = {}): Promise<{ root: TrustRoot; text: string }> {
  const body = {
    type: "edgetrust-trust-root" as const,
    version: opts.version ?? 1,
    expires: opts.expires ?? "2027-01-01T00:00:00Z",
    threshold: opts.threshold ?? 2,
    keys: signers.map((s) => s.publicKey),
  };
  const by = opts.signWith ?? signers.slice(0, body.threshold);
  let jws = await signTrustRoot(body, by[0] as JwsSigner);
  for (const s of by.slice(1)) jws = await signTrustRoot(jws, s);
  const text = JSON.stringify(jws);
  return { root: await parseTrustRoot(text), text };
}

export const FIXTURE_POLICY_YAML = `version: 1
mode: enforce
trust:
  trustRoot: trust-root.json
images:
  registries: ["127.0.0.1:5000"]
  repositories: ["127.0.0.1:5000/edgetrust/**"]
modules:
  allow: ["*"]
  defaults:
    network: [host, none]
    users: ["*:*", "*"]
    readOnlyRootfs: required
    binds:
      - source: /var/lib/edgetrust/data/{module}
        target: /data
        readOnly: false
      - source: /etc/edgetrust/shared/*
  overrides:
    sensor:
      devices: [/dev/ttyUSB*]
      capabilities: [CAP_NET_BIND_SERVICE]
`;

export function fixturePolicy(yaml: string = FIXTURE_POLICY_YAML): Policy {
  return parsePolicy(yaml, "fixture-policy.yaml");
}

export function makeManifest(over: Partial<Manifest> = {}, modules = 2): Manifest {
  const mods: Manifest["modules"] = {};
  for (let i = 0; i < modules; i++) {
    const name = i === 0 ? "sensor" : `mod${i}`;
    mods[name] = {
      image: `127.0.0.1:5000/edgetrust/${name}@sha256:${DIGEST}`,
      options: { network: "host", user: "1000:1000", readOnlyRootfs: true, binds: [`/var/lib/edgetrust/data/${name}:/data:rw`] },
      env: { LOG_LEVEL: "info" },
      restartPolicy: "always",
      startupOrder: i,
    };
  }
  return {
    schemaVersion: 1,
    deploymentId: "dep-1",
    version: 5,
    issuedAt: "2026-01-15T00:00:00Z",
    expiresAt: "2026-02-15T00:00:00Z",
    targets: ["dev-1", "dev-2"],
    modules: mods,
    routes: { up: "FROM /messages/modules/sensor/outputs/* INTO $upstream" },
    ...over,
  };
}
