import { X509Certificate } from "node:crypto";
import { existsSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { EdgeTrustError, type Logger } from "../common/index.js";
import type { CaConfig } from "./config.js";
import { CaStore } from "./store.js";

/**
 * A store that held a CA is never silently re-created. The CA writes who it is — root fingerprint, where its store
 * is — to a file OUTSIDE the database (beside its config), and checks it every time the store is opened: a missing,
 * zero-byte, corrupt or different store is refused naming its file, instead of SQLite quietly making a fresh one
 * (which `ca init` would then fill with a new root, orphaning every device).
 */
interface CaIdentity {
  version: 1;
  /** sha256 (hex) of the root CA certificate's DER. */
  rootSha256: string;
  rootSubject: string;
  /** `sqlite:<absolute path>` or `postgres://<host>:<port>/<db>#<schema>` (no credentials). */
  store: string;
  recordedAt: string;
}

/** Where the identity file is: `ca.identityFile`, else beside the config file, else beside the SQLite file. */
export function identityFilePath(config: CaConfig, configFile?: string): string | undefined {
  if (config.identityFile) return resolve(config.identityFile);
  if (configFile) return join(dirname(resolve(configFile)), "ca-identity.json");
  if (!config.databaseUrl) return `${resolve(config.sqlitePath)}.identity.json`;
  return undefined;
}

/** The store's location as written in the identity file (never a password). */
function storeLocation(config: CaConfig): string {
  if (!config.databaseUrl) return `sqlite:${resolve(config.sqlitePath)}`;
  try {
    const u = new URL(config.databaseUrl);
    return `postgres://${u.hostname}:${u.port || "5432"}${u.pathname}#${config.databaseSchema}`;
  } catch {
    return `postgres:(unparsable url)#${config.databaseSchema}`;
  }
}

function refuse(message: string, hint: string, cause?: unknown): EdgeTrustError {
  return new EdgeTrustError("CA_STORE_REFUSED", message, { hint, ...(cause ? { cause } : {}) });
}

export function readIdentity(file: string): CaIdentity | undefined {
  if (!existsSync(file)) return undefined;
  let v: Partial<CaIdentity>;
  try {
    v = JSON.parse(readFileSync(file, "utf8")) as Partial<CaIdentity>;
  } catch (e) {
    throw refuse(`CA identity file ${file} is unreadable: ${(e as Error).message}`, "restore it from a backup (it names the root fingerprint and the store the CA uses)", e);
  }
  if (v.version !== 1 || typeof v.rootSha256 !== "string" || !/^[0-9a-f]{64}$/.test(v.rootSha256) || typeof v.store !== "string") {
    throw refuse(`CA identity file ${file} is not a version-1 identity (rootSha256, store)`, "restore it from a backup");
  }
  return v as CaIdentity;
}

/** Write (atomically) the identity of the CA whose root is `rootPem`. */
export function writeIdentity(file: string, config: CaConfig, rootPem: string): CaIdentity {
  const root = new X509Certificate(rootPem);
  const id: CaIdentity = { version: 1, rootSha256: root.fingerprint256.replace(/:/g, "").toLowerCase(), rootSubject: root.subject.replace(/\n/g, ", "), store: storeLocation(config), recordedAt: new Date().toISOString() };
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(id, null, 2) + "\n", { mode: 0o644 });
  renameSync(tmp, file);
  return id;
}

/** A SQLite file that once held this CA must still be there and not empty — checked BEFORE opening (opening creates it). */
function checkSqliteFile(path: string, identityFile: string, id: CaIdentity): void {
  const why = `${identityFile} records that this CA (root sha256 ${id.rootSha256.slice(0, 16)}…) keeps its store there`;
  if (!existsSync(path)) throw refuse(`CA store ${path} is missing; ${why}`, `restore ${path} from a backup; do not run ca init (a new root would orphan every device)`);
  const size = statSync(path).size;
  if (size === 0) throw refuse(`CA store ${path} is empty (0 bytes); ${why}`, `restore ${path} from a backup; do not run ca init (a new root would orphan every device)`);
}

/** Open the CA store, refusing one that does not match the recorded identity; record the identity of a CA not yet recorded. */
export async function openCaStore(config: CaConfig, opts: { configFile?: string; logger?: Logger } = {}): Promise<CaStore> {
  const identityFile = identityFilePath(config, opts.configFile);
  const id = identityFile ? readIdentity(identityFile) : undefined;
  const location = storeLocation(config);
  if (identityFile && id && id.store !== location) {
    throw refuse(`CA identity file ${identityFile} records the store ${id.store}, but the configuration names ${location}`, "point the configuration at the CA's store; if the store was moved on purpose, update the store field of the identity file");
  }
  if (identityFile && id && !config.databaseUrl) checkSqliteFile(resolve(config.sqlitePath), identityFile, id);
  const damaged = (e: unknown): EdgeTrustError => {
    if (config.databaseUrl || e instanceof EdgeTrustError) return e as EdgeTrustError;
    const path = resolve(config.sqlitePath);
    return refuse(`CA store ${path} cannot be read: ${(e as Error).message}`, `the file is damaged (truncated or not SQLite): restore ${path} from a backup`, e);
  };
  let store: CaStore;
  try {
    store = await CaStore.open({ databaseUrl: config.databaseUrl, sqlitePath: config.sqlitePath, schema: config.databaseSchema, groupCommit: config.groupCommit });
  } catch (e) {
    throw damaged(e);
  }
  try {
    const roots = await store.listCas("root").catch((e: unknown) => { throw damaged(e); });
    if (id) {
      const match = roots.some((r) => new X509Certificate(r.certPem).fingerprint256.replace(/:/g, "").toLowerCase() === id.rootSha256);
      if (!match) {
        const what = roots.length === 0 ? "holds no CA" : "holds a different root CA";
        throw refuse(`CA store ${location.replace(/^sqlite:/, "")} ${what}; ${identityFile} records root sha256 ${id.rootSha256} there`, "restore the store from a backup; do not run ca init (a new root would orphan every device)");
      }
    } else if (identityFile && roots[0]) {
      writeIdentity(identityFile, config, roots[0].certPem);
      opts.logger?.info({ identityFile }, "recorded the CA's identity outside its store");
    }
  } catch (e) {
    await store.close();
    throw e;
  }
  return store;
}
