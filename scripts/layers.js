/**
 * The layering of the components (docs/ENGINEERING.md), read by eslint.config.js. `uses`: the components a
 * component may import, each only through its `index.js`; `faces`: further entry files that those above may load
 * (the command tree's lazy `cli.js` and the config sections' `config.js`); `testCode`: a component outside the build
 * that is held to the rules of test code.
 */
export const LAYERS = {
  common: { uses: [] },
  hsm: { uses: ["common"], faces: ["cli", "config"] },
  pki: { uses: ["common", "hsm"] },
  engine: { uses: ["common"] },
  "dev-images": { uses: ["common"] },
  "identity-api": { uses: ["common", "hsm", "policy"] },
  policy: { uses: ["common", "hsm"], faces: ["cli"] },
  "certs-dev": { uses: ["common", "hsm", "pki"], faces: ["cli"] },
  "ca-service": { uses: ["common", "hsm", "pki", "policy"], faces: ["cli", "config"] },
  "device-identity": { uses: ["common", "hsm", "pki", "policy", "engine", "identity-api"], faces: ["cli", "config"] },
  "edge-agent": { uses: ["common", "hsm", "policy", "engine", "identity-api"], faces: ["cli", "config"] },
  "edge-hub": { uses: ["common", "hsm", "pki", "policy", "identity-api"], faces: ["cli", "config"] },
  console: { uses: ["common", "policy", "ca-service"], faces: ["config"] },
  fleet: { uses: ["common", "hsm", "pki", "policy", "ca-service"], faces: ["cli"] },
  cli: { uses: ["common", "hsm", "pki", "policy", "engine", "dev-images", "identity-api", "certs-dev", "ca-service", "device-identity", "edge-agent", "edge-hub", "console", "fleet"] },
  // Not part of the build (run with tsx, measuring dist/): held to the rules of test code.
  bench: { uses: ["common", "hsm", "pki", "policy", "engine", "dev-images", "identity-api", "certs-dev", "ca-service", "device-identity", "edge-agent", "edge-hub", "console", "fleet"], testCode: true },
};

/** Test code (tests, their helpers, fixtures) is held to the layering separately: it may reach `test/` and a component's test faces. */
export const TEST_FILE_NAMES = ["*.test.ts", "test-helpers.ts", "fixtures.ts", "test-fixtures.ts"];
export const TEST_FILES = [...TEST_FILE_NAMES.map((n) => `**/${n}`), "**/testdata/**", "test/**"];

/** A component's test faces: what test code of other components (and bench) may import besides `index.js`. */
export const TEST_FACES = ["fixtures", "test-helpers"];
