/**
 * Child process of concurrent-open.test.ts: open and close one SoftHSM token `OPENS` times (each open is a fresh
 * C_Initialize and a login, which rewrites the token's file) once the parent says go on stdin, then print what failed
 * and how often a retry was needed.
 */
import { Writable } from "node:stream";
import { createLogger } from "../../common/index.js";
import { Pkcs11KeyStore } from "../pkcs11.js";
import { SOFTHSM_MODULE } from "../token-setup.js";

let retries = 0;
const logger = createLogger("hsm", {
  level: "warn",
  destination: new Writable({ write(chunk: Buffer, _e, cb) { if (chunk.toString().includes("trying again")) retries++; cb(); } }),
});
const failures: string[] = [];
const opens = Number(process.env.OPENS ?? "30");
// Loaded: say so, and start when the parent says go (both processes then open the token at the same time).
process.stdout.write("ready\n");
await new Promise<void>((resolve) => process.stdin.once("data", () => resolve()));
for (let i = 0; i < opens; i++) {
  try {
    const store = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: process.env.TOKEN ?? "", pin: process.env.PIN ?? "", logger });
    await store.close();
  } catch (e) {
    failures.push(e instanceof Error ? e.message : String(e));
  }
}
process.stdout.write(JSON.stringify({ opens, failures, retries }) + "\n");
process.stdin.destroy();
