import js from "@eslint/js";
import tseslint from "typescript-eslint";
import importX from "eslint-plugin-import-x";
import { createTypeScriptImportResolver } from "eslint-import-resolver-typescript";
import { LAYERS, TEST_FACES, TEST_FILE_NAMES, TEST_FILES } from "./scripts/layers.js";

/**
 * The layering of docs/ENGINEERING.md, held by lint: for every component, the components it may not import at all,
 * and, for those it may, only their `index.js` (static and dynamic imports alike). The command tree (`cli/`) may
 * also load a component's `cli.js` and `config.js`: they are its command and config faces, kept apart from
 * `index.js` so that a daemon loads only the code of its own command. Production code never imports test code
 * (`test/`, a component's fixtures). Test code (TEST_FILES, and `bench/`, which is not part of the build) may reach
 * `test/` and a component's test faces (`fixtures.js`, `test-helpers.js`), and otherwise only `index.js`.
 */
function layerRules() {
  const components = Object.keys(LAYERS);
  const testFace = TEST_FACES.join("|");
  const configs = [];
  const rule = (patterns) => ({
    "no-restricted-imports": ["error", { patterns }],
    "no-restricted-syntax": ["error", ...patterns.map((p) => ({ selector: `ImportExpression[source.value=/${p.regex.replaceAll("/", "\\/")}/]`, message: p.message }))],
  });
  for (const component of [...components, "test"]) {
    const layer = LAYERS[component];
    for (const depth of [1, 2, 3]) {
      const up = "\\.\\./".repeat(depth);
      const files = [`${component}/${"*/".repeat(depth - 1)}*.{ts,mts,js,mjs}`];
      const others = components.filter((c) => c !== component);
      // bench is test code itself: tests may use any of it.
      const testReachable = others.filter((c) => !LAYERS[c].testCode);
      const asTest = (target) => ({ regex: `^${up}${target}/(?!(index|${testFace})\\.js$)`, message: "test code imports another component only through its index.js or its test faces (fixtures.js, test-helpers.js) (docs/ENGINEERING.md)" });
      if (layer && !layer.testCode) {
        const forbidden = others.filter((c) => !layer.uses.includes(c));
        const patterns = others.map((target) => {
          const face = ["index", ...(component === "cli" ? (LAYERS[target].faces ?? []) : [])].join("|");
          return { regex: `^${up}${target}/(?!(${face})\\.js$)`, message: "across components import only the component's index.js (docs/ENGINEERING.md)" };
        });
        if (forbidden.length) patterns.push({ regex: `^${up}(${forbidden.join("|")})/`, message: `${component} may not import this component (docs/ENGINEERING.md, the layering)` });
        patterns.push({ regex: `^${up}test/`, message: "production code never imports test code (docs/ENGINEERING.md)" });
        patterns.push({ regex: `(^|/)(${testFace}|test-fixtures)\\.js$`, message: "production code never imports test fixtures (docs/ENGINEERING.md)" });
        configs.push({ files, ignores: TEST_FILES, rules: rule(patterns) });
      }
      // Test code: the tests and fixtures of this component, and every file of `test/` and of bench (testCode).
      const dir = `${component}/${"*/".repeat(depth - 1)}`;
      const testFiles = layer && !layer.testCode ? TEST_FILE_NAMES.map((n) => dir + n) : files;
      configs.push({ files: testFiles, rules: rule(testReachable.map(asTest)) });
    }
  }
  return configs;
}

export default tseslint.config(
  { ignores: ["dist/**", "node_modules/**", "coverage/**", ".edgetrust-demo/**", ".tmp/**"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: { process: "readonly", console: "readonly", Buffer: "readonly", URL: "readonly", setTimeout: "readonly", clearTimeout: "readonly", setInterval: "readonly", clearInterval: "readonly", setImmediate: "readonly" } },
    rules: {
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "@typescript-eslint/no-explicit-any": "error",
      "@typescript-eslint/consistent-type-imports": "error",
      "no-console": "error",
    },
  },
  { files: ["cli/**", "bench/**", "bin/**", "scripts/**", "certs-dev/cli.ts", "**/*.test.ts", "test/**"], rules: { "no-console": "off" } },
  ...layerRules(),
  {
    // The device daemons run with V8's --lite-mode (deploy/systemd), which turns WebAssembly off, and with it fetch
    // (undici's HTTP parser is WebAssembly): it would throw in the daemon and nowhere in the tests. Use node:http(s).
    files: ["common/**/*.ts", "hsm/**/*.ts", "pki/**/*.ts", "policy/**/*.ts", "engine/**/*.ts", "identity-api/**/*.ts", "device-identity/**/*.ts", "edge-agent/**/*.ts", "edge-hub/**/*.ts"],
    ignores: TEST_FILES,
    rules: { "no-restricted-globals": ["error", ...["fetch", "WebAssembly"].map((name) => ({ name, message: "the device daemons run with --lite-mode: no WebAssembly, so no fetch; use node:http(s)" }))] },
  },
  {
    // No import loop anywhere, type-only imports included (a loop of types is a loop of concepts).
    files: ["**/*.ts"],
    plugins: { "import-x": importX },
    settings: { "import-x/extensions": [".ts", ".js", ".mjs"], "import-x/parsers": { "@typescript-eslint/parser": [".ts"] }, "import-x/resolver-next": [createTypeScriptImportResolver({ project: "tsconfig.json" })] },
    rules: { "import-x/no-cycle": ["error", { ignoreExternal: true }] },
  },
);
