#!/usr/bin/env node
import { existsSync, statSync } from "node:fs";

// A daemon's command runs from that daemon's own bundle (`make build`: scripts/bundle.mjs), so `edgetrust device run`
// carries the identity daemon's code and nothing else (issue 14; measured in bench/identity.ts, agent.ts, hub.ts). Without a bundle, or with one older
// than the last `tsc` build (never run stale code), the command runs from the module tree, which also loads only the
// command named, at a larger footprint.
const DAEMONS = new Set(["device", "agent", "hub"]);
const name = process.argv[2];
const tree = new URL("../dist/cli/index.js", import.meta.url);
const bundle = new URL(`../dist/daemons/${name}.mjs`, import.meta.url);
const fresh = DAEMONS.has(name) && existsSync(bundle) && (!existsSync(tree) || statSync(bundle).mtimeMs >= statSync(tree).mtimeMs);
const { main } = await import(fresh ? bundle.href : tree.href);

main(process.argv).then(
  (code) => { process.exitCode = code; },
  (err) => { process.stderr.write(`edgetrust: ${err?.message ?? String(err)}\n`); process.exitCode = 1; },
);
