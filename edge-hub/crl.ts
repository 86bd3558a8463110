import "reflect-metadata";
import { EventEmitter } from "node:events";
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { EdgeTrustError, httpCall, writeFileAtomic, type Logger } from "../common/index.js";
import { DEFAULT_CRL_POLL_SECONDS } from "./config.js";

/**
 * Revocation for the hub: the CRL of the cloud issuing CA, from a file or an http(s) URL (ca-service serves it as DER),
 * verified against the issuing CA and cached on disk so a device that goes offline keeps the last good list.
 *
 * What it covers: leaf device certificates (issued by the issuing CA) and this device's Edge CA (so revoking the
 * device's Edge CA cuts every module). Module certificates themselves are short-lived and are not listed on a CRL.
 */
interface CrlOptions {
  /** A file path or an http(s) URL; empty = no CRL configured. */
  source: string;
  /** Directory where the last verified CRL is cached (`crl.der`). */
  cacheDir: string;
  /** The CA certificates the CRL may be signed by (the issuing CA). */
  issuers: x509.X509Certificate[];
  /** When true, a client whose issuer has no CRL loaded is refused ("fail closed"). */
  require: boolean;
  fetchTimeoutMs?: number;
  log?: Logger;
}

type RevocationStatus =
  | { ok: true; stale: boolean }
  | { ok: false; reason: "revoked" | "crl-missing"; detail: string };

interface CrlEvents {
  /** A newer verified CRL was loaded: connections should be checked again. */
  updated: [];
}

export class CrlCache extends EventEmitter<CrlEvents> {
  private crl: x509.X509Crl | undefined;
  private crlIssuer: x509.X509Certificate | undefined;
  private readonly cacheFile: string;
  /** What the source said last time, so the next question can be "changed since?" (ETag, or a file's mtime+size). */
  private validator: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private polling: Promise<boolean> | undefined;

  constructor(private readonly opts: CrlOptions) {
    super();
    this.cacheFile = join(opts.cacheDir, "crl.der");
  }

  /** The loaded CRL's thisUpdate/nextUpdate, for status and metrics. */
  info(): { loaded: boolean; thisUpdate?: Date; nextUpdate?: Date; entries?: number } {
    if (!this.crl) return { loaded: false };
    const out: { loaded: boolean; thisUpdate?: Date; nextUpdate?: Date; entries?: number } = { loaded: true, thisUpdate: this.crl.thisUpdate, entries: this.crl.entries.length };
    if (this.crl.nextUpdate) out.nextUpdate = this.crl.nextUpdate;
    return out;
  }

  /** Load the disk cache first (offline start), then try the source. Never throws for an unreachable source. */
  async start(): Promise<void> {
    if (existsSync(this.cacheFile)) {
      try {
        await this.accept(readFileSync(this.cacheFile), false);
      } catch (e) {
        this.opts.log?.warn({ err: (e as Error).message }, "cached CRL rejected");
      }
    }
    await this.refresh().catch((e: unknown) => this.opts.log?.warn({ err: (e as Error).message, source: this.opts.source }, "CRL refresh failed; using the cached CRL"));
  }

  /**
   * Ask the source whether the CRL changed and, if so, fetch, verify and cache it. True when a new CRL was loaded
   * (live connections are then re-checked). Throws when the source cannot be read or the CRL does not verify.
   */
  async refresh(): Promise<boolean> {
    if (!this.opts.source) return false;
    // One question at a time: a slow source never piles up requests.
    this.polling ??= this.pollOnce().finally(() => (this.polling = undefined));
    return this.polling;
  }

  private async pollOnce(): Promise<boolean> {
    const got = await this.fetchSource();
    if (!got) return false;
    const changed = await this.accept(got.der, true);
    this.validator = got.validator;
    return changed;
  }

  /** Ask every `seconds` (default DEFAULT_CRL_POLL_SECONDS) until unwatch(); failures are logged, the last CRL kept. */
  watch(seconds = DEFAULT_CRL_POLL_SECONDS): void {
    if (this.timer || !this.opts.source) return;
    this.timer = setInterval(() => void this.refresh().catch((e: unknown) => this.opts.log?.warn({ err: (e as Error).message }, "CRL refresh failed; using the last CRL")), seconds * 1000);
    this.timer.unref();
  }

  unwatch(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** The CRL bytes and a validator for the next question, or undefined when the source says nothing changed. */
  private async fetchSource(): Promise<{ der: Buffer; validator: string | undefined } | undefined> {
    const src = this.opts.source;
    if (/^https?:\/\//.test(src)) {
      const headers: Record<string, string> = this.validator && this.crl ? { "if-none-match": this.validator } : {};
      const timeoutMs = this.opts.fetchTimeoutMs ?? 10_000;
      // The signal bounds the whole exchange; httpCall's timeout only a silence.
      const get = () => httpCall({ method: "GET", url: src, headers, timeoutMs, signal: AbortSignal.timeout(timeoutMs), peer: `CRL source ${src}` });
      let res: Awaited<ReturnType<typeof get>>;
      try {
        res = await get();
      } catch (e) {
        // A kept-alive connection can fail the moment a poll reuses it (closed by the server, or its idle timer firing
        // as it is taken: the revocation bench saw polls fail at once with "no answer within 5000 ms" at load 14, each
        // delaying a revocation by a whole interval). Ask once more at once, on a new connection; a source that is
        // really down fails both.
        if (!(e instanceof EdgeTrustError) || e.code !== "UNAVAILABLE") throw e;
        this.opts.log?.debug({ err: e.message, source: src }, "CRL poll failed on its connection; asking again");
        res = await get();
      }
      if (res.status === 304 && this.crl) return undefined;
      if (res.status < 200 || res.status > 299) throw new EdgeTrustError("HUB_CRL_INVALID", `CRL fetch ${src} answered ${res.status}`);
      const etag = res.headers.etag;
      return { der: res.body, validator: typeof etag === "string" ? etag : undefined };
    }
    const st = statSync(src);
    const validator = `${st.mtimeMs}:${st.size}`;
    if (validator === this.validator && this.crl) return undefined;
    return { der: readFileSync(src), validator };
  }

  /** Verify and load a CRL; false when it is the one already loaded (nothing to re-check). */
  private async accept(data: Buffer, persist: boolean): Promise<boolean> {
    let crl: x509.X509Crl;
    try {
      const text = data.toString("latin1");
      crl = new x509.X509Crl(text.includes("-----BEGIN") ? text : new Uint8Array(data));
    } catch (e) {
      throw new EdgeTrustError("HUB_CRL_INVALID", "CRL does not parse", { cause: e });
    }
    let issuer: x509.X509Certificate | undefined;
    for (const ca of this.opts.issuers) {
      if (ca.subject !== crl.issuer) continue;
      if (await crl.verify({ publicKey: ca })) {
        issuer = ca;
        break;
      }
    }
    if (!issuer) throw new EdgeTrustError("HUB_CRL_INVALID", `CRL from ${crl.issuer} is not signed by a configured issuing CA`);
    if (this.crl && Buffer.from(this.crl.rawData).equals(Buffer.from(crl.rawData))) return false;
    if (this.crl && crl.thisUpdate < this.crl.thisUpdate) {
      throw new EdgeTrustError("HUB_CRL_INVALID", "CRL is older than the one already loaded (rollback refused)");
    }
    this.crl = crl;
    this.crlIssuer = issuer;
    if (persist) writeFileAtomic(this.cacheFile, Buffer.from(crl.rawData), 0o644);
    this.opts.log?.info({ issuer: crl.issuer, entries: crl.entries.length, nextUpdate: crl.nextUpdate?.toISOString() }, "CRL loaded");
    this.emit("updated");
    return true;
  }

  /**
   * Is `cert` (issued by `issuer`) revoked? A CRL past its nextUpdate is still used (the device may be offline
   * for a long time; the last known list is better than none) and reported as stale.
   */
  check(issuer: x509.X509Certificate, cert: x509.X509Certificate, now = new Date()): RevocationStatus {
    if (!this.crl || !this.crlIssuer || this.crlIssuer.subject !== issuer.subject) {
      if (this.opts.require) return { ok: false, reason: "crl-missing", detail: `no CRL loaded for ${issuer.subject}` };
      return { ok: true, stale: true };
    }
    const entry = this.crl.findRevoked(cert);
    if (entry) return { ok: false, reason: "revoked", detail: `serial ${cert.serialNumber} revoked ${entry.revocationDate.toISOString()}` };
    const stale = this.crl.nextUpdate !== undefined && this.crl.nextUpdate < now;
    return { ok: true, stale };
  }
}
