import "reflect-metadata";
import { existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync, renameSync, rmSync, symlinkSync, openSync, fsyncSync, closeSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import * as x509 from "@peculiar/x509";
import { EdgeTrustError, registerCompiledValidator, validateValue, writeFileAtomic, faultAfterWrite } from "../common/index.js";
import { IdentityStateSchema, type IdentityState } from "./state-schema.js";
import { identityStateValidator } from "./state-validator.js";

// Validated by the validator compiled at build time (scripts/compiled-validators.mjs): no schema compiled at start.
registerCompiledValidator(IdentityStateSchema, identityStateValidator);
export { IdentityStateSchema };
export type { IdentityState };

/** Files of a generation, besides state.json (derived from it, written in the same generation). */
const STATE_FILES = [
  "device.cert.pem",
  "device.chain.pem",
  "edge-ca.cert.pem",
  "edge-ca.chain.pem",
  "issuing-ca.cert.pem",
  "ca-bundle.pem",
  "trust-bundle.pem",
  "hub-server.chain.pem",
] as const;

export function splitPems(text: string): string[] {
  return (text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []).map((p) => `${p}\n`);
}

function cert(pem: string): x509.X509Certificate {
  return new x509.X509Certificate(pem);
}

/** Edge CAs a relying party (hub, modules) must accept now: the current one and earlier ones not yet expired. */
export function edgeCaCertificates(s: IdentityState, now = new Date()): string[] {
  return [s.edgeCa.cert, ...s.edgeCa.previous.filter((p) => cert(p).notAfter > now)];
}

/** What a module trusts: the cloud roots and issuing CAs, and every Edge CA in its overlap window. */
export function trustBundle(s: IdentityState, now = new Date()): string[] {
  return [...s.caBundle, ...edgeCaCertificates(s, now)];
}

function derivedFiles(s: IdentityState): Record<(typeof STATE_FILES)[number], string> {
  const issuing = s.caBundle.filter((p) => {
    const c = cert(p);
    return c.subject !== c.issuer;
  });
  return {
    "device.cert.pem": s.device.cert,
    "device.chain.pem": [s.device.cert, ...s.device.chain].join(""),
    // Current first, then Edge CAs still in their overlap window (the hub's edgeCaFile reads all of them).
    "edge-ca.cert.pem": edgeCaCertificates(s).join(""),
    "edge-ca.chain.pem": [s.edgeCa.cert, ...s.edgeCa.chain].join(""),
    "issuing-ca.cert.pem": issuing.join(""),
    "ca-bundle.pem": s.caBundle.join(""),
    "trust-bundle.pem": trustBundle(s).join(""),
    "hub-server.chain.pem": [s.hub.cert, s.edgeCa.cert, ...s.edgeCa.chain].join(""),
  };
}

function fsyncDir(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * The identity state on disk, in generations: `gen-<n>/` holds state.json and the PEM files derived from it, and the
 * symlink `current` names the generation in force. A new generation is written completely (each file fsynced) under
 * a `.partial` name, renamed, and only then is `current` swapped by an atomic rename — so a crash at any point leaves
 * either the previous generation or the new one in force, never a mix. Fixed top-level names (`edge-ca.cert.pem`, …)
 * are symlinks through `current`, so readers (the hub) see each switch atomically too.
 */
export class StateStore {
  constructor(readonly dir: string) {}

  get currentDir(): string {
    return join(this.dir, "current");
  }

  /**
   * Remove half-written generations (a crash mid-write) and all but the previous generation — but only once the
   * generation `current` names has proven itself (its state.json reads and validates). A dangling or broken `current`
   * deletes nothing: the older generations may be the only good state left.
   */
  cleanup(): void {
    if (!existsSync(this.dir)) return;
    const cur = this.currentGeneration();
    const proven = cur !== undefined && this.verifies() ? cur : undefined;
    for (const name of readdirSync(this.dir)) {
      if (name.startsWith("current.")) rmSync(join(this.dir, name), { recursive: true, force: true });
      if (proven === undefined) continue;
      if (name.endsWith(".partial")) rmSync(join(this.dir, name), { recursive: true, force: true });
      const m = /^gen-(\d+)$/.exec(name);
      if (m && (Number(m[1]) < proven - 1 || Number(m[1]) > proven)) rmSync(join(this.dir, name), { recursive: true, force: true });
    }
  }

  /** Whether the generation in force reads and validates. */
  private verifies(): boolean {
    try {
      return this.load() !== undefined;
    } catch {
      return false;
    }
  }

  /** Complete generations on disk, newest first (whether or not `current` names one of them). */
  generations(): number[] {
    if (!existsSync(this.dir)) return [];
    return readdirSync(this.dir)
      .map((n) => /^gen-(\d+)$/.exec(n))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => Number(m[1]))
      .sort((a, b) => b - a);
  }

  currentGeneration(): number | undefined {
    try {
      const target = readlinkSync(this.currentDir);
      const m = /gen-(\d+)$/.exec(target);
      return m ? Number(m[1]) : undefined;
    } catch {
      return undefined;
    }
  }

  exists(): boolean {
    return this.currentGeneration() !== undefined;
  }

  /** The state in force, validated; undefined when the device was never provisioned. */
  load(): IdentityState | undefined {
    const cur = this.currentGeneration();
    if (cur === undefined) return undefined;
    const file = join(this.currentDir, "state.json");
    if (!existsSync(this.currentDir)) {
      const kept = this.generations().map((g) => `gen-${String(g).padStart(6, "0")}`);
      throw new EdgeTrustError("DEVICE_STATE_INVALID", `${this.currentDir} names gen-${String(cur).padStart(6, "0")}, which is missing; nothing was deleted (generations on disk: ${kept.join(", ") || "none"})`, {
        hint: kept.length > 0 ? `point it at the newest good generation: ln -sfn ${kept[0]} ${this.currentDir}` : "re-provision with `edgetrust device provision --force`",
      });
    }
    let raw: unknown;
    try {
      raw = JSON.parse(readFileSync(file, "utf8"));
    } catch (e) {
      throw new EdgeTrustError("DEVICE_STATE_INVALID", `${file} is unreadable: ${(e as Error).message}`, { hint: "re-provision with `edgetrust device provision --force`", cause: e });
    }
    const s = validateValue(raw, IdentityStateSchema, file);
    for (const p of [s.device.cert, s.edgeCa.cert, s.hub.cert, ...s.caBundle]) cert(p);
    return s;
  }

  /** Make `next` (generation = current + 1) the state in force, atomically. */
  commit(next: Omit<IdentityState, "generation" | "updatedAt" | "version">): IdentityState {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    this.cleanup();
    const generation = (this.currentGeneration() ?? 0) + 1;
    const state: IdentityState = { version: 1, ...next, generation, updatedAt: new Date().toISOString() };
    validateValue(state, IdentityStateSchema, "new identity state");
    const name = `gen-${String(generation).padStart(6, "0")}`;
    const partial = join(this.dir, `${name}.partial`);
    rmSync(partial, { recursive: true, force: true });
    mkdirSync(partial, { mode: 0o755 });
    writeFileAtomic(join(partial, "state.json"), JSON.stringify(state, null, 2), 0o600);
    faultAfterWrite("state.json");
    for (const [file, text] of Object.entries(derivedFiles(state))) {
      writeFileAtomic(join(partial, file), text, 0o644);
      faultAfterWrite(file);
    }
    renameSync(partial, join(this.dir, name));
    fsyncDir(this.dir);
    faultAfterWrite("generation");
    const link = join(this.dir, `current.${randomBytes(4).toString("hex")}`);
    symlinkSync(name, link);
    renameSync(link, this.currentDir);
    fsyncDir(this.dir);
    this.linkTopLevel();
    this.cleanup();
    return state;
  }

  private linkTopLevel(): void {
    for (const f of STATE_FILES) {
      const p = join(this.dir, f);
      let ok = false;
      try {
        ok = lstatSync(p).isSymbolicLink() && readlinkSync(p) === join("current", f);
      } catch {
        ok = false;
      }
      if (ok) continue;
      rmSync(p, { force: true });
      symlinkSync(join("current", f), p);
    }
  }
}
