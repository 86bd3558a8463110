#!/usr/bin/env node
// One esbuild bundle per daemon (issue 14): `edgetrust device|agent|hub …` runs dist/daemons/<name>.mjs (see
// bin/edgetrust.js), which holds only that component's code and the libraries it uses, minified. Measured in
// bench/identity.ts, bench/agent.ts and bench/hub.ts (peak RSS as the systemd units run it). Run by `make build` after tsc.
// Usage: node scripts/bundle.mjs [outDir]
import { build } from "esbuild";
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const DAEMONS = ["device", "agent", "hub"];
// Default dist/daemons; test/daemon-entry.test.ts bundles into a directory of its own (inside the repository, so the
// native addons left out of the bundle resolve from node_modules as they do from dist/).
const outDir = process.argv[2] ?? join(root, "dist", "daemons");

// Libraries bundled from CommonJS call require() and read __dirname; an ES module has neither, so give them both.
const banner = [
  'import { createRequire as __etCreateRequire } from "node:module";',
  'import { fileURLToPath as __etFileURLToPath } from "node:url";',
  "const require = __etCreateRequire(import.meta.url);",
  "const __filename = __etFileURLToPath(import.meta.url);",
  'const __dirname = __etFileURLToPath(new URL(".", import.meta.url));',
].join("\n");

for (const name of DAEMONS) {
  const outfile = join(outDir, `${name}.mjs`);
  const result = await build({
    entryPoints: [join(root, "cli", "daemons", `${name}.ts`)],
    outfile,
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    // Native addons load their .node file relative to their package: they stay in node_modules
    // (test/daemon-entry.test.ts fails on a bundled package that ships one).
    external: ["pkcs11js", "better-sqlite3", "koffi"],
    // Smaller source text is smaller heap (V8 keeps every function's source); names kept for errors and logs.
    minify: true,
    keepNames: true,
    // For reading a stack trace (node --enable-source-maps); not loaded in production.
    sourcemap: "linked",
    banner: { js: banner },
    metafile: true,
    logLevel: "warning",
  });
  // Which source files went in: test/daemon-entry.test.ts reads it to hold each daemon to its own code.
  writeFileSync(join(outDir, `${name}.meta.json`), JSON.stringify(result.metafile));
}
