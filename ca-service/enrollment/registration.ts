import "reflect-metadata";
import type { X509Certificate as NodeX509 } from "node:crypto";
import { EdgeTrustError, isEdgeTrustError } from "../../common/index.js";
import { verifyCsr, type VerifiedCsr } from "../../pki/index.js";
import type { CertificateAuthority, Issued } from "../ca.js";
import { sha256Hex } from "../store.js";
import { certValidAt, commonNameOf, deriveDeviceKey, parseSas, sameKey, signedBy, verifySas } from "./credentials.js";
import { checkRegistrationId, effectiveDnsNames, type EnrollmentProfile } from "./model.js";
import type { EnrollmentStore, RegistrationRecord } from "./store.js";
import { EkTrust } from "./ek-roots.js";
import { checkSentEk, TpmChallenges, type TpmChallenge, type TpmChallengeRequest, type TpmProof } from "./tpm.js";

/** How a device proves it may register (besides the CSR signature, always required). */
export type RegistrationCredential =
  /** Nothing besides the CSR: only an individual `publicKey` enrollment accepts this (the CSR key must be the enrolled key). */
  | { kind: "none" }
  /** The bootstrap certificate presented as the TLS client certificate (the handshake proved its key). */
  | { kind: "x509"; cert: NodeX509 }
  /** `Authorization: SharedAccessSignature sr=<idScope>/registrations/<id>&sig=...&se=...&skn=registration`. */
  | { kind: "sas"; header: string; idScope: string }
  /** HTTP Basic (EST): the password is the device key derived from its group key. */
  | { kind: "basic"; password: string }
  /** A `tpm` enrollment: the answer to a challenge from `tpmChallenge` (activated secret + the AK's certify of the CSR key). */
  | { kind: "tpm"; proof: TpmProof };

type RegistrationChannel = "api" | "est" | "dps";

interface RegisterInput {
  registrationId: string;
  /** PKCS#10 PEM for the device identity key (the device's HSM key). */
  csr: string;
  /** PKCS#10 PEM for the Edge CA key, when the enrollment issues an Edge CA. */
  edgeCaCsr?: string;
  /** Same key + same request: the stored result comes back; a different key for a registered id is refused. */
  idempotencyKey: string;
  credential: RegistrationCredential;
  channel: RegistrationChannel;
  /** Issue only the identity certificate even when the enrollment has an Edge CA (EST simpleenroll returns one certificate). */
  identityOnly?: boolean;
}

/** One issued certificate in a registration result. */
export interface IssuedCertificate {
  serial: string;
  notAfter: string;
  certificatePem: string;
  /** Leaf, then the issuing CA. */
  chainPem: string;
}

/** What a device receives from a registration (own API, DPS `registrationState.payload`). */
export interface RegistrationResult {
  registrationId: string;
  deviceId: string;
  status: "assigned";
  operationId: string;
  assignedAt: string;
  enrollment: { kind: "individual" | "group"; id: string; attestation: string };
  identity: IssuedCertificate;
  edgeCa: IssuedCertificate | null;
  /** Roots and every issuing CA (PEM): what the device trusts. */
  trustBundlePem: string;
  labels: Record<string, string>;
}

interface Resolved {
  kind: "individual" | "group";
  id: string;
  attestation: string;
  profile: EnrollmentProfile;
  lifetimeDays: number | null;
  edgeCa: boolean;
  dnsNames: string[];
  labels: Record<string, string>;
  /** publicKey enrollments: the CSR's SPKI must hash to this. */
  requiredSpkiSha256?: string;
  /** tpm enrollments: the proof to check against the CSR, and the enrolled EK's SPKI sha256. */
  tpm?: { proof: TpmProof; ekSha256: string };
  /** Set when the enrollment is disabled: thrown only once the credential (for publicKey: the CSR key) authenticated. */
  refusal?: EdgeTrustError;
}

const CREDENTIAL_NAMES: Record<RegistrationCredential["kind"], string> = {
  none: "no credential", x509: "a TLS client certificate", sas: "a SAS token", basic: "a Basic password", tpm: "a TPM proof",
};

function unauth(message: string, hint?: string): EdgeTrustError {
  return new EdgeTrustError("UNAUTHENTICATED", message, hint ? { hint } : {});
}

function disabled(what: string): EdgeTrustError {
  return new EdgeTrustError("ENROLLMENT_DISABLED", `${what} is disabled`, { hint: "ask the provisioning line or an admin to enable it" });
}

function certValidNow(cert: NodeX509): boolean {
  const now = Date.now();
  return Date.parse(cert.validFrom) <= now && Date.parse(cert.validTo) >= now;
}

function view(i: Issued): IssuedCertificate {
  return { serial: i.record.serial, notAfter: i.record.notAfter, certificatePem: i.record.certPem, chainPem: i.chainPem };
}

/**
 * Device registration, shared by the JSON API, EST and the DPS-compatible route: authenticate the bootstrap
 * credential against the enrollment (individual first, then groups), check the CSR, claim the registration id with
 * the idempotency key, write the device record, issue the identity (and Edge CA) certificate, record the result.
 */
export class RegistrationService {
  /** Outstanding TPM challenges: share one instance between the challenge route and registration. */
  readonly tpmChallenges: TpmChallenges;

  /** The TPM manufacturer roots EK certificates must chain to; none given: every TPM attestation is refused. */
  readonly ekTrust: EkTrust;

  constructor(readonly ca: CertificateAuthority, readonly enrollments: EnrollmentStore, tpmChallenges?: TpmChallenges, ekTrust?: EkTrust) {
    this.tpmChallenges = tpmChallenges ?? new TpmChallenges(ca.store.db);
    this.ekTrust = ekTrust ?? EkTrust.none();
  }

  /**
   * Step 1 of a TPM registration: the device names its EK and AK; the EK must be the enrolled one, the AK a restricted
   * signing key that never leaves the TPM. Answers a secret sealed to the EK for the AK (tpm2_makecredential).
   */
  async tpmChallenge(registrationId: string, req: TpmChallengeRequest, source?: string): Promise<TpmChallenge> {
    const id = checkRegistrationId(registrationId);
    const ind = await this.enrollments.getIndividual(id);
    if (!ind || ind.attestation !== "tpm") throw unauth(`no TPM enrollment for registration id ${id}`, "enroll the device's endorsement key (attestation tpm)");
    checkSentEk(req.ekPub, Buffer.from(ind.credential, "base64"));
    await this.ekTrust.check(req.ekCert, Buffer.from(ind.credential, "base64"));
    const challenge = await this.tpmChallenges.create(id, Buffer.from(ind.credential, "base64"), req, source);
    if (ind.status !== "enabled") throw disabled(`enrollment ${id}`);
    return challenge;
  }

  /** Which registration id a bootstrap certificate stands for (EST without a path id): individual by fingerprint, else its CN. */
  async registrationIdForCertificate(cert: NodeX509): Promise<string> {
    const ind = await this.enrollments.findIndividualByCredential(sha256Hex(new Uint8Array(cert.raw)));
    if (ind && ind.attestation === "x509") return ind.registrationId;
    const cn = commonNameOf(cert);
    if (!cn) throw unauth("the bootstrap certificate has no CN naming the registration id");
    return checkRegistrationId(cn);
  }

  /** Authenticate a credential for a registration id (also used by DPS operation polls); returns the enrollment it matched. */
  async authenticate(registrationId: string, cred: RegistrationCredential): Promise<{ kind: "individual" | "group"; id: string; labels: Record<string, string> }> {
    const r = await this.resolve(checkRegistrationId(registrationId), cred);
    if (r.requiredSpkiSha256 || r.tpm) throw unauth("this enrollment authenticates with its CSR (and TPM proof) only at registration");
    if (r.refusal) throw r.refusal;
    return { kind: r.kind, id: r.id, labels: r.labels };
  }

  private async resolve(registrationId: string, cred: RegistrationCredential): Promise<Resolved> {
    const ind = await this.enrollments.getIndividual(registrationId);
    if (ind) {
      let required: string | undefined;
      let tpmCheck: Resolved["tpm"];
      if (ind.attestation === "x509") {
        if (cred.kind !== "x509") throw unauth("this enrollment needs the bootstrap certificate as the TLS client certificate");
        if (sha256Hex(new Uint8Array(cred.cert.raw)) !== ind.credentialSha256) throw unauth("the client certificate is not the enrolled bootstrap certificate");
        if (!certValidNow(cred.cert)) throw unauth("the bootstrap certificate is expired or not yet valid");
      } else if (ind.attestation === "tpm") {
        if (cred.kind !== "tpm") throw unauth("this enrollment registers with a TPM proof", "POST /v1/registrations/{id}/tpm-challenge, then send the answer in the registration's tpm field");
        tpmCheck = { proof: cred.proof, ekSha256: ind.credentialSha256 };
      } else {
        // The CSR alone authenticates a publicKey enrollment; a SAS, Basic password or certificate presented with it
        // could not be verified against anything, so it is refused rather than ignored (a forged SAS is not "extra").
        if (cred.kind !== "none") throw unauth(`${CREDENTIAL_NAMES[cred.kind]} was presented, but enrollment ${registrationId} authenticates with its enrolled public key (the CSR) only`, "send only the CSR signed by the enrolled key");
        required = ind.credentialSha256;
      }
      const refusal = ind.status !== "enabled" ? disabled(`enrollment ${registrationId}`) : undefined;
      if (refusal && !required && !tpmCheck) throw refusal;
      return {
        ...(refusal ? { refusal } : {}),
        kind: "individual", id: ind.registrationId, attestation: ind.attestation, profile: ind.profile, lifetimeDays: ind.lifetimeDays, edgeCa: ind.edgeCa,
        dnsNames: effectiveDnsNames(registrationId, ind.dnsNames), labels: ind.labels, ...(required ? { requiredSpkiSha256: required } : {}), ...(tpmCheck ? { tpm: tpmCheck } : {}),
      };
    }
    const fromGroup = async (): Promise<Resolved> => {
      if (cred.kind === "x509") {
        const groups = await this.enrollments.listGroups({ attestation: "x509CA" });
        const g = groups.find((x) => x.caCertPem && signedBy(cred.cert, x.caCertPem));
        if (!g) throw unauth("the bootstrap certificate does not chain to a configured enrollment group CA");
        if (!certValidAt(cred.cert)) throw unauth(`the bootstrap certificate is expired or not yet valid (valid ${new Date(cred.cert.validFrom).toISOString()} to ${new Date(cred.cert.validTo).toISOString()})`, "the factory must issue a current bootstrap certificate");
        if (commonNameOf(cred.cert) !== registrationId) throw unauth("the bootstrap certificate's CN is not this registration id");
        if (g.status !== "enabled") throw disabled(`enrollment group ${g.id}`);
        return { kind: "group", id: g.id, attestation: "x509CA", profile: g.profile, lifetimeDays: g.lifetimeDays, edgeCa: g.edgeCa, dnsNames: effectiveDnsNames(registrationId, []), labels: g.labels };
      }
      if (cred.kind === "sas" || cred.kind === "basic") {
        const sas = cred.kind === "sas" ? parseSas(cred.header) : undefined;
        const groups = await this.enrollments.listGroups({ attestation: "symmetricKey" });
        let lastError: EdgeTrustError | undefined;
        // A group whose stored key does not unwrap (altered row) cannot vouch for anyone; the other groups still
        // can, and when none accepts the device the refusal names the damaged group rather than a wrong key.
        let refusedStore: EdgeTrustError | undefined;
        for (const g of groups) {
          let key: string | undefined;
          try {
            key = await this.enrollments.groupKey(g.id);
          } catch (e) {
            if (!isEdgeTrustError(e, "CA_STORE_REFUSED")) throw e;
            refusedStore ??= e;
            continue;
          }
          if (!key) continue;
          const deviceKey = deriveDeviceKey(key, registrationId);
          try {
            if (sas && cred.kind === "sas") verifySas(sas, { idScope: cred.idScope, registrationId, deviceKeyB64: deviceKey });
            else if (cred.kind === "basic" && !sameKey(cred.password, deviceKey)) throw unauth("the password is not this device's key");
          } catch (e) {
            if (!isEdgeTrustError(e, "UNAUTHENTICATED")) throw e;
            // sr and expiry failures are the same for every group: report them as they are.
            if (!/signature|password/.test(e.message)) throw e;
            lastError = e;
            continue;
          }
          if (g.status !== "enabled") throw disabled(`enrollment group ${g.id}`);
          return { kind: "group", id: g.id, attestation: "symmetricKey", profile: g.profile, lifetimeDays: g.lifetimeDays, edgeCa: g.edgeCa, dnsNames: effectiveDnsNames(registrationId, []), labels: g.labels };
        }
        throw refusedStore ?? lastError ?? unauth("no symmetric-key enrollment group accepts this key");
      }
      throw unauth(`no enrollment for registration id ${registrationId} accepts this credential`, "present the bootstrap certificate or a SAS token, or enroll the device's public key");
    };
    return fromGroup();
  }

  async register(input: RegisterInput): Promise<{ result: RegistrationResult; replayed: boolean }> {
    const registrationId = checkRegistrationId(input.registrationId);
    if (!/^[\x21-\x7e]{8,128}$/.test(input.idempotencyKey)) throw new EdgeTrustError("INVALID_INPUT", "Idempotency-Key must be 8..128 printable ASCII characters");
    const r = await this.resolve(registrationId, input.credential);
    const actor = `device:${registrationId} via ${input.channel}`;

    const profile = this.ca.profile(r.profile);
    const csr = await verifyCsr(input.csr, { allowedKeyAlgorithms: profile.allowedKeyAlgorithms });
    const spkiSha = sha256Hex(csr.spki);
    if (r.requiredSpkiSha256 && spkiSha !== r.requiredSpkiSha256) {
      throw unauth("the CSR's key is not the enrolled public key", "sign the CSR with the key that was enrolled");
    }
    if (r.tpm) {
      await this.tpmChallenges.verify(registrationId, r.tpm.ekSha256, r.tpm.proof, { pem: input.csr, spkiDer: Buffer.from(csr.publicKey.rawData) }, input.edgeCaCsr);
    }
    if (r.refusal) throw r.refusal;
    if (r.edgeCa && !input.edgeCaCsr && !input.identityOnly) throw new EdgeTrustError("INVALID_INPUT", "this enrollment issues an Edge CA: send edgeCaCsr too");
    if (!r.edgeCa && input.edgeCaCsr) throw new EdgeTrustError("INVALID_INPUT", "this enrollment does not issue an Edge CA certificate");
    let edgeCaCsr: VerifiedCsr | undefined;
    if (input.edgeCaCsr) {
      const e = edgeCaCsr = await verifyCsr(input.edgeCaCsr, { allowedKeyAlgorithms: this.ca.profile("edge-ca").allowedKeyAlgorithms });
      if (sha256Hex(e.spki) === spkiSha) throw new EdgeTrustError("PKI_PROFILE_VIOLATION", "the Edge CA key must differ from the device identity key");
    }

    const requestSha = sha256Hex(JSON.stringify([input.csr.trim(), input.edgeCaCsr?.trim() ?? null]));
    const source = `${r.kind}:${r.id}`;
    // The device record is written with the claim (one transaction): issuance reads subject and SANs from it.
    const claim = await this.enrollments.claimRegistration({
      registrationId, source, idempotencyKey: input.idempotencyKey, requestSha256: requestSha, actor,
      device: { deviceId: registrationId, kind: r.profile === "leaf-device" ? "leaf" : "device", commonName: registrationId.slice(0, 64), dnsNames: r.dnsNames },
    });
    if (!claim.fresh) return { result: await this.waitFor(claim.record), replayed: true };

    try {
      const lifetime = r.lifetimeDays ? { lifetimeSeconds: r.lifetimeDays * 86400 } : {};
      const identity = await this.ca.issue({ csrPem: input.csr, profile: r.profile, deviceId: registrationId, verifiedCsr: csr, ...lifetime }, actor, "cert.issue.registration");
      const edgeCa = input.edgeCaCsr ? await this.ca.issue({ csrPem: input.edgeCaCsr, profile: "edge-ca", deviceId: registrationId, ...(edgeCaCsr ? { verifiedCsr: edgeCaCsr } : {}), ...lifetime }, actor, "cert.issue.registration") : null;
      const result: RegistrationResult = {
        registrationId, deviceId: registrationId, status: "assigned", operationId: claim.operationId, assignedAt: new Date().toISOString(),
        enrollment: { kind: r.kind, id: r.id, attestation: r.attestation }, identity: view(identity), edgeCa: edgeCa ? view(edgeCa) : null,
        trustBundlePem: this.trustBundlePem(), labels: r.labels,
      };
      await this.enrollments.completeRegistration(registrationId, result, { source, channel: input.channel, identity: identity.record.serial, edgeCa: edgeCa?.record.serial ?? null }, actor);
      return { result, replayed: false };
    } catch (e) {
      await this.enrollments.failRegistration(registrationId, e instanceof Error ? e.message : String(e), actor).catch(() => undefined);
      throw e;
    }
  }

  private bundle: { certs: object[]; pem: string } | undefined;

  /**
   * The CA's trust bundle, re-encoded only when its certificates change (a rollover or reload loads new objects):
   * PEM-encoding every root and issuer through @peculiar/x509 on each registration was ~50 µs of the request.
   */
  private trustBundlePem(): string {
    const certs: object[] = [...this.ca.rootCertificates(), ...this.ca.issuers().map((c) => c.cert)];
    const b = this.bundle;
    if (b && b.certs.length === certs.length && b.certs.every((c, i) => c === certs[i])) return b.pem;
    const pem = this.ca.trustBundlePem();
    this.bundle = { certs, pem };
    return pem;
  }

  /** A replay of a registration still being processed by another request waits (briefly) for its result. */
  private async waitFor(rec: RegistrationRecord): Promise<RegistrationResult> {
    let cur: RegistrationRecord | undefined = rec;
    for (let i = 0; cur?.status === "assigning" && i < 100; i++) {
      await new Promise((r) => setTimeout(r, 50));
      cur = await this.enrollments.getRegistration(rec.registrationId);
    }
    if (cur?.status !== "assigned" || !cur.result) throw new EdgeTrustError("CONFLICT", `registration ${rec.registrationId} is still in progress`, { hint: "retry shortly" });
    return cur.result as RegistrationResult;
  }

  /** The stored registration for a DPS operation poll. */
  async operation(registrationId: string, operationId: string): Promise<RegistrationRecord> {
    const rec = await this.enrollments.getRegistration(checkRegistrationId(registrationId));
    if (!rec || rec.operationId !== operationId) throw new EdgeTrustError("NOT_FOUND", `no operation ${operationId} for ${registrationId}`);
    return rec;
  }
}
