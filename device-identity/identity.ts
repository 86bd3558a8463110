import "reflect-metadata";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { EdgeTrustError } from "../common/index.js";
import { deviceUri, issueCertificate } from "../pki/index.js";
import type { AttestedModule } from "./attested-modules.js";
import { CaClient } from "./ca-client.js";
import { ClockWatch } from "./clock-watch.js";
import type { CertKind, IdentityOptions, KindStatus } from "./identity-options.js";
import { IdentityKeys, KEPT_KEYS_FILE, PENDING_KEYS_FILE, nextLabel, pemOf } from "./identity-keys.js";
import type { EdgeCa } from "./module-issuer.js";
import { prepareRegistration, provision, register, type PendingRegistration, type ProvisioningContext } from "./provisioning.js";
import { assessCertificate, clockDisagreement, type Assessment } from "./renewal.js";
import { RenewalSchedule } from "./renewal-schedule.js";
import { StateStore, splitPems, trustBundle, edgeCaCertificates, type IdentityState } from "./state.js";

/**
 * The validity of a certificate in force, parsed once per PEM: every module certificate asks whether the Edge CA may
 * issue (`assertCanIssue`), and parsing the three certificates each time was the largest cost of a module certificate.
 */
const validities = new Map<string, { notBefore: Date; notAfter: Date }>();
function validityOf(pem: string): { notBefore: Date; notAfter: Date } {
  let v = validities.get(pem);
  if (!v) {
    const c = new x509.X509Certificate(pem);
    v = { notBefore: c.notBefore, notAfter: c.notAfter };
    // A few generations' worth: the map never grows with renewals.
    if (validities.size >= 16) validities.delete(validities.keys().next().value as string);
    validities.set(pem, v);
  }
  return v;
}

export type { IdentityOptions } from "./identity-options.js";

/**
 * The device's identity: keys in the HSM, certificates on disk (StateStore), provisioning, renewal with retries and
 * optional key rotation, the Edge CA that issues module and hub certificates. The state in force and every change to
 * it live here; the concerns sit beside it: provisioning and registration (provisioning.ts), the renewal schedule
 * (renewal-schedule.ts), the HSM keys and their rotation (identity-keys.ts), the clock checks (clock-watch.ts).
 */
export class DeviceIdentity {
  readonly store: StateStore;
  private state: IdentityState | undefined;
  private readonly keys: IdentityKeys;
  private readonly clock: ClockWatch;
  private readonly schedule: RenewalSchedule;
  private readonly provisioning: ProvisioningContext;
  private readonly listeners = new Set<(s: IdentityState, changed: CertKind[]) => void | Promise<void>>();
  private busy: Promise<unknown> = Promise.resolve();

  constructor(readonly opts: IdentityOptions) {
    this.store = new StateStore(opts.stateDir);
    this.keys = new IdentityKeys({ keys: opts.keys, keyAlgorithm: opts.keyAlgorithm, log: opts.log, pendingFile: join(opts.stateDir, PENDING_KEYS_FILE), keptFile: join(opts.stateDir, KEPT_KEYS_FILE) });
    this.clock = new ClockWatch(opts.log);
    this.schedule = new RenewalSchedule({
      opts,
      now: () => this.now(),
      assess: (now) => this.assess(now),
      renew: (kind, rekey) => this.renewNow(kind, rekey),
      clock: this.clock,
    });
    this.provisioning = {
      opts,
      store: this.store,
      keys: this.keys,
      issueHub: (pem, label, hubLabel) => this.issueHub(pem, label, hubLabel),
      adopt: (s) => {
        this.state = s;
      },
    };
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
        have = await this.keys.spki(label);
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

  /** Enroll with a bootstrap token (provisioning.ts). */
  provision(bootstrapToken: string, opts: { force?: boolean } = {}): Promise<IdentityState> {
    return provision(this.provisioning, bootstrapToken, opts);
  }

  /** Registration step 1: keys and the request, fixed for every retry (provisioning.ts). */
  prepareRegistration(opts: { force?: boolean } = {}): Promise<PendingRegistration & { devicePublicKeyPem: string }> {
    return prepareRegistration(this.provisioning, opts);
  }

  /** Provision through the enrollment API's registration route (provisioning.ts). */
  register(opts: { basicSecret?: string; force?: boolean } = {}): Promise<IdentityState> {
    return register(this.provisioning, opts);
  }

  private ca(): CaClient {
    return new CaClient(this.opts.caUrl, this.state ? this.state.caBundle : this.opts.caTrust);
  }

  private async issueHub(edgeCaPem: string, edgeCaLabel: string, hubLabel: string): Promise<string> {
    const pub = await this.keys.publicKey(hubLabel);
    const cert = await issueCertificate({
      profile: "edge-hub-server",
      subject: { commonName: "edgehub" },
      identity: { trustDomain: this.opts.trustDomain, deviceId: this.opts.deviceId, ...(this.opts.hostName ? { hostName: this.opts.hostName } : {}) },
      publicKey: pub,
      issuer: { certificate: new x509.X509Certificate(edgeCaPem), signingKey: await this.keys.signingKey(edgeCaLabel), crypto: this.keys.crypto },
      lifetimeSeconds: this.opts.hubLifetimeSeconds,
      ...(this.opts.now ? { notBefore: new Date(this.now().getTime() - 300_000) } : {}),
    });
    return pemOf(cert);
  }

  /** Where each certificate stands now. */
  assess(now = this.now()): Record<CertKind, Assessment> {
    const s = this.current();
    const pct = this.opts.renewAtPercent;
    return {
      device: assessCertificate(validityOf(s.device.cert), now, pct.device),
      "edge-ca": assessCertificate(validityOf(s.edgeCa.cert), now, pct.edgeCa),
      hub: assessCertificate(validityOf(s.hub.cert), now, pct.hub),
    };
  }

  /** A clock problem seen at the last check, if any (status, and module issuance refuses while it lasts). */
  clockStatus(): string | undefined {
    return this.clock.current();
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
      const hubLabel = await this.hubKeyFor(s, rekey);
      const hub = await this.issueHub(s.edgeCa.cert, s.keys.edgeCa, hubLabel);
      return this.commit({ ...s, keys: { ...s.keys, hub: hubLabel }, hub: { cert: hub } }, ["hub"], []);
    }
    const isDevice = kind === "device";
    const label = isDevice ? s.keys.device : s.keys.edgeCa;
    const curPem = isDevice ? s.device.cert : s.edgeCa.cert;
    const curChain = isDevice ? s.device.chain : s.edgeCa.chain;
    const newLabel = rekey ? nextLabel(label) : label;
    if (rekey) await this.keys.fresh(newLabel, s);
    const ca = this.ca();
    const csr = await this.keys.csr(newLabel, isDevice ? this.opts.deviceId : `${this.opts.deviceId} Edge CA`);
    const attestationResult = this.opts.attestationForRenewal ? await this.opts.attestationForRenewal(ca) : undefined;
    const res = await ca.renew(
      { certChainPem: [curPem, ...curChain].join(""), key: await this.opts.tlsKey(label) },
      { csr, ...(attestationResult ? { attestationResult } : {}) },
    );
    const caClock = clockDisagreement(this.now(), res.date);
    let bundle = s.caBundle;
    try {
      bundle = splitPems((await ca.trustBundle()).body);
    } catch (e) {
      this.opts.log.warn({ err: (e as Error).message }, "trust bundle refresh failed; keeping the stored one");
    }
    const issued = await this.keys.checkIssued(res.body, newLabel, bundle);
    let next: Omit<IdentityState, "generation" | "updatedAt" | "version">;
    const changed: CertKind[] = [kind];
    if (isDevice) {
      next = { ...s, caBundle: bundle, keys: { ...s.keys, device: newLabel }, device: issued };
    } else {
      // Overlap: the old Edge CA stays trusted (bundle, hub) until it expires; new module certs come from the new one.
      const previous = [s.edgeCa.cert, ...s.edgeCa.previous].filter((p) => new x509.X509Certificate(p).notAfter > this.now());
      // The hub certificate is reissued with every Edge CA renewal (it never outlives the Edge CA), so this is where
      // its key rotates in the schedule's course. A hub key that cannot be made does not hold up the Edge CA.
      const hubLabel = await this.hubKeyFor(s, rekey).catch((e: unknown) => {
        this.opts.log.warn({ label: nextLabel(s.keys.hub), err: (e as Error).message }, "could not make a new hub server key; the hub certificate keeps its current key");
        return s.keys.hub;
      });
      const hub = await this.issueHub(issued.cert, newLabel, hubLabel);
      next = { ...s, caBundle: bundle, keys: { ...s.keys, edgeCa: newLabel, hub: hubLabel }, edgeCa: { ...issued, previous }, hub: { cert: hub } };
      changed.push("hub");
    }
    const state = await this.commit(next, changed, rekey ? [label] : []);
    const after = assessCertificate(new x509.X509Certificate(isDevice ? state.device.cert : state.edgeCa.cert), this.now(), 1);
    this.clock.afterRenewal(kind, caClock, after, this.now());
    this.opts.log.info({ kind, rekey, serial: new x509.X509Certificate(issued.cert).serialNumber, generation: state.generation }, "certificate renewed");
    return state;
  }

  /**
   * The hub server key a hub certificate issued now carries. With `rekey`, a new key under the other label. The key
   * it replaces is *kept* (not retired at the commit as the device and Edge CA keys are): the hub goes on signing
   * handshakes with it until it reloads its certificate (5 s file poll or SIGHUP), and a module connecting in that
   * gap must not fail. It is erased right before the next rotation generates into its label — a renewal period later.
   */
  private async hubKeyFor(s: IdentityState, rekey: boolean): Promise<string> {
    if (!rekey) return s.keys.hub;
    const next = nextLabel(s.keys.hub);
    await this.keys.keepUntilReused(s.keys.hub);
    await this.keys.fresh(next, s);
    return next;
  }

  private async commit(next: Omit<IdentityState, "generation" | "updatedAt" | "version">, changed: CertKind[], retire: string[]): Promise<IdentityState> {
    const { generation: _g, updatedAt: _u, version: _v, ...rest } = next as IdentityState;
    const state = this.store.commit(rest);
    this.state = state;
    // Only now, with the new certificate stored, may the old key go.
    await this.keys.retire(retire, state);
    this.keys.forgetKept(state);
    for (const l of this.listeners) {
      try {
        await l(state, changed);
      } catch (e) {
        this.opts.log.error({ err: (e as Error).message }, "identity change listener failed");
      }
    }
    return state;
  }

  /** One pass of the renewal schedule (renewal-schedule.ts). Returns how long to wait before the next pass. */
  async check(maxWaitMs: number): Promise<number> {
    return this.exclusive(() => this.schedule.pass(maxWaitMs));
  }

  /** The HSM works again: renewals that waited for it are retried at the next pass instead of after their backoff. */
  hsmRecovered(): void {
    this.schedule.hsmRecovered();
  }

  status(): { deviceId: string; generation: number; clock?: string; certificates: KindStatus[] } {
    const s = this.current();
    const a = this.assess();
    const certs: [CertKind, string, string][] = [["device", s.device.cert, s.keys.device], ["edge-ca", s.edgeCa.cert, s.keys.edgeCa], ["hub", s.hub.cert, s.keys.hub]];
    const clock = this.clock.current();
    return {
      deviceId: s.deviceId,
      generation: s.generation,
      ...(clock ? { clock } : {}),
      certificates: certs.map(([kind, pem, keyLabel]) => {
        const c = new x509.X509Certificate(pem);
        const f = this.schedule.failure(kind);
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
    return { certificate: cert, signingKey: await this.keys.signingKey(s.keys.edgeCa), crypto: this.keys.crypto, chain: [cert, ...s.edgeCa.chain.map((p) => new x509.X509Certificate(p))] };
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
