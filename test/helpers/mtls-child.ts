/**
 * Child process for TLS engine tests: Node reads OPENSSL_CONF (which registers the pkcs11 engine) only at start-up,
 * so the handshakes run here. Input: MTLS_SPECS (JSON array of MtlsSpec), optional MTLS_PKCS11 (JSON {module, token,
 * pin, label}) to open the token through pkcs11js in this same process first. Output: one JSON line.
 */
import { createTlsSecureContext } from "../../hsm/index.js";
import { mtlsExchange, type MtlsOutcome, type MtlsSpec } from "./mtls.js";

const specs = JSON.parse(process.env.MTLS_SPECS ?? "[]") as MtlsSpec[];
const p11 = process.env.MTLS_PKCS11 ? (JSON.parse(process.env.MTLS_PKCS11) as { module: string; token: string; pin: string; label: string }) : undefined;
const result: { outcomes: MtlsOutcome[]; pkcs11jsSignature?: number; error?: string } = { outcomes: [] };
try {
  let close: (() => Promise<void>) | undefined;
  if (p11) {
    const { Pkcs11KeyStore, defaultScheme } = await import("../../hsm/index.js");
    const store = await Pkcs11KeyStore.open({ module: p11.module, tokenLabel: p11.token, pin: p11.pin });
    const info = await store.getKey({ label: p11.label });
    result.pkcs11jsSignature = (await store.sign({ label: p11.label }, defaultScheme(info.algorithm), Buffer.from("hello"))).length;
    close = () => store.close();
  }
  for (const s of specs) result.outcomes.push(await mtlsExchange(s, createTlsSecureContext));
  await close?.();
} catch (e) {
  result.error = e instanceof Error ? e.message : String(e);
}
process.stdout.write(JSON.stringify(result) + "\n", () => process.exit(0)); // a failed run may leave a server listening
