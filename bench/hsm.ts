import { execFile, execFileSync } from "node:child_process";
import { createHash, generateKeyPairSync, randomBytes, sign } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import pkcs11js from "pkcs11js";
import { Value } from "@sinclair/typebox/value";
import { createLogger } from "../common/index.js";
import { HsmConfig, Pkcs11KeyStore, SOFTHSM_MODULE, createSoftHsmDir, initToken, openKeyStore, type KeyStore } from "../hsm/index.js";
import { interleaved, timed } from "./measure.js";
import { row, type Benchmark, type BenchRow, type Progress } from "./types.js";

const execFileAsync = promisify(execFile);
const SECONDS = 2;
const ROUNDS = 6;
const ROUND = 0.5;
const SOURCE = "issue 2 (hsm)";
const ECDSA_P256 = { name: "ECDSA", hash: "SHA-256" } as const;

/** CPU time (user + system) of this process's main thread so far, µs, from /proc (clock ticks). */
function mainThreadCpuUs(): number {
  const f = readFileSync(`/proc/self/task/${process.pid}/stat`, "utf8").replace(/^.*\) /s, "").split(" ");
  return ((Number(f[11]) + Number(f[12])) / TICKS_PER_S) * 1e6;
}
const TICKS_PER_S = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;

/** `openssl speed -seconds N ecdsap256`: the "sign/s" column. */
function opensslSignRate(seconds: number): number {
  const out = execFileSync("openssl", ["speed", "-seconds", String(seconds), "ecdsap256"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
  const m = /nistp256\)\s+[\d.]+s\s+[\d.]+s\s+([\d.]+)\s+[\d.]+/.exec(out);
  if (!m) throw new Error(`could not read openssl speed output: ${out.slice(-200)}`);
  return Number(m[1]);
}

async function pkcs11Rows(progress: Progress): Promise<BenchRow[]> {
  const dir = createSoftHsmDir();
  const pin = randomBytes(8).toString("hex");
  const poolSize = (Value.Default(HsmConfig, {}) as HsmConfig).sessionPoolSize;
  const store = await (async () => {
    initToken({ module: SOFTHSM_MODULE, label: "bench", soPin: randomBytes(8).toString("hex"), userPin: pin });
    return Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: "bench", pin, sessionPoolSize: poolSize, logger: createLogger("hsm", { level: "warn" }) });
  })();
  try {
    const key = await store.generateKey("bench-p256", "EC-P256");
    const ref = { label: key.label };
    const msg = randomBytes(64);
    const digest = createHash("sha256").update(msg).digest();
    const handle = await store.privateKeyHandle(ref);

    // What the token itself delivers: pkcs11js straight against the module, the same digest, the same number of
    // sessions signing in parallel (C_SignAsync on libuv workers), without hsm/'s pool, key lookup or hashing.
    const [viaStore, rawRate] = await store.withSession(async (p11) => {
      const sessions = Array.from({ length: poolSize }, () => p11.C_OpenSession(store.slot, pkcs11js.CKF_SERIAL_SESSION));
      try {
        const raw = () => timed(ROUND, poolSize, async (loop) => {
          const s = sessions[loop] as Buffer;
          p11.C_SignInit(s, { mechanism: pkcs11js.CKM_ECDSA }, handle);
          await p11.C_SignAsync(s, digest, Buffer.alloc(64));
        });
        const viaHsm = () => timed(ROUND, poolSize, () => store.sign(ref, ECDSA_P256, msg));
        progress.step(`hsm/ Pkcs11KeyStore.sign vs raw pkcs11js, ${poolSize} concurrent, ${ROUNDS} alternating rounds of ${ROUND}s each`);
        return await interleaved(ROUNDS, viaHsm, raw);
      } finally {
        for (const s of sessions) p11.C_CloseSession(s);
      }
    });

    // Signing on the calling thread (C_Sign, synchronous) against the threadpool hop (C_SignAsync), same key, same
    // run, with the CPU each costs the calling thread — the identity daemon's one JavaScript thread is what limits its
    // certificates (device-identity README, "Where a module certificate's time goes").
    const [syncRate, asyncRate, syncUs, asyncUs] = await store.withSession(async (p11) => {
      const sessions = Array.from({ length: poolSize }, () => p11.C_OpenSession(store.slot, pkcs11js.CKF_SERIAL_SESSION));
      const cpu = { sync: { us: 0, ops: 0 }, async: { us: 0, ops: 0 } };
      const onThread = (which: "sync" | "async", f: () => Promise<{ ops: number; ms: number }>) => async () => {
        const t0 = mainThreadCpuUs();
        const r = await f();
        cpu[which].us += mainThreadCpuUs() - t0;
        cpu[which].ops += r.ops;
        return r;
      };
      try {
        progress.step(`raw token: C_Sign on the calling thread (1 session) vs C_SignAsync (${poolSize} sessions), ${ROUNDS} alternating rounds of ${ROUND}s each`);
        const [a, b] = await interleaved(ROUNDS,
          onThread("sync", () => timed(ROUND, 1, async () => {
            const s = sessions[0] as Buffer;
            p11.C_SignInit(s, { mechanism: pkcs11js.CKM_ECDSA }, handle);
            p11.C_Sign(s, digest, Buffer.alloc(64));
          })),
          onThread("async", () => timed(ROUND, poolSize, async (loop) => {
            const s = sessions[loop] as Buffer;
            p11.C_SignInit(s, { mechanism: pkcs11js.CKM_ECDSA }, handle);
            await p11.C_SignAsync(s, digest, Buffer.alloc(64));
          })));
        return [a, b, cpu.sync.us / cpu.sync.ops, cpu.async.us / cpu.async.ops];
      } finally {
        for (const s of sessions) p11.C_CloseSession(s);
      }
    });
    progress.step(`calling thread's CPU per signature: C_Sign ${syncUs.toFixed(0)} µs, C_SignAsync ${asyncUs.toFixed(0)} µs`);

    // pkcs11-tool: the real OpenSC client, one process (load, login, sign) per signature.
    const n = 20;
    progress.step(`pkcs11-tool --sign -m ECDSA x${n}`);
    const inFile = join(dir.dir, "digest.bin");
    writeFileSync(inFile, digest);
    const t0 = performance.now();
    for (let i = 0; i < n; i++) {
      await execFileAsync("pkcs11-tool", ["--module", SOFTHSM_MODULE, "--token-label", "bench", "--login", "--pin", pin, "--sign", "-m", "ECDSA", "--label", "bench-p256", "--input-file", inFile, "--output-file", join(dir.dir, "sig.bin")], { env: process.env });
    }
    const toolRate = n / ((performance.now() - t0) / 1000);

    return [
      row({ name: `ECDSA P-256 sign via hsm/ PKCS#11 (SoftHSM2, ${poolSize} concurrent)`, value: viaStore, unit: "sig/s", reference: { name: `raw token: pkcs11js C_SignAsync, ${poolSize} sessions`, value: rawRate }, target: 0.8, source: SOURCE }),
      row({ name: `(context) raw token, C_Sign on the calling thread, 1 session (${syncUs.toFixed(0)} µs of that thread's CPU per signature, vs ${asyncUs.toFixed(0)} µs for C_SignInit + C_SignAsync)`, value: syncRate, unit: "sig/s", reference: { name: `raw token: pkcs11js C_SignAsync, ${poolSize} sessions, same rounds`, value: asyncRate }, target: 0, source: SOURCE }),
      row({ name: "ECDSA P-256 sign via hsm/ PKCS#11 vs the OpenSC client", value: viaStore, unit: "sig/s", reference: { name: "pkcs11-tool --sign (one process per signature)", value: toolRate }, target: 0.8, source: SOURCE }),
    ];
  } finally {
    await store.close();
    dir.cleanup();
  }
}

async function softwareRows(progress: Progress): Promise<BenchRow[]> {
  const dir = createSoftHsmDir({ activate: false }); // just a private temp directory for the key files
  let store: KeyStore;
  let label: string;
  try {
    const cfg = { ...(Value.Default(HsmConfig, {}) as HsmConfig), backend: "software" as const, softwareDir: join(dir.dir, "keys") };
    store = await openKeyStore(cfg, { passphrase: randomBytes(12).toString("hex"), logger: createLogger("hsm", { level: "error" }) });
    label = "hsm/ software store (Node crypto.sign)";
  } catch {
    // The software backend is not in this build: measure Node's crypto directly and say so.
    const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    store = {
      kind: "software",
      sign: async (_r, _s, data) => sign("sha256", data, { key: privateKey, dsaEncoding: "ieee-p1363" }),
      close: async () => undefined,
    } as Pick<KeyStore, "kind" | "sign" | "close"> as KeyStore;
    label = "Node crypto.sign directly (software store not available)";
  }
  try {
    if (label.startsWith("hsm/")) await store.generateKey("bench-p256", "EC-P256");
    const msg = randomBytes(64);
    // Node's own ceiling on this machine (OpenSSL 3.0 EVP per-call overhead), to tell the store's cost from Node's.
    const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    progress.step(`${label} vs Node crypto.sign directly, 1 caller, ${ROUNDS} alternating rounds of ${ROUND}s each`);
    const [sw, node] = await interleaved(
      ROUNDS,
      () => timed(ROUND, 1, () => store.sign({ label: "bench-p256" }, ECDSA_P256, msg)),
      () => timed(ROUND, 1, async () => sign("sha256", msg, { key: privateKey, dsaEncoding: "ieee-p1363" })),
    );
    progress.step(`openssl speed -seconds ${SECONDS} ecdsap256`);
    const ossl = opensslSignRate(SECONDS);
    return [
      row({ name: `ECDSA P-256 sign via ${label}`, value: sw, unit: "sig/s", reference: { name: "openssl speed ecdsap256 (1 thread)", value: ossl }, target: 0.6, source: SOURCE }),
      row({ name: "(context) Node crypto.sign directly, no store", value: node, unit: "sig/s", reference: { name: "openssl speed ecdsap256 (1 thread)", value: ossl }, target: 0.6, source: SOURCE }),
      row({ name: `ECDSA P-256 sign via ${label}`, value: sw, unit: "sig/s", reference: { name: "Node crypto.sign directly (store overhead)", value: node }, target: 0.8, source: SOURCE }),
    ];
  } finally {
    await store.close();
    dir.cleanup();
  }
}

export const hsmBenchmark: Benchmark = {
  id: "hsm",
  description: "ECDSA P-256 signing through hsm/ (PKCS#11 on SoftHSM2, and the software store) against the token and openssl",
  async run(progress) {
    return [...(await pkcs11Rows(progress)), ...(await softwareRows(progress))];
  },
};
