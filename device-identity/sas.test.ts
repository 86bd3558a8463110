/**
 * SAS keys in SoftHSM2, with tokens built by the Azure SDK's own code (azure-iot-common's
 * SharedAccessSignature.createWithSigningFunction, which IotEdgeAuthenticationProvider uses) and signed through
 * SasKeys.sign, as the workload socket does. Each refusal the issue names is tried here at the verifier.
 */
import { createRequire } from "node:module";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger, isEdgeTrustError } from "../common/index.js";
import { Pkcs11KeyStore, SOFTHSM_MODULE, createSoftHsmDir, initToken, type SoftHsmDir } from "../hsm/index.js";
import { AttestedModules, type AttestedModuleInput } from "./attested-modules.js";
import { SasKeys, parseSasToken } from "./sas.js";

const require = createRequire(import.meta.url);
const { SharedAccessSignature } = require("azure-iot-common") as {
  SharedAccessSignature: {
    createWithSigningFunction(
      credentials: { host: string; deviceId: string; moduleId?: string },
      expiry: number,
      sign: (data: Buffer, cb: (err: Error | null, signed?: Buffer) => void) => void,
      cb: (err: Error | null, sas?: { toString(): string }) => void,
    ): void;
  };
};

const DEVICE = "dev-sas";
const HOST = "hub.edgetrust.test";
const log = createLogger("device-identity", { level: "silent" });
let hsm: SoftHsmDir;
let store: Pkcs11KeyStore;
let modules: AttestedModules;
let sas: SasKeys;
const dir = mkdtempSync(join(tmpdir(), "et-sas-"));
let clock = new Date();

const reg = (name: string, over: Partial<AttestedModuleInput> = {}): AttestedModuleInput => ({
  name, containerId: "a".repeat(64), imageRepository: "127.0.0.1:5000/m", imageDigest: `sha256:${"b".repeat(64)}`,
  manifestVersion: 1, deploymentId: "dep", uid: 1000, gid: 1000, auth: "sas", generationId: `gen${name}0001`, ...over,
});

async function register(input: AttestedModuleInput): Promise<void> {
  await sas.prepare(input);
  modules.register(input);
}

/** A token as the SDK builds it, its signature made by SasKeys.sign for (module, generation). */
function sdkToken(module: string, generationId: string, expiry: number, signAs = module, deviceId = DEVICE): Promise<string> {
  return new Promise((resolve, reject) => {
    SharedAccessSignature.createWithSigningFunction({ host: HOST, deviceId, moduleId: module }, expiry, (data, cb) => {
      sas.sign(signAs, generationId, data).then((d) => cb(null, d), (e: Error) => cb(e));
    }, (err, t) => (err || !t ? reject(err ?? new Error("no token")) : resolve(t.toString())));
  });
}

const inAnHour = () => Math.floor(clock.getTime() / 1000) + 3600;

async function refusal(p: Promise<unknown>): Promise<string> {
  const e = await p.then(() => undefined, (x: unknown) => x);
  expect(isEdgeTrustError(e, "FORBIDDEN"), String(e)).toBe(true);
  return (e as Error).message;
}

beforeAll(async () => {
  hsm = createSoftHsmDir();
  initToken({ module: SOFTHSM_MODULE, label: "et-sas", soPin: "so-sas", userPin: "pin-sas-1" });
  store = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: "et-sas", pin: "pin-sas-1", logger: log });
  modules = new AttestedModules(join(dir, "attested.json"));
  sas = new SasKeys({ deviceId: DEVICE, mac: store.mac, modules, log, now: () => clock });
  await register(reg("alpha"));
  await register(reg("beta"));
  modules.register(reg("gamma", { auth: "x509", generationId: undefined }));
});

afterAll(async () => {
  await store?.close();
  hsm?.cleanup();
  rmSync(dir, { recursive: true, force: true });
});

describe("module SAS tokens, keys in SoftHSM2", () => {
  it("a token the SDK builds through the sign route verifies: module, generation, attestation", async () => {
    const token = await sdkToken("alpha", "genalpha0001", inAnHour());
    expect(token).toMatch(/^SharedAccessSignature sr=hub\.edgetrust\.test%2Fdevices%2Fdev-sas%2Fmodules%2Falpha&sig=[^&]+&se=\d+$/);
    expect(await sas.verify(token)).toMatchObject({ deviceId: DEVICE, moduleId: "alpha", generationId: "genalpha0001", host: HOST, imageDigest: `sha256:${"b".repeat(64)}`, manifestVersion: 1 });
    expect(await store.mac.listMacKeys()).toEqual(["sas.alpha.genalpha0001", "sas.beta.genbeta0001"]);
  });

  it("attack: a token signed with another module's key (beta signs alpha's resource) is refused at signing and at verification", async () => {
    // beta's socket will not sign alpha's resource at all...
    expect(await refusal(sdkToken("alpha", "genbeta0001", inAnHour(), "beta"))).toMatch(/may sign only for devices\/dev-sas\/modules\/beta/);
    // ...and a token for alpha carrying beta's signature (as if beta's key signed it) does not verify as alpha.
    const betaToken = await sdkToken("beta", "genbeta0001", inAnHour());
    const t = parseSasToken(betaToken);
    const forged = betaToken.replace(t.srRaw, encodeURIComponent(`${HOST}/devices/${DEVICE}/modules/alpha`));
    expect(await refusal(sas.verify(forged))).toMatch(/signature is not module alpha's/);
  });

  it("attack: an expired token is refused; so is one that outlives the maximum, and the sign route will not make either", async () => {
    const token = await sdkToken("alpha", "genalpha0001", inAnHour());
    clock = new Date(clock.getTime() + 3601_000);
    expect(await refusal(sas.verify(token))).toMatch(/expired at/);
    clock = new Date();
    expect(await refusal(sdkToken("alpha", "genalpha0001", Math.floor(Date.now() / 1000) - 5))).toMatch(/expiry must be within/);
    expect(await refusal(sdkToken("alpha", "genalpha0001", Math.floor(Date.now() / 1000) + 2 * 86400))).toMatch(/expiry must be within/);
  });

  it("attack: a token for a module whose policy says x509 is refused, and nothing is signed for it", async () => {
    expect(await refusal(sas.sign("gamma", "gengamma0001", Buffer.from(`${encodeURIComponent(`${HOST}/devices/${DEVICE}/modules/gamma`)}\n${inAnHour()}`)))).toMatch(/not granted SAS/);
    const alphaToken = await sdkToken("alpha", "genalpha0001", inAnHour());
    const asGamma = alphaToken.replace(encodeURIComponent(`${HOST}/devices/${DEVICE}/modules/alpha`), encodeURIComponent(`${HOST}/devices/${DEVICE}/modules/gamma`));
    expect(await refusal(sas.verify(asGamma))).toMatch(/gamma is not granted SAS/);
  });

  it("attack: another generation's signature, another device's token, altered or malformed tokens are refused", async () => {
    expect(await refusal(sdkToken("alpha", "genother0001", inAnHour()))).toMatch(/generation genother0001 .* not the registered one/);
    expect(await refusal(sas.verify((await sdkToken("alpha", "genalpha0001", inAnHour())).replace(/se=(\d+)/, (_m, n: string) => `se=${Number(n) + 1}`)))).toMatch(/signature is not module alpha's/);
    for (const bad of ["", "Bearer x", "SharedAccessSignature sr=a&sig=b", `SharedAccessSignature sr=${HOST}%2Fdevices%2Fd&sig=${"A".repeat(43)}%3D&se=1`, "SharedAccessSignature sr=x&sig=y&se=1&skn=iothubowner"]) {
      await refusal(sas.verify(bad));
    }
    const otherDevice = (await sdkToken("alpha", "genalpha0001", inAnHour())).replace("dev-sas", "dev-other");
    expect(await refusal(sas.verify(otherDevice))).toMatch(/for device dev-other/);
  });

  it("attack: a token replayed after deregistration is refused, and stays refused when the module is registered again", async () => {
    const token = await sdkToken("beta", "genbeta0001", inAnHour());
    expect((await sas.verify(token)).moduleId).toBe("beta");
    modules.deregister("beta", "test");
    expect(await refusal(sas.verify(token))).toMatch(/beta is not registered/);
    await expect.poll(() => store.mac.listMacKeys()).toEqual(["sas.alpha.genalpha0001"]);
    // Registered again — even under the same generation id — its key is a new one: the old token is worthless.
    await register(reg("beta"));
    expect(await refusal(sas.verify(token))).toMatch(/signature is not module beta's/);
    expect((await sas.verify(await sdkToken("beta", "genbeta0001", inAnHour()))).moduleId).toBe("beta");
  });

  it("attack: a registration reusing a live generation for another container or digest is refused, and the old tokens stay the old registration's only", async () => {
    const token = await sdkToken("alpha", "genalpha0001", inAnHour());
    for (const over of [{ containerId: "d".repeat(64) }, { imageDigest: `sha256:${"e".repeat(64)}` }]) {
      expect(await refusal(register(reg("alpha", over)))).toMatch(/generation genalpha0001 of module alpha is registered for another container or image digest/);
    }
    // Nothing was registered: the token verifies for the registration it was signed under, with its digest.
    expect(await sas.verify(token)).toMatchObject({ moduleId: "alpha", imageDigest: `sha256:${"b".repeat(64)}` });
    // The same container registered again (e.g. after a daemon restart) keeps its key.
    await register(reg("alpha"));
    expect((await sas.verify(token)).moduleId).toBe("alpha");
  });

  it("a replacement with a new generation erases the old key; the sweep at start erases keys of modules no longer registered", async () => {
    await register(reg("alpha", { containerId: "c".repeat(64), generationId: "genalpha0002" }));
    await expect.poll(() => store.mac.listMacKeys()).toEqual(["sas.alpha.genalpha0002", "sas.beta.genbeta0001"]);
    await store.mac.generateMacKey("sas.ghost.gen00000001");
    await sas.sweep();
    expect(await store.mac.listMacKeys()).toEqual(["sas.alpha.genalpha0002", "sas.beta.genbeta0001"]);
  });
});
