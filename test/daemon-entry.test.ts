/**
 * Each daemon loads only its own code (issue 14): `edgetrust device|agent|hub` runs that daemon's esbuild bundle
 * (scripts/bundle.mjs, the same script `make build` runs), so what a daemon carries is what went into its bundle.
 * Held here two ways: the bundle's metafile names only the daemon's component, the components below it in the
 * layering (scripts/layers.js) and the config sections the whole-file config reader validates; and the bundle, run
 * with the node flags and environment of its systemd unit, loads no file but itself and its native addons.
 * Memory figures live in bench/ (identity.ts, agent.ts, hub.ts: peak RSS as the units run them), not here.
 */
import { execFile, execFileSync } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { unitCommand } from "../bench/units.js";

const ROOT = resolve(import.meta.dirname, "..");
// The layering eslint holds (plain JS, read by eslint.config.js): which components each component may import.
const LAYERS_JS: string = "../scripts/layers.js";
const { LAYERS } = (await import(LAYERS_JS)) as { LAYERS: Record<string, { uses: string[] }> };
const OUT = join(ROOT, ".tmp", `daemon-entry-${process.pid}`);

const DAEMONS = [
  { name: "device", unit: "identity", component: "device-identity", addons: ["pkcs11js"] },
  { name: "agent", unit: "agent", component: "edge-agent", addons: ["pkcs11js"] },
  { name: "hub", unit: "hub", component: "edge-hub", addons: ["pkcs11js", "better-sqlite3", "bindings", "file-uri-to-path"] },
] as const;

interface Metafile {
  inputs: Record<string, unknown>;
  outputs: Record<string, { imports: { path: string; external?: boolean }[] }>;
}

/** The repository files in a bundle that are not the daemon's own code nor below it, nor a config section. */
function foreignFiles(meta: Metafile, name: string, component: string): string[] {
  const allowed = new Set<string>([component, ...(LAYERS[component]?.uses ?? [])]);
  const ownEntry = new Set(["cli/program.ts", "cli/config-schema.ts", "cli/config-validator.ts", `cli/daemons/${name}.ts`]);
  return Object.keys(meta.inputs).filter((f) => {
    if (f.startsWith("node_modules/")) return false;
    if (ownEntry.has(f) || allowed.has(f.split("/")[0] as string)) return false;
    // `device run` validates the whole edgetrust.yaml, so every section's schema (and nothing else of it) comes along.
    return basename(f) !== "config.ts";
  });
}

beforeAll(() => {
  mkdirSync(OUT, { recursive: true });
  execFileSync(process.execPath, [join(ROOT, "scripts", "bundle.mjs"), OUT], { cwd: ROOT, stdio: ["ignore", "ignore", "pipe"] });
}, 120_000);

afterAll(() => rmSync(OUT, { recursive: true, force: true }));

describe.each(DAEMONS)("edgetrust $name (its own bundle)", ({ name, unit, component, addons }) => {
  const meta = (): Metafile => JSON.parse(readFileSync(join(OUT, `${name}.meta.json`), "utf8")) as Metafile;

  it("holds only its component, the layers below it and the config sections", () => {
    const m = meta();
    expect(Object.keys(m.inputs)).toContain(`${component}/cli.ts`);
    expect(foreignFiles(m, name, component)).toEqual([]);
  });

  it("bundles no package with a native addon (those load their .node file from their own directory)", () => {
    const packages = new Set(Object.keys(meta().inputs).flatMap((f) => /^node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(f)?.[1] ?? []));
    // A native addon ships a .node file or builds one at install (binding.gyp, an install script).
    const native = [...packages].filter((p) => {
      const dir = join(ROOT, "node_modules", p);
      const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as { gypfile?: boolean; scripts?: { install?: string } };
      return Boolean(pkg.gypfile || pkg.scripts?.install) || readdirSync(dir, { recursive: true }).some((f) => String(f).endsWith(".node") || String(f).endsWith("binding.gyp"));
    });
    expect(native).toEqual([]);
  });

  it("the check sees a foreign component: the whole command tree would fail it", () => {
    // The same metafile with the full command tree's entry added, as if the daemon's entry imported cli/index.ts.
    const m = meta();
    const widened: Metafile = { ...m, inputs: { ...m.inputs, "cli/index.ts": {}, "ca-service/server.ts": {} } };
    expect(foreignFiles(widened, name, component)).toEqual(["cli/index.ts", "ca-service/server.ts"]);
  });

  it("run with its unit's node flags and environment, loads no file but the bundle and its native addons", async () => {
    const u = unitCommand(unit);
    const log = join(OUT, `${name}.loaded`);
    const hooks = join(OUT, `${name}-hooks.mjs`);
    // ES modules through a loader hook; CommonJS (the addons, via the bundle's createRequire) from the module cache.
    writeFileSync(hooks, `import { appendFileSync } from "node:fs";\nexport async function load(url, ctx, next) { appendFileSync(${JSON.stringify(log)}, url + "\\n"); return next(url, ctx); }\n`);
    const preload = join(OUT, `${name}-preload.cjs`);
    writeFileSync(preload, `const Module = require("node:module"); const { appendFileSync } = require("node:fs");\nModule.register(${JSON.stringify(pathToFileURL(hooks).href)});\nprocess.on("exit", () => appendFileSync(${JSON.stringify(log)}, [...Object.keys(Module._cache).map((f) => require("node:url").pathToFileURL(f).href), ...process.moduleLoadList.map((m) => "builtin:" + m)].join("\\n") + "\\n"));\n`);
    const env: NodeJS.ProcessEnv = { ...process.env, ...u.env };
    delete env.OPENSSL_CONF; // the unit's engine configuration lives on the device, not here
    delete env.EDGETRUST_HOME;
    const entry = `import { main } from ${JSON.stringify(pathToFileURL(join(OUT, `${name}.mjs`)).href)}; process.exitCode = await main(["node", "edgetrust", ...process.argv.slice(1)]);`;
    // --help: the whole bundle and its addons are loaded (static imports) before the command parses its arguments.
    const { code, stdout } = await new Promise<{ code: number; stdout: string }>((done) => {
      execFile(process.execPath, [...u.nodeFlags, "--require", preload, "--input-type=module", "-e", entry, "--", u.args[0] as string, u.args[1] as string, "--help"], { cwd: ROOT, env, encoding: "utf8" },
        (err, out) => done({ code: err ? (typeof err.code === "number" ? err.code : -1) : 0, stdout: out }));
    });
    expect(code).toBe(0);
    expect(stdout).toContain(`Usage: edgetrust ${u.args[0]} ${u.args[1]}`);
    const files = [...new Set(readFileSync(log, "utf8").split("\n").filter((l) => l.startsWith("file:")))];
    const bundle = pathToFileURL(join(OUT, `${name}.mjs`)).href;
    expect(files).toContain(bundle);
    const addonRoots = addons.map((a) => pathToFileURL(join(ROOT, "node_modules", a)).href + "/");
    const others = files.filter((f) => f !== bundle && f !== pathToFileURL(preload).href && !addonRoots.some((r) => f.startsWith(r)));
    expect(others).toEqual([]);
    // The identity daemon reaches its CA only to renew: node's https and tls modules load at that first request, not
    // at start (common/http-client.ts, hsm/tls.ts; issue 14, its idle memory).
    const builtins = readFileSync(log, "utf8").split("\n").filter((l) => l.startsWith("builtin:NativeModule "));
    expect(builtins.length).toBeGreaterThan(0);
    if (name === "device") expect(builtins.filter((l) => /^builtin:NativeModule (https|tls|_tls_wrap)$/.test(l))).toEqual([]);
  }, 60_000);
});
