import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { EdgeTrustError, isEdgeTrustError } from "../../common/index.js";
import type { KeyStore, MacKeyStore } from "../../hsm/index.js";

/** The wrapping key's label in the CA's key store (an HMAC-SHA256 secret generated there, never extractable). */
export const GROUP_KEY_WRAP_LABEL = "ca.group-key-wrap";

const PREFIX = "v1.";
const SALT = 16;
const IV = 12;
const TAG = 16;

/**
 * Symmetric group enrollment keys, wrapped so that the database alone holds nothing usable. Per row, a one-time
 * AES-256 key is HMAC-SHA256(wrapping key, context ‖ group id ‖ random salt) computed inside the key store (the
 * wrapping key never leaves the token); the group key is sealed with AES-256-GCM under it, the group id as
 * associated data, so a blob copied to another group's row, or altered, does not open. The PKCS#11 tokens available
 * here (SoftHSM2, tpm2-pkcs11) share HMAC with the SAS keys already, which is why HMAC is the KDF rather than a
 * CKM_AES_KEY_WRAP key: one mechanism for every token the CA supports.
 */
export class GroupKeyVault {
  private ready: Promise<void> | undefined;

  constructor(private readonly mac: MacKeyStore) {}

  /** The wrapping key is made on first use; a second CA process racing to make it finds it made. */
  private ensureKey(): Promise<void> {
    this.ready ??= (async () => {
      if ((await this.mac.listMacKeys()).includes(GROUP_KEY_WRAP_LABEL)) return;
      try {
        await this.mac.generateMacKey(GROUP_KEY_WRAP_LABEL);
      } catch (e) {
        if (!isEdgeTrustError(e, "HSM_KEY_EXISTS")) throw e;
      }
    })().catch((e: unknown) => { this.ready = undefined; throw e; });
    return this.ready;
  }

  private async rowKey(groupId: string, salt: Buffer): Promise<Buffer> {
    await this.ensureKey();
    return this.mac.macSign(GROUP_KEY_WRAP_LABEL, Buffer.concat([Buffer.from(`edgetrust group-key wrap v1\0${groupId}\0`, "utf8"), salt]));
  }

  private static aad(groupId: string): Buffer {
    return Buffer.from(`edgetrust.enrollment_groups.group_key\0${groupId}`, "utf8");
  }

  /** The stored form of a base64 group key: `v1.` + base64(salt ‖ iv ‖ tag ‖ ciphertext). */
  async wrap(groupId: string, groupKeyB64: string): Promise<string> {
    const salt = randomBytes(SALT);
    const iv = randomBytes(IV);
    const c = createCipheriv("aes-256-gcm", await this.rowKey(groupId, salt), iv);
    c.setAAD(GroupKeyVault.aad(groupId));
    const ct = Buffer.concat([c.update(Buffer.from(groupKeyB64, "base64")), c.final()]);
    return PREFIX + Buffer.concat([salt, iv, c.getAuthTag(), ct]).toString("base64");
  }

  /** The base64 group key; a row that does not open (altered, moved, or wrapped by another CA's key) is refused. */
  async unwrap(groupId: string, stored: string): Promise<string> {
    const refused = (why: string, cause?: unknown) => new EdgeTrustError("CA_STORE_REFUSED", `the wrapped group key of enrollment group ${groupId} is refused: ${why}`, {
      hint: "the row was altered in the database or wrapped under another key store's wrapping key; set a new key with PUT /v1/enrollment-groups/{id} {groupKey}", ...(cause ? { cause } : {}),
    });
    if (!stored.startsWith(PREFIX)) throw refused("not in the wrapped-v1 form");
    const raw = Buffer.from(stored.slice(PREFIX.length), "base64");
    if (raw.length <= SALT + IV + TAG) throw refused("too short");
    const salt = raw.subarray(0, SALT);
    const d = createDecipheriv("aes-256-gcm", await this.rowKey(groupId, salt), raw.subarray(SALT, SALT + IV));
    d.setAAD(GroupKeyVault.aad(groupId));
    d.setAuthTag(raw.subarray(SALT + IV, SALT + IV + TAG));
    try {
      return Buffer.concat([d.update(raw.subarray(SALT + IV + TAG)), d.final()]).toString("base64");
    } catch (e) {
      throw refused("its authentication tag does not verify", e);
    }
  }
}

const vaults = new WeakMap<KeyStore, GroupKeyVault>();

/** One vault per opened key store; undefined when the store has no secret keys (it cannot hold group keys). */
export function groupKeyVault(keys: KeyStore): GroupKeyVault | undefined {
  if (!keys.mac) return undefined;
  let v = vaults.get(keys);
  if (!v) { v = new GroupKeyVault(keys.mac); vaults.set(keys, v); }
  return v;
}
