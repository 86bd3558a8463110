import { randomUUID } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { EdgeTrustError, writeFileAtomic } from "../common/index.js";
import { CaClient, type Issued } from "./ca-client.js";
import type { IdentityOptions } from "./identity-options.js";
import { BASE_LABELS, nextLabel, type IdentityKeys } from "./identity-keys.js";
import { splitPems, type IdentityState, type StateStore } from "./state.js";

/** A registration in flight (keys made, request fixed), kept until its answer is stored. */
export interface PendingRegistration {
  idempotencyKey: string;
  labels: { device: string; edgeCa: string };
  csr: string;
  edgeCaCsr: string;
}

/** What provisioning needs of the identity: its settings, keys and store, and where the new state goes. */
export interface ProvisioningContext {
  opts: IdentityOptions;
  store: StateStore;
  keys: IdentityKeys;
  /** The edge hub's server certificate, issued by the Edge CA under `edgeCaLabel`. */
  issueHub(edgeCaPem: string, edgeCaLabel: string, hubLabel: string): Promise<string>;
  /** The committed state is now the identity in force. */
  adopt(state: IdentityState): void;
}

function refuseIfProvisioned(prev: IdentityState | undefined, force: boolean | undefined): void {
  if (prev && !force) {
    throw new EdgeTrustError("CONFLICT", `device ${prev.deviceId} is already provisioned (generation ${prev.generation})`, { hint: "use --force to enroll again with new keys" });
  }
}

/**
 * The hub server key a (re-)provisioning keeps: the one the previous generation's hub certificate carries when it is
 * one of the configured label's two slots (a rotated hub key sits under `<label>.1`), else the configured label.
 */
function hubLabel(prev: IdentityState | undefined, configured: string): string {
  return prev && (prev.keys.hub === configured || prev.keys.hub === nextLabel(configured)) ? prev.keys.hub : configured;
}

function nextLabels(prev: IdentityState | undefined): { device: string; edgeCa: string } {
  return { device: prev ? nextLabel(prev.keys.device) : BASE_LABELS.device, edgeCa: prev ? nextLabel(prev.keys.edgeCa) : BASE_LABELS.edgeCa };
}

/**
 * Provisioning: device and Edge CA keys generated in the HSM (never extractable), CSRs enrolled with the bootstrap
 * token, the edge hub server certificate issued by the new Edge CA, everything committed as one generation.
 */
export async function provision(ctx: ProvisioningContext, bootstrapToken: string, opts: { force?: boolean } = {}): Promise<IdentityState> {
  const { opts: o, keys } = ctx;
  const prev = ctx.store.load();
  refuseIfProvisioned(prev, opts.force);
  const labels = nextLabels(prev);
  const ca = new CaClient(o.caUrl, o.caTrust);
  const bundle = splitPems((await ca.trustBundle()).body);
  if (bundle.length === 0) throw new EdgeTrustError("DEVICE_ENROLL_FAILED", "the CA served an empty trust bundle");
  await keys.fresh(labels.device, prev);
  await keys.fresh(labels.edgeCa, prev);
  const hub0 = hubLabel(prev, o.hubKeyLabel);
  await keys.ensure(hub0);
  const dev = await ca.enroll(bootstrapToken, { csr: await keys.csr(labels.device, o.deviceId), profile: "device-identity", deviceId: o.deviceId });
  const device = await keys.checkIssued(dev.body, labels.device, bundle);
  const edge = await ca.enroll(bootstrapToken, { csr: await keys.csr(labels.edgeCa, `${o.deviceId} Edge CA`), profile: "edge-ca", deviceId: o.deviceId });
  const edgeCa = await keys.checkIssued(edge.body, labels.edgeCa, bundle);
  const hub = await ctx.issueHub(edgeCa.cert, labels.edgeCa, hub0);
  const state = ctx.store.commit({
    deviceId: o.deviceId, trustDomain: o.trustDomain,
    keys: { ...labels, hub: hub0 },
    device, edgeCa: { ...edgeCa, previous: [] }, hub: { cert: hub }, caBundle: bundle,
  });
  ctx.adopt(state);
  await keys.retire(prev ? [prev.keys.device, prev.keys.edgeCa] : [], state);
  keys.forgetKept(state);
  o.log.info({ deviceId: o.deviceId, generation: state.generation, notAfter: new x509.X509Certificate(device.cert).notAfter.toISOString() }, "device provisioned");
  return state;
}

function pendingFile(o: IdentityOptions): string {
  return join(o.stateDir, "registration.pending.json");
}

/**
 * Registration step 1: the device and Edge CA keys in the HSM and the CSRs, recorded in `registration.pending.json`
 * so every retry sends the very same request under the same idempotency key (a crash or a lost answer is safe).
 * Returns the device public key (PEM SPKI) a factory line enrolls for `publicKey` enrollments.
 */
export async function prepareRegistration(ctx: ProvisioningContext, opts: { force?: boolean } = {}): Promise<PendingRegistration & { devicePublicKeyPem: string }> {
  const { opts: o, keys } = ctx;
  const prev = ctx.store.load();
  refuseIfProvisioned(prev, opts.force);
  const file = pendingFile(o);
  let pending: PendingRegistration | undefined;
  if (existsSync(file)) {
    pending = JSON.parse(readFileSync(file, "utf8")) as PendingRegistration;
    try {
      await o.keys.getKey({ label: pending.labels.device });
      await o.keys.getKey({ label: pending.labels.edgeCa });
    } catch {
      pending = undefined; // keys gone: start over
    }
  }
  if (!pending) {
    const labels = nextLabels(prev);
    await keys.fresh(labels.device, prev);
    await keys.fresh(labels.edgeCa, prev);
    pending = {
      idempotencyKey: randomUUID(), labels,
      csr: await keys.csr(labels.device, o.deviceId), edgeCaCsr: await keys.csr(labels.edgeCa, `${o.deviceId} Edge CA`),
    };
    mkdirSync(o.stateDir, { recursive: true, mode: 0o700 });
    writeFileAtomic(file, JSON.stringify(pending, null, 2));
  }
  const spki = (await o.keys.getPublicKey({ label: pending.labels.device })).spki;
  return { ...pending, devicePublicKeyPem: x509.PemConverter.encode(new Uint8Array(spki).buffer, "PUBLIC KEY") };
}

/**
 * Provisioning through the enrollment API's registration route: keys from `prepareRegistration`, the bootstrap
 * credential (`basicSecret`: the derived/individual key; none for a publicKey enrollment, where the CSR key itself
 * is the credential), identity + Edge CA certificates and the trust bundle in one answer, committed as a generation.
 */
export async function register(ctx: ProvisioningContext, opts: { basicSecret?: string; force?: boolean } = {}): Promise<IdentityState> {
  const { opts: o, keys } = ctx;
  const prev = ctx.store.load();
  const pending = await prepareRegistration(ctx, opts);
  const ca = new CaClient(o.caUrl, o.caTrust);
  const { body } = await ca.register(o.deviceId, pending.idempotencyKey, { csr: pending.csr, edgeCaCsr: pending.edgeCaCsr }, opts.basicSecret);
  if (!body.edgeCa) throw new EdgeTrustError("DEVICE_ENROLL_FAILED", `the enrollment of ${o.deviceId} issues no Edge CA certificate`, { hint: "enroll the device with edgeCa: true" });
  const bundle = splitPems(body.trustBundlePem);
  if (bundle.length === 0) throw new EdgeTrustError("DEVICE_ENROLL_FAILED", "the registration answer carries no trust bundle");
  const asIssued = (x: { serial: string; notAfter: string; certificatePem: string; chainPem: string }): Issued => ({ ...x, profile: "", issuerId: "" });
  const device = await keys.checkIssued(asIssued(body.identity), pending.labels.device, bundle);
  const edgeCa = await keys.checkIssued(asIssued(body.edgeCa), pending.labels.edgeCa, bundle);
  const hub0 = hubLabel(prev, o.hubKeyLabel);
  await keys.ensure(hub0);
  const hub = await ctx.issueHub(edgeCa.cert, pending.labels.edgeCa, hub0);
  const state = ctx.store.commit({
    deviceId: o.deviceId, trustDomain: o.trustDomain, keys: { ...pending.labels, hub: hub0 },
    device, edgeCa: { ...edgeCa, previous: [] }, hub: { cert: hub }, caBundle: bundle,
  });
  ctx.adopt(state);
  rmSync(pendingFile(o), { force: true });
  await keys.retire(prev ? [prev.keys.device, prev.keys.edgeCa] : [], state);
  keys.forgetKept(state);
  o.log.info({ deviceId: o.deviceId, generation: state.generation, route: "registration" }, "device provisioned");
  return state;
}
