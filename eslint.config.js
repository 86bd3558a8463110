import js from "@eslint/js";
import tseslint from "typescript-eslint";
import importX from "eslint-plugin-import-x";
import { createTypeScriptImportResolver } from "eslint-import-resolver-typescript";
import { LAYERS, PENDING, TEST_FILES } from "./scripts/layers.js";

/**
 * The layering of docs/ENGINEERING.md, held by lint: for every component, the components it may not import at all,
 * and, for those it may, only their `index.js` (static and dynamic imports alike). The command tree (`cli/`) may
 * also load a component's `cli.js` and `config.js`: they are its command and config faces, kept apart from
 * `index.js` so that a daemon loads only the code of its own command.
 */
function layerRules() {
  const components = Object.keys(LAYERS);
  const configs = [];
  for (const [component, { uses }] of Object.entries(LAYERS)) {
    const forbidden = components.filter((c) => c !== component && !uses.includes(c));
    for (const depth of [1, 2, 3]) {
      const up = "\\.\\./".repeat(depth);
      const files = [`${component}/${"*/".repeat(depth - 1)}*.{ts,mts,js,mjs}`];
      // The faces beside index.js are for the command tree only.
      const patterns = components.filter((c) => c !== component).map((target) => {
        const face = ["index", ...(component === "cli" ? (LAYERS[target].faces ?? []) : [])].join("|");
        return { regex: `^${up}${target}/(?!(${face})\\.js$)`, message: "across components import only the component's index.js (docs/ENGINEERING.md)" };
      });
      if (forbidden.length) patterns.push({ regex: `^${up}(${forbidden.join("|")})/`, message: `${component} may not import this component (docs/ENGINEERING.md, the layering)` });
      const dynamic = patterns.map((p) => ({ selector: `ImportExpression[source.value=/${p.regex.replaceAll("/", "\\/")}/]`, message: p.message }));
      configs.push({
        files,
        ignores: [...TEST_FILES, ...(PENDING[component] ?? [])],
        rules: { "no-restricted-imports": ["error", { patterns }], "no-restricted-syntax": ["error", ...dynamic] },
      });
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
    // No import loop anywhere, type-only imports included (a loop of types is a loop of concepts).
    files: ["**/*.ts"],
    plugins: { "import-x": importX },
    settings: { "import-x/extensions": [".ts", ".js", ".mjs"], "import-x/parsers": { "@typescript-eslint/parser": [".ts"] }, "import-x/resolver-next": [createTypeScriptImportResolver({ project: "tsconfig.json" })] },
    rules: { "import-x/no-cycle": ["error", { ignoreExternal: true }] },
  },
);
