import "reflect-metadata";
import { randomUUID } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { EdgeTrustError, isEdgeTrustError, writeFileAtomic, type Logger } from "../common/index.js";
import { keyStoreCrypto, keyStoreCryptoKey, keyStorePublicCryptoKey, type KeyAlgorithm, type KeyStore, type TlsKeyOptions } from "../hsm/index.js";
import { deviceUri, issueCertificate } from "../pki/index.js";
import type { AttestedModule } from "./attested-modules.js";
import { CaClient, isPermanentCaRefusal, type Issued } from "./ca-client.js";
import type { EdgeCa } from "./module-issuer.js";
import { assessCertificate, backoffMs, clockDisagreement, type Assessment } from "./renewal.js";
import { StateStore, splitPems, trustBundle, edgeCaCertificates, type IdentityState } from "./state.js";

/** A registration in flight (keys made, request fixed), kept until its answer is stored. */
export interface PendingRegistration {
  idempotencyKey: string;
  labels: { device: string; edgeCa: string };
  csr: string;
  edgeCaCsr: string;
}

export type CertKind = "device" | "edge-ca" | "hub";
export const CERT_KINDS: readonly CertKind[] = ["device", "edge-ca", "hub"];

export interface IdentityOptions {
  deviceId: string;
  trustDomain: string;
  hostName?: string;
  stateDir: string;
  keys: KeyStore;
  keyAlgorithm: KeyAlgorithm;
  hubKeyLabel: string;
  /** Node TLS key options for an HSM key (the TLS key source: OpenSSL engine for PKCS#11). */
  tlsKey: (label: string) => Promise<TlsKeyOptions>;
  caUrl: string;
  /** PEM the CA's HTTPS certificate chains to before the device has a trust bundle. */
  caTrust: string[];
  renewAtPercent: { device: number; edgeCa: number; hub: number };
  hubLifetimeSeconds: number;
  rotateKeys: boolean;
  retryInitialMs: number;
  retryMaxMs: number;
  /** Why the HSM cannot be used right now (hsm-guard.ts), if so: due renewals wait (with backoff) instead of trying. */
  hsmProblem?: () => string | undefined;
  /** Fresh attestation result to send with a renewal (when the CA requires one). */
  attestationForRenewal?: (ca: CaClient) => Promise<string>;
  log: Logger;
  /** The clock; injectable because a wrong clock is a fault tests must produce on demand. */
  now?: () => Date;
}

const BASE_LABELS = { device: "device-identity", edgeCa: "edge-ca" } as const;

/** The other of the two labels a rotating key alternates between (`x` ↔ `x.1`). */
export function nextLabel(current: string): string {
  return current.endsWith(".1") ? current.slice(0, -2) : `${current}.1`;
}

function pemOf(c: x509.X509Certificate): string {
  return c.toString("pem") + "\n";
}

async function spkiOf(store: KeyStore, label: string): Promise<string> {
  return Buffer.from((await store.getPublicKey({ label })).spki).toString("hex");
}

export interface KindStatus {
  kind: CertKind;
  serial: string;
  notBefore: string;
  notAfter: string;
  renewAt: string;
  status: Assessment["status"];
  keyLabel: string;
  failures: number;
  nextRetryAt?: string;
  lastError?: string;
}

/**
 * The device's identity: keys in the HSM, certificates on disk (StateStore), provisioning, renewal with retries and
 * optional key rotation, the Edge CA that issues module and hub certificates.
 */
export class DeviceIdentity {
  readonly store: StateStore;
  private state: IdentityState | undefined;
  private readonly crypto = keyStoreCrypto();
  private readonly signingKeys = new Map<string, CryptoKey>();
  private readonly failures = new Map<CertKind, { count: number; retryAt: number; error: string; hsm?: boolean }>();
  private clockProblem: string | undefined;
  /** Set when a certificate fresh from the CA already looks expired here: the device clock runs ahead. */
  private clockAhead: string | undefined;
  private readonly listeners = new Set<(s: IdentityState, changed: CertKind[]) => void | Promise<void>>();
  private busy: Promise<unknown> = Promise.resolve();

  constructor(readonly opts: IdentityOptions) {
    this.store = new StateStore(opts.stateDir);
  }

  now(): Date {
    return this.opts.now ? this.opts.now() : new Date();
  }

  /** Load the state in force (cleaning up after a crash mid-write) and check that its keys are in the HSM. */
  async load(): Promise<IdentityState> {
    this.store.cleanup();
    const s = this.store.load();
    if (!s) throw new EdgeTrustError("DEVICE_NOT_PROVISIONED", `no identity in ${this.opts.stateDir}`, { hint: "run `edgetrust device provision` first" });
    for (const [label, pem] of [[s.keys.device, s.device.cert], [s.keys.edgeCa, s.edgeCa.cert], [s.keys.hub, s.hub.cert]] as const) {
      const cert = new x509.X509Certificate(pem);
      const want = Buffer.from(cert.publicKey.rawData).toString("hex");
      let have: string;
      try {
        have = await spkiOf(this.opts.keys, label);
      } catch (e) {
        throw new EdgeTrustError("DEVICE_STATE_INVALID", `key ${label} of ${cert.subject} is not in the HSM`, { hint: "wrong token? re-provision with `edgetrust device provision --force`", cause: e });
      }
      if (have !== want) throw new EdgeTrustError("DEVICE_STATE_INVALID", `HSM key ${label} does not match the certificate ${cert.subject}`, { hint: "re-provision with `edgetrust device provision --force`" });
    }
    this.state = s;
    return s;
  }

  current(): IdentityState {
    if (!this.state) throw new EdgeTrustError("DEVICE_NOT_PROVISIONED", "the device identity is not loaded");
    return this.state;
  }

  onChange(l: (s: IdentityState, changed: CertKind[]) => void | Promise<void>): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  private ca(): CaClient {
    return new CaClient(this.opts.caUrl, this.state ? this.state.caBundle : this.opts.caTrust);
  }

  private async signingKey(label: string): Promise<CryptoKey> {
    let k = this.signingKeys.get(label);
    if (!k) {
      k = await keyStoreCryptoKey(this.opts.keys, { label });
      this.signingKeys.set(label, k);
    }
    return k;
  }

  private async freshKey(label: string): Promise<void> {
    this.signingKeys.delete(label);
    // A key under this label that no committed state references is debris of an interrupted attempt.
    try {
      await this.opts.keys.getKey({ label });
      await this.opts.keys.delete({ label });
      this.opts.log.warn({ label }, "removed an unreferenced key left by an interrupted provisioning or renewal");
    } catch (e) {
      if (!isEdgeTrustError(e, "HSM_KEY_NOT_FOUND")) throw e;
    }
    await this.opts.keys.generateKey(label, this.opts.keyAlgorithm);
  }

  private async csr(label: string, commonName: string): Promise<string> {
    const keys = { privateKey: await this.signingKey(label), publicKey: await keyStorePublicCryptoKey(this.opts.keys, { label }) };
    const alg = this.opts.keyAlgorithm;
    const signingAlgorithm = alg.startsWith("EC") ? { name: "ECDSA", hash: alg === "EC-P384" ? "SHA-384" : "SHA-256" } : { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" };
    const req = await x509.Pkcs10CertificateRequestGenerator.create({ name: new x509.Name([{ CN: [commonName] }]), keys, signingAlgorithm }, this.crypto);
    return req.toString("pem");
  }

  /** The certificate must carry the key we asked for and chain to the CA bundle. */
  private async checkIssued(issued: Issued, label: string, bundle: string[]): Promise<{ cert: string; chain: string[] }> {
    const [leaf, ...chain] = splitPems(issued.chainPem.includes(issued.certificatePem.trim()) ? issued.chainPem : issued.certificatePem + issued.chainPem);
    if (!leaf) throw new EdgeTrustError("DEVICE_ENROLL_FAILED", "the CA returned no certificate");
    const cert = new x509.X509Certificate(leaf);
    if (Buffer.from(cert.publicKey.rawData).toString("hex") !== (await spkiOf(this.opts.keys, label))) {
      throw new EdgeTrustError("DEVICE_ENROLL_FAILED", "the CA returned a certificate for another key");
    }
    const issuers = [...chain, ...bundle].map((p) => new x509.X509Certificate(p));
    const issuer = issuers.find((c) => c.subject === cert.issuer);
    if (!issuer || !(await cert.verify({ publicKey: issuer.publicKey, signatureOnly: true }))) {
      throw new EdgeTrustError("DEVICE_ENROLL_FAILED", `the certificate from the CA does not chain to its trust bundle (issuer ${cert.issuer})`);
    }
    return { cert: pemOf(cert), chain: chain.filter((p) => new x509.X509Certificate(p).subject !== new x509.X509Certificate(p).issuer) };
  }

  private async issueHub(edgeCaPem: string, edgeCaLabel: string): Promise<string> {
    const pub = await keyStorePublicCryptoKey(this.opts.keys, { label: this.opts.hubKeyLabel });
    const cert = await issueCertificate({
      profile: "edge-hub-server",
      subject: { commonName: "edgehub" },
      identity: { trustDomain: this.opts.trustDomain, deviceId: this.opts.deviceId, ...(this.opts.hostName ? { hostName: this.opts.hostName } : {}) },
      publicKey: pub,
      issuer: { certificate: new x509.X509Certificate(edgeCaPem), signingKey: await this.signingKey(edgeCaLabel), crypto: this.crypto },
      lifetimeSeconds: this.opts.hubLifetimeSeconds,
      ...(this.opts.now ? { notBefore: new Date(this.now().getTime() - 300_000) } : {}),
    });
    return pemOf(cert);
  }

  /**
   * Provisioning: device and Edge CA keys generated in the HSM (never extractable), CSRs enrolled with the bootstrap
   * token, the edge hub server certificate issued by the new Edge CA, everything committed as one generation.
   */
  async provision(bootstrapToken: string, opts: { force?: boolean } = {}): Promise<IdentityState> {
    const prev = this.store.load();
    if (prev && !opts.force) {
      throw new EdgeTrustError("CONFLICT", `device ${prev.deviceId} is already provisioned (generation ${prev.generation})`, { hint: "use --force to enroll again with new keys" });
    }
    const labels = {
      device: prev ? nextLabel(prev.keys.device) : BASE_LABELS.device,
      edgeCa: prev ? nextLabel(prev.keys.edgeCa) : BASE_LABELS.edgeCa,
    };
    const ca = new CaClient(this.opts.caUrl, this.opts.caTrust);
    const bundle = splitPems((await ca.trustBundle()).body);
    if (bundle.length === 0) throw new EdgeTrustError("DEVICE_ENROLL_FAILED", "the CA served an empty trust bundle");
    await this.freshKey(labels.device);
    await this.freshKey(labels.edgeCa);
    try {
      await this.opts.keys.getKey({ label: this.opts.hubKeyLabel });
    } catch (e) {
      if (!isEdgeTrustError(e, "HSM_KEY_NOT_FOUND")) throw e;
      await this.opts.keys.generateKey(this.opts.hubKeyLabel, this.opts.keyAlgorithm);
    }
    const dev = await ca.enroll(bootstrapToken, { csr: await this.csr(labels.device, this.opts.deviceId), profile: "device-identity", deviceId: this.opts.deviceId });
    const device = await this.checkIssued(dev.body, labels.device, bundle);
    const edge = await ca.enroll(bootstrapToken, { csr: await this.csr(labels.edgeCa, `${this.opts.deviceId} Edge CA`), profile: "edge-ca", deviceId: this.opts.deviceId });
    const edgeCa = await this.checkIssued(edge.body, labels.edgeCa, bundle);
    const hub = await this.issueHub(edgeCa.cert, labels.edgeCa);
    const state = this.store.commit({
      deviceId: this.opts.deviceId, trustDomain: this.opts.trustDomain,
      keys: { ...labels, hub: this.opts.hubKeyLabel },
      device, edgeCa: { ...edgeCa, previous: [] }, hub: { cert: hub }, caBundle: bundle,
    });
    this.state = state;
    if (prev) await this.retireKeys([prev.keys.device, prev.keys.edgeCa], state);
    this.opts.log.info({ deviceId: this.opts.deviceId, generation: state.generation, notAfter: new x509.X509Certificate(device.cert).notAfter.toISOString() }, "device provisioned");
    return state;
  }

  private get pendingFile(): string {
    return join(this.opts.stateDir, "registration.pending.json");
  }

  /**
   * Registration step 1: the device and Edge CA keys in the HSM and the CSRs, recorded in `registration.pending.json`
   * so every retry sends the very same request under the same idempotency key (a crash or a lost answer is safe).
   * Returns the device public key (PEM SPKI) a factory line enrolls for `publicKey` enrollments.
   */
  async prepareRegistration(opts: { force?: boolean } = {}): Promise<PendingRegistration & { devicePublicKeyPem: string }> {
    const prev = this.store.load();
    if (prev && !opts.force) {
      throw new EdgeTrustError("CONFLICT", `device ${prev.deviceId} is already provisioned (generation ${prev.generation})`, { hint: "use --force to enroll again with new keys" });
    }
    let pending: PendingRegistration | undefined;
    if (existsSync(this.pendingFile)) {
      pending = JSON.parse(readFileSync(this.pendingFile, "utf8")) as PendingRegistration;
      try {
        await this.opts.keys.getKey({ label: pending.labels.device });
        await this.opts.keys.getKey({ label: pending.labels.edgeCa });
      } catch {
        pending = undefined; // keys gone: start over
      }
    }
    if (!pending) {
      const labels = { device: prev ? nextLabel(prev.keys.device) : BASE_LABELS.device, edgeCa: prev ? nextLabel(prev.keys.edgeCa) : BASE_LABELS.edgeCa };
      await this.freshKey(labels.device);
      await this.freshKey(labels.edgeCa);
      pending = {
        idempotencyKey: randomUUID(), labels,
        csr: await this.csr(labels.device, this.opts.deviceId), edgeCaCsr: await this.csr(labels.edgeCa, `${this.opts.deviceId} Edge CA`),
      };
      mkdirSync(this.opts.stateDir, { recursive: true, mode: 0o700 });
      writeFileAtomic(this.pendingFile, JSON.stringify(pending, null, 2));
    }
    const spki = (await this.opts.keys.getPublicKey({ label: pending.labels.device })).spki;
    return { ...pending, devicePublicKeyPem: x509.PemConverter.encode(new Uint8Array(spki).buffer, "PUBLIC KEY") };
  }

  /**
   * Provisioning through the enrollment API's registration route: keys from `prepareRegistration`, the bootstrap
   * credential (`basicSecret`: the derived/individual key; none for a publicKey enrollment, where the CSR key itself
   * is the credential), identity + Edge CA certificates and the trust bundle in one answer, committed as a generation.
   */
  async register(opts: { basicSecret?: string; force?: boolean } = {}): Promise<IdentityState> {
    const prev = this.store.load();
    const pending = await this.prepareRegistration(opts);
    const ca = new CaClient(this.opts.caUrl, this.opts.caTrust);
    const { body } = await ca.register(this.opts.deviceId, pending.idempotencyKey, { csr: pending.csr, edgeCaCsr: pending.edgeCaCsr }, opts.basicSecret);
    if (!body.edgeCa) throw new EdgeTrustError("DEVICE_ENROLL_FAILED", `the enrollment of ${this.opts.deviceId} issues no Edge CA certificate`, { hint: "enroll the device with edgeCa: true" });
    const bundle = splitPems(body.trustBundlePem);
    if (bundle.length === 0) throw new EdgeTrustError("DEVICE_ENROLL_FAILED", "the registration answer carries no trust bundle");
    const asIssued = (x: { serial: string; notAfter: string; certificatePem: string; chainPem: string }): Issued => ({ ...x, profile: "", issuerId: "" });
    const device = await this.checkIssued(asIssued(body.identity), pending.labels.device, bundle);
    const edgeCa = await this.checkIssued(asIssued(body.edgeCa), pending.labels.edgeCa, bundle);
    await this.ensureHubKey();
    const hub = await this.issueHub(edgeCa.cert, pending.labels.edgeCa);
    const state = this.store.commit({
      deviceId: this.opts.deviceId, trustDomain: this.opts.trustDomain, keys: { ...pending.labels, hub: this.opts.hubKeyLabel },
      device, edgeCa: { ...edgeCa, previous: [] }, hub: { cert: hub }, caBundle: bundle,
    });
    this.state = state;
    rmSync(this.pendingFile, { force: true });
    if (prev) await this.retireKeys([prev.keys.device, prev.keys.edgeCa], state);
    this.opts.log.info({ deviceId: this.opts.deviceId, generation: state.generation, route: "registration" }, "device provisioned");
    return state;
  }

  private async ensureHubKey(): Promise<void> {
    try {
      await this.opts.keys.getKey({ label: this.opts.hubKeyLabel });
    } catch (e) {
      if (!isEdgeTrustError(e, "HSM_KEY_NOT_FOUND")) throw e;
      await this.opts.keys.generateKey(this.opts.hubKeyLabel, this.opts.keyAlgorithm);
    }
  }

  /** Erase keys the committed state no longer uses (only ever after the commit). */
  private async retireKeys(labels: string[], state: IdentityState): Promise<void> {
    const inUse = new Set(Object.values(state.keys));
    for (const label of labels) {
      if (inUse.has(label)) continue;
      try {
        await this.opts.keys.delete({ label });
        this.signingKeys.delete(label);
        this.opts.log.info({ label }, "old key erased after its replacement was stored");
      } catch (e) {
        this.opts.log.warn({ label, err: (e as Error).message }, "could not erase the old key");
      }
    }
  }

  /** Where each certificate stands now. */
  assess(now = this.now()): Record<CertKind, Assessment> {
    const s = this.current();
    const pct = this.opts.renewAtPercent;
    return {
      device: assessCertificate(new x509.X509Certificate(s.device.cert), now, pct.device),
      "edge-ca": assessCertificate(new x509.X509Certificate(s.edgeCa.cert), now, pct.edgeCa),
      hub: assessCertificate(new x509.X509Certificate(s.hub.cert), now, pct.hub),
    };
  }

  /** A clock problem seen at the last check, if any (status, and module issuance refuses while it lasts). */
  clockStatus(): string | undefined {
    return this.clockProblem;
  }

  /** Serialise state changes: one renewal at a time. */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.busy.then(fn, fn);
    this.busy = run.catch(() => undefined);
    return run;
  }

  /** Renew one certificate now (rekey = new HSM key, created before the old one is retired). */
  renew(kind: CertKind, rekey = this.opts.rotateKeys): Promise<IdentityState> {
    return this.exclusive(() => this.renewNow(kind, rekey));
  }

  private async renewNow(kind: CertKind, rekey: boolean): Promise<IdentityState> {
    const s = this.current();
    if (kind === "hub") {
      const hub = await this.issueHub(s.edgeCa.cert, s.keys.edgeCa);
      return this.commit({ ...s, hub: { cert: hub } }, ["hub"], []);
    }
    const isDevice = kind === "device";
    const label = isDevice ? s.keys.device : s.keys.edgeCa;
    const curPem = isDevice ? s.device.cert : s.edgeCa.cert;
    const curChain = isDevice ? s.device.chain : s.edgeCa.chain;
    const newLabel = rekey ? nextLabel(label) : label;
    if (rekey) await this.freshKey(newLabel);
    const ca = this.ca();
    const csr = await this.csr(newLabel, isDevice ? this.opts.deviceId : `${this.opts.deviceId} Edge CA`);
    const attestationResult = this.opts.attestationForRenewal ? await this.opts.attestationForRenewal(ca) : undefined;
    const res = await ca.renew(
      { certChainPem: [curPem, ...curChain].join(""), key: await this.opts.tlsKey(label) },
      { csr, ...(attestationResult ? { attestationResult } : {}) },
    );
    const clock = clockDisagreement(this.now(), res.date);
    let bundle = s.caBundle;
    try {
      bundle = splitPems((await ca.trustBundle()).body);
    } catch (e) {
      this.opts.log.warn({ err: (e as Error).message }, "trust bundle refresh failed; keeping the stored one");
    }
    const issued = await this.checkIssued(res.body, newLabel, bundle);
    let next: Omit<IdentityState, "generation" | "updatedAt" | "version">;
    const changed: CertKind[] = [kind];
    if (isDevice) {
      next = { ...s, caBundle: bundle, keys: { ...s.keys, device: newLabel }, device: issued };
    } else {
      // Overlap: the old Edge CA stays trusted (bundle, hub) until it expires; new module certs come from the new one.
      const previous = [s.edgeCa.cert, ...s.edgeCa.previous].filter((p) => new x509.X509Certificate(p).notAfter > this.now());
      const hub = await this.issueHub(issued.cert, newLabel);
      next = { ...s, caBundle: bundle, keys: { ...s.keys, edgeCa: newLabel }, edgeCa: { ...issued, previous }, hub: { cert: hub } };
      changed.push("hub");
    }
    const state = await this.commit(next, changed, rekey ? [label] : []);
    const after = assessCertificate(new x509.X509Certificate(isDevice ? state.device.cert : state.edgeCa.cert), this.now(), 1);
    if (clock || after.status === "expired" || after.status === "clock-behind") {
      this.clockProblem = clock ?? `a certificate issued just now is not valid at the device's time ${this.now().toISOString()}: the device clock is wrong`;
      if (after.status === "expired") this.clockAhead = this.clockProblem;
      this.opts.log.error({ kind, problem: this.clockProblem }, "device clock disagrees with the CA");
    } else {
      this.clockAhead = undefined;
    }
    this.opts.log.info({ kind, rekey, serial: new x509.X509Certificate(issued.cert).serialNumber, generation: state.generation }, "certificate renewed");
    return state;
  }

  private async commit(next: Omit<IdentityState, "generation" | "updatedAt" | "version">, changed: CertKind[], retire: string[]): Promise<IdentityState> {
    const { generation: _g, updatedAt: _u, version: _v, ...rest } = next as IdentityState;
    const state = this.store.commit(rest);
    this.state = state;
    // Only now, with the new certificate stored, may the old key go.
    await this.retireKeys(retire, state);
    for (const l of this.listeners) {
      try {
        await l(state, changed);
      } catch (e) {
        this.opts.log.error({ err: (e as Error).message }, "identity change listener failed");
      }
    }
    return state;
  }

  /**
   * One pass of the renewal schedule: renew what is due (or expired), back off after failures, never act on a clock
   * that reads earlier than our certificates. Returns how long to wait before the next pass.
   */
  async check(maxWaitMs: number): Promise<number> {
    return this.exclusive(async () => {
      const now = this.now();
      const assessed = this.assess(now);
      let wait = maxWaitMs;
      let clock: string | undefined;
      for (const kind of CERT_KINDS) {
        const a = assessed[kind];
        if (a.status === "clock-behind") {
          clock = a.detail;
          continue;
        }
        if (a.status === "valid") {
          wait = Math.min(wait, Math.max(1000, a.renewAt.getTime() - now.getTime()));
          continue;
        }
        if (kind === "hub" && (assessed["edge-ca"].status !== "valid" && assessed["edge-ca"].status !== "due" || a.notAfter.getTime() >= assessed["edge-ca"].notAfter.getTime() - 60_000)) {
          // The hub certificate is issued by the Edge CA and never outlives it: reissuing now would not extend it.
          // It is reissued with the Edge CA's renewal.
          continue;
        }
        if (a.status === "expired" && this.clockAhead) {
          // The CA already told us our clock is ahead of its own: renewing again would only loop. Report, wait.
          clock = this.clockAhead;
          continue;
        }
        const f = this.failures.get(kind);
        if (f && f.retryAt > now.getTime()) {
          wait = Math.min(wait, f.retryAt - now.getTime());
          continue;
        }
        const fail = (error: string, permanent: boolean, hsm: boolean): void => {
          const count = (f?.count ?? 0) + 1;
          const delay = permanent ? this.opts.retryMaxMs : backoffMs(count, this.opts.retryInitialMs, this.opts.retryMaxMs);
          this.failures.set(kind, { count, retryAt: now.getTime() + delay, error, ...(hsm ? { hsm } : {}) });
          wait = Math.min(wait, delay);
          this.opts.log.warn({ kind, attempt: count, retryInSeconds: Math.round(delay / 1000), err: error, permanent }, "renewal failed; serving with the current certificate and retrying");
        };
        const hsm = this.opts.hsmProblem?.();
        if (hsm) {
          // No key operation can succeed: do not call the CA with a renewal that cannot be signed; back off.
          fail(`the HSM is unavailable: ${hsm}`, false, true);
          continue;
        }
        if (a.status === "expired") this.opts.log.error({ kind, notAfter: a.notAfter.toISOString() }, "certificate expired; renewing (the CA accepts renewals for a while after expiry)");
        try {
          await this.renewNow(kind, this.opts.rotateKeys && kind !== "hub");
          this.failures.delete(kind);
        } catch (e) {
          fail((e as Error).message, isPermanentCaRefusal(e), Boolean(this.opts.hsmProblem?.()));
        }
      }
      if (clock && clock !== this.clockProblem) this.opts.log.error({ problem: clock }, "device clock is wrong: not renewing, still serving with the stored certificates");
      if (clock) this.clockProblem = clock;
      else if (this.clockProblem && Object.values(this.assess()).every((a) => a.status === "valid" || a.status === "due")) {
        this.clockProblem = undefined;
        this.clockAhead = undefined;
      }
      return wait;
    });
  }

  /** The HSM works again: renewals that waited for it are retried at the next pass instead of after their backoff. */
  hsmRecovered(): void {
    for (const f of this.failures.values()) if (f.hsm) f.retryAt = 0;
  }

  status(): { deviceId: string; generation: number; clock?: string; certificates: KindStatus[] } {
    const s = this.current();
    const a = this.assess();
    const certs: [CertKind, string, string][] = [["device", s.device.cert, s.keys.device], ["edge-ca", s.edgeCa.cert, s.keys.edgeCa], ["hub", s.hub.cert, s.keys.hub]];
    return {
      deviceId: s.deviceId,
      generation: s.generation,
      ...(this.clockProblem ? { clock: this.clockProblem } : {}),
      certificates: certs.map(([kind, pem, keyLabel]) => {
        const c = new x509.X509Certificate(pem);
        const f = this.failures.get(kind);
        return {
          kind, serial: c.serialNumber, notBefore: c.notBefore.toISOString(), notAfter: c.notAfter.toISOString(), renewAt: a[kind].renewAt.toISOString(),
          status: a[kind].status, keyLabel, failures: f?.count ?? 0,
          ...(f ? { nextRetryAt: new Date(f.retryAt).toISOString(), lastError: f.error } : {}),
        };
      }),
    };
  }

  /** The Edge CA as the module issuer uses it. */
  async edgeCa(): Promise<EdgeCa> {
    const s = this.current();
    const cert = new x509.X509Certificate(s.edgeCa.cert);
    return { certificate: cert, signingKey: await this.signingKey(s.keys.edgeCa), crypto: this.crypto, chain: [cert, ...s.edgeCa.chain.map((p) => new x509.X509Certificate(p))] };
  }

  /** Refuse module issuance while the clock is known to be wrong or the Edge CA is unusable; says why. */
  assertCanIssue(m: AttestedModule): void {
    const a = this.assess()["edge-ca"];
    if (a.status === "clock-behind") throw new EdgeTrustError("DEVICE_CLOCK_INVALID", `no certificate for module ${m.name} now: ${a.detail}`, { hint: "fix the device clock (NTP); the daemon retries by itself" });
    if (a.status === "expired") throw new EdgeTrustError("UNAVAILABLE", `no certificate for module ${m.name} now: the Edge CA expired on ${a.notAfter.toISOString()} and is being renewed`, { hint: "the device needs to reach the CA" });
  }

  trustBundle(): string[] {
    return trustBundle(this.current(), this.now());
  }

  edgeCaCertificates(): string[] {
    return edgeCaCertificates(this.current(), this.now());
  }

  deviceUri(): string {
    return deviceUri(this.opts.trustDomain, this.opts.deviceId);
  }
}
