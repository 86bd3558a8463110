/**
 * The layering of the components (docs/ENGINEERING.md), read by eslint.config.js. `uses`: the components a
 * component may import, each only through its `index.js`; `faces`: further entry files that those above may load
 * (the command tree's lazy `cli.js` and the config sections' `config.js`).
 */
export const LAYERS = {
  common: { uses: [] },
  hsm: { uses: ["common"], faces: ["cli", "config"] },
  pki: { uses: ["common", "hsm"] },
  engine: { uses: ["common"] },
  "identity-api": { uses: ["common", "hsm", "policy"] },
  policy: { uses: ["common", "hsm"], faces: ["cli"] },
  "certs-dev": { uses: ["common", "hsm", "pki"], faces: ["cli"] },
  "ca-service": { uses: ["common", "hsm", "pki", "policy"], faces: ["cli", "config"] },
  "device-identity": { uses: ["common", "hsm", "pki", "policy", "engine", "identity-api"], faces: ["cli", "config"] },
  "edge-agent": { uses: ["common", "hsm", "policy", "engine", "identity-api"], faces: ["cli", "config"] },
  "edge-hub": { uses: ["common", "hsm", "pki", "policy", "identity-api"], faces: ["cli", "config"] },
  console: { uses: ["common", "policy", "ca-service"], faces: ["config"] },
  fleet: { uses: ["common", "hsm", "pki", "policy", "ca-service"], faces: ["cli"] },
  cli: { uses: ["common", "hsm", "pki", "policy", "engine", "identity-api", "certs-dev", "ca-service", "device-identity", "edge-agent", "edge-hub", "console", "fleet", "bench"] },
  bench: { uses: ["common", "hsm", "pki", "policy", "engine", "identity-api", "certs-dev", "ca-service", "device-identity", "edge-agent", "edge-hub", "console", "fleet"], faces: ["cli"] },
};

/** Test code (tests, their helpers, fixtures) is held to the layering separately: it may reach `test/`. */
export const TEST_FILES = ["**/*.test.ts", "**/test-helpers.ts", "**/fixtures.ts", "**/testdata/**", "test/**"];

/**
 * Files that break the layering today and are being moved (issue 14): each entry leaves this list with the commit
 * that fixes it. Nothing may be added.
 */
export const PENDING = {
  bench: ["bench/agent.ts", "bench/hub.ts", "bench/identity.ts", "bench/manifest.ts"],
};
