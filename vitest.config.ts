import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["**/*.test.ts"],
    // @peculiar/x509 resolves its ASN.1 helpers through tsyringe, which needs the Reflect polyfill loaded first.
    setupFiles: ["reflect-metadata"],
    exclude: ["node_modules/**", "dist/**"],
    // HSM tokens, dockerd and TLS handshakes are real: give them time, and keep the 2-core machine from thrashing.
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: "forks",
    maxWorkers: 2,
    reporters: ["default"],
  },
});
