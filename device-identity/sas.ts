import { timingSafeEqual } from "node:crypto";
import { EdgeTrustError, type Logger } from "../common/index.js";
import { GENERATION_ID_PATTERN } from "../identity-api/index.js";
import type { MacKeyStore } from "../hsm/index.js";
import type { AttestedModule, AttestedModules } from "./attested-modules.js";
import type { ContainerVerdict } from "./container-check.js";

/**
 * IoT Hub SAS tokens for modules granted `auth: sas`, signed and checked with a per-module HMAC-SHA256 key that is
 * generated in the HSM when the module is registered and erased when it is deregistered or replaced. The key label
 * carries the module's generation id (the agent makes a new one for every container it creates), so a token signed
 * for an earlier registration never verifies again, even for the same module name.
 *
 * Token: `SharedAccessSignature sr=<url-encoded host/devices/<d>/modules/<m>>&sig=<url-encoded base64 HMAC>&se=<unix s>`
 * (what azure-iot-common builds); the HMAC is over `<sr as sent, still encoded>\n<se>`.
 */

/** Longest lifetime a token may have (the Azure SDKs ask for one hour). */
export const SAS_MAX_TOKEN_SECONDS = 24 * 3600;
export { GENERATION_ID_PATTERN };

interface SasResource {
  host: string;
  deviceId: string;
  moduleId: string;
}

interface ParsedSas {
  /** `sr` exactly as sent (URL-encoded): what was signed. */
  srRaw: string;
  resource: SasResource;
  signature: Buffer;
  expiresAt: number;
}

interface SasVerdict {
  deviceId: string;
  moduleId: string;
  generationId: string;
  /** Unix seconds. */
  expiresAt: number;
  imageDigest: string;
  manifestVersion: number;
  /** The `host` part of the token's resource (the hub compares it with the MQTT user name's). */
  host: string;
}

const SEGMENT = /^[A-Za-z0-9._-]{1,128}$/;

/** `host/devices/<d>/modules/<m>`, decoded. Undefined when it is not exactly that. */
function parseResource(decoded: string): SasResource | undefined {
  const m = /^([^/]{1,255})\/devices\/([^/]+)\/modules\/([^/]+)$/.exec(decoded);
  if (!m || !SEGMENT.test(m[2] ?? "") || !SEGMENT.test(m[3] ?? "")) return undefined;
  return { host: m[1] ?? "", deviceId: m[2] ?? "", moduleId: m[3] ?? "" };
}

function decode(s: string): string | undefined {
  try {
    return decodeURIComponent(s);
  } catch {
    return undefined;
  }
}

/** Parse a module SAS token. Throws FORBIDDEN with what is wrong (never echoing the signature). */
export function parseSasToken(token: string): ParsedSas {
  const bad = (why: string) => new EdgeTrustError("FORBIDDEN", `SAS token refused: ${why}`);
  if (token.length > 2048) throw bad("longer than 2048 characters");
  const m = /^SharedAccessSignature ([^\s]+)$/.exec(token);
  if (!m) throw bad("not of the form `SharedAccessSignature sr=…&sig=…&se=…`");
  const fields = new Map<string, string>();
  for (const part of (m[1] ?? "").split("&")) {
    const eq = part.indexOf("=");
    if (eq <= 0) throw bad("a field without a value");
    const k = part.slice(0, eq);
    if (fields.has(k)) throw bad(`field ${k} given twice`);
    fields.set(k, part.slice(eq + 1));
  }
  for (const k of fields.keys()) if (!["sr", "sig", "se", "skn"].includes(k)) throw bad(`unknown field ${JSON.stringify(k.slice(0, 16))}`);
  // A key name means a hub-level shared access policy: modules here have only their own key.
  if (fields.has("skn")) throw bad("a policy key name (skn) is not accepted; modules sign with their own key");
  const srRaw = fields.get("sr");
  const sig = fields.get("sig");
  const se = fields.get("se");
  if (!srRaw || !sig || !se) throw bad("sr, sig and se are required");
  const decoded = decode(srRaw);
  const resource = decoded === undefined ? undefined : parseResource(decoded);
  if (!resource) throw bad("sr is not <host>/devices/<device>/modules/<module>");
  const sigB64 = decode(sig) ?? "";
  if (!/^[A-Za-z0-9+/]{43}=$/.test(sigB64)) throw bad("sig is not a base64 HMAC-SHA256");
  if (!/^[0-9]{1,12}$/.test(se)) throw bad("se is not a time in seconds");
  return { srRaw, resource, signature: Buffer.from(sigB64, "base64"), expiresAt: Number(se) };
}

/** The string the token's signature covers. */
const stringToSign = (srRaw: string, expiresAt: number): string => `${srRaw}\n${expiresAt}`;

interface SasKeysOptions {
  deviceId: string;
  mac: MacKeyStore;
  modules: AttestedModules;
  log: Logger;
  now?: () => Date;
  maxTokenSeconds?: number;
}

/** The per-module SAS keys: made at registration, erased at deregistration, used to sign and to verify. */
export class SasKeys {
  private readonly maxTokenSeconds: number;

  constructor(private readonly o: SasKeysOptions) {
    this.maxTokenSeconds = o.maxTokenSeconds ?? SAS_MAX_TOKEN_SECONDS;
    o.modules.on("deregistered", (m) => {
      if (m.auth !== "sas" || !m.generationId) return;
      // A replacement under the same generation keeps its key (registration made sure it exists).
      const now = o.modules.get(m.name);
      if (now?.generationId === m.generationId) return;
      this.erase(m.name, m.generationId).catch((e: unknown) => o.log.error({ module: m.name, err: (e as Error).message }, "could not erase the SAS key of a deregistered module"));
    });
  }

  static label(module: string, generationId: string): string {
    return `sas.${module}.${generationId}`;
  }

  private nowSeconds(): number {
    return Math.floor((this.o.now?.() ?? new Date()).getTime() / 1000);
  }

  /**
   * Before a module with `auth: sas` is registered: its key for this generation exists (made in the HSM if not). A
   * generation belongs to one container: registering it again for another container or digest would hand that one
   * the key, and every token the old container signed, so it is refused (the agent makes a new generation for every
   * container it creates; the same container registered again keeps its key).
   */
  async prepare(m: Pick<AttestedModule, "name" | "auth" | "generationId" | "containerId" | "imageDigest">): Promise<void> {
    if (m.auth !== "sas") return;
    if (!m.generationId) throw new EdgeTrustError("INVALID_INPUT", `module ${m.name} asks for SAS authentication but names no generationId`);
    const cur = this.o.modules.get(m.name);
    if (cur?.generationId === m.generationId && (cur.containerId !== m.containerId || cur.imageDigest !== m.imageDigest)) {
      throw new EdgeTrustError("FORBIDDEN", `generation ${m.generationId} of module ${m.name} is registered for another container or image digest`, {
        hint: "a new container needs a new generation id (IOTEDGE_MODULEGENERATIONID)",
      });
    }
    const label = SasKeys.label(m.name, m.generationId);
    if ((await this.o.mac.listMacKeys()).includes(label)) return;
    await this.o.mac.generateMacKey(label);
    this.o.log.info({ module: m.name, generationId: m.generationId }, "SAS key generated in the key store");
  }

  private async erase(module: string, generationId: string): Promise<void> {
    if (await this.o.mac.deleteMacKey(SasKeys.label(module, generationId))) this.o.log.info({ module, generationId }, "SAS key erased");
  }

  /** At start: keys of modules no longer registered (a crash between deregistration and erasure) go. */
  async sweep(): Promise<void> {
    const keep = new Set(this.o.modules.list().filter((m) => m.auth === "sas" && m.generationId).map((m) => SasKeys.label(m.name, m.generationId ?? "")));
    for (const label of await this.o.mac.listMacKeys()) {
      if (!label.startsWith("sas.") || keep.has(label)) continue;
      await this.o.mac.deleteMacKey(label);
      this.o.log.info({ label }, "SAS key of a module no longer registered erased");
    }
  }

  /** The registered module `name` of generation `generationId`, allowed SAS; throws FORBIDDEN saying why not. */
  private sasModule(name: string, generationId?: string): AttestedModule & { generationId: string } {
    const m = this.o.modules.get(name);
    if (!m) throw new EdgeTrustError("FORBIDDEN", `module ${name} is not registered as attested`);
    if (m.auth !== "sas" || !m.generationId) throw new EdgeTrustError("FORBIDDEN", `module ${name} is not granted SAS authentication (policy: auth x509)`);
    if (generationId !== undefined && generationId !== m.generationId) {
      throw new EdgeTrustError("FORBIDDEN", `generation ${generationId} of module ${name} is not the registered one`);
    }
    return m as AttestedModule & { generationId: string };
  }

  /**
   * The workload API's sign, narrowed to what a SAS token needs: `data` must be `<sr of this module>\n<expiry>` with
   * the expiry at most `maxTokenSeconds` ahead. The IoT Edge daemon signs anything, which lets a module mint tokens
   * that never expire; here a module gets only short-lived tokens for itself.
   */
  async sign(name: string, generationId: string, data: Buffer): Promise<Buffer> {
    const m = this.sasModule(name, generationId);
    const text = data.toString("utf8");
    const nl = text.lastIndexOf("\n");
    const srRaw = nl < 0 ? "" : text.slice(0, nl);
    const se = nl < 0 ? "" : text.slice(nl + 1);
    const decoded = decode(srRaw);
    const res = decoded === undefined ? undefined : parseResource(decoded);
    if (!res || !/^[0-9]{1,12}$/.test(se) || !Buffer.from(stringToSign(srRaw, Number(se))).equals(data)) {
      throw new EdgeTrustError("FORBIDDEN", "only a SAS string-to-sign (<url-encoded host/devices/<d>/modules/<m>>\\n<expiry>) is signed here");
    }
    if (res.deviceId !== this.o.deviceId || res.moduleId !== m.name) {
      throw new EdgeTrustError("FORBIDDEN", `module ${m.name} may sign only for devices/${this.o.deviceId}/modules/${m.name}`);
    }
    const now = this.nowSeconds();
    if (Number(se) <= now || Number(se) > now + this.maxTokenSeconds) {
      throw new EdgeTrustError("FORBIDDEN", `token expiry must be within the next ${this.maxTokenSeconds} s`);
    }
    return this.o.mac.macSign(SasKeys.label(m.name, m.generationId), data);
  }

  /**
   * Is this the token of a module registered with SAS now, signed with its current key, unexpired? The answer names
   * the module and what it is attested to run. Throws FORBIDDEN with the reason.
   */
  async verify(token: string): Promise<SasVerdict> {
    const t = parseSasToken(token);
    const { deviceId, moduleId, host } = t.resource;
    if (deviceId !== this.o.deviceId) throw new EdgeTrustError("FORBIDDEN", `SAS token refused: it is for device ${deviceId}, this is ${this.o.deviceId}`);
    const now = this.nowSeconds();
    if (t.expiresAt <= now) throw new EdgeTrustError("FORBIDDEN", `SAS token refused: expired at ${new Date(t.expiresAt * 1000).toISOString()}`);
    if (t.expiresAt > now + this.maxTokenSeconds) throw new EdgeTrustError("FORBIDDEN", `SAS token refused: it expires more than ${this.maxTokenSeconds} s from now`);
    const m = this.sasModule(moduleId);
    const want = await this.o.mac.macSign(SasKeys.label(m.name, m.generationId), Buffer.from(stringToSign(t.srRaw, t.expiresAt)));
    if (want.length !== t.signature.length || !timingSafeEqual(want, t.signature)) {
      throw new EdgeTrustError("FORBIDDEN", `SAS token refused: the signature is not module ${moduleId}'s (another key, another generation, or altered)`);
    }
    return { deviceId, moduleId, generationId: m.generationId, expiresAt: t.expiresAt, imageDigest: m.imageDigest, manifestVersion: m.manifestVersion, host };
  }
}

/**
 * The workload socket's `sasSign`: the same container check as a certificate request (the registered container runs,
 * still from the attested digest), then the HMAC in the HSM.
 */
export function sasSigner(sas: SasKeys, checkContainer: (m: AttestedModule) => Promise<ContainerVerdict>, unavailable?: () => Error | undefined) {
  return async (m: AttestedModule, generationId: string, data: Buffer): Promise<Buffer> => {
    const down = unavailable?.();
    if (down) throw down;
    const v = await checkContainer(m);
    if (!v.ok) throw new EdgeTrustError("FORBIDDEN", `no SAS signature for module ${m.name}: ${v.reason}`);
    return sas.sign(m.name, generationId, data);
  };
}
