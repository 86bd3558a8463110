import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from "fastify";
import { EdgeTrustError } from "../../../common/index.js";
import { peerCertificate, problemResponses } from "../../http.js";
import { base64Body, certsOnlyPkcs7, csrAttrsDer, estCsrToPem, EST_CERTS_TYPE, EST_CSRATTRS_TYPE } from "../est.js";
import { RegistrationService } from "../registration.js";
import { EnrollmentStore } from "../store.js";
import { groupKeyVault } from "../group-keys.js";
import { sha256Hex } from "../../store.js";
import { registrationCredential } from "./v1-enrollments-register.js";
import type { RouteDeps } from "../../shared/route-deps.js";
import { requireIssuedCertificate } from "../../device-auth.js";

const EST = "/.well-known/est";

function sendCerts(reply: FastifyReply, certsPem: string[]): FastifyReply {
  return reply.code(200).header("content-transfer-encoding", "base64").type(EST_CERTS_TYPE).send(base64Body(certsOnlyPkcs7(certsPem)));
}

/**
 * EST (RFC 7030, with RFC 8951's clarifications) over the CA's TLS listener:
 * - GET  cacerts         → the trust bundle (roots + issuing CAs) as base64 certs-only PKCS#7, unauthenticated;
 * - POST simpleenroll    → first enrollment: `application/pkcs10` (base64 DER, or PEM) in, the device identity
 *                          certificate out. Authenticated by the bootstrap client certificate, or HTTP Basic
 *                          `registrationId:<derived group key>` inside TLS; an enrolled public key alone also works.
 * - POST simplereenroll  → renewal/rekey with the current identity certificate as the TLS client certificate;
 * - GET  csrattrs        → the signature algorithms we accept (base64 DER CsrAttrs).
 */
export const estRoutes: FastifyPluginAsync<RouteDeps> = async (app, { ca, store, metrics }) => {
  const svc = new RegistrationService(ca, new EnrollmentStore(store, groupKeyVault(ca.keys)));
  for (const t of ["application/pkcs10", "application/x-pkcs10", "application/pkcs10-base64"]) {
    app.addContentTypeParser(t, { parseAs: "buffer", bodyLimit: 65536 }, (_req, body, done) => done(null, body));
  }
  app.addHook("onSend", async (_req, reply, payload) => {
    if (reply.statusCode === 401) reply.header("www-authenticate", 'Basic realm="edgetrust-est"');
    return payload;
  });
  const csrOf = (req: FastifyRequest): string => {
    const ct = String(req.headers["content-type"] ?? "").split(";")[0]?.trim().toLowerCase();
    if (!ct?.includes("pkcs10")) throw new EdgeTrustError("INVALID_INPUT", "EST requests are application/pkcs10");
    if (!Buffer.isBuffer(req.body)) throw new EdgeTrustError("PKI_INVALID_CSR", "empty request");
    return estCsrToPem(req.body);
  };

  app.get(`${EST}/cacerts`, { config: { auth: "public" },
    schema: { summary: "EST cacerts: trust bundle, base64 certs-only PKCS#7", tags: ["est"], produces: [EST_CERTS_TYPE] },
  }, async (_req, reply) => sendCerts(reply, ca.trustBundlePem().split(/(?<=-----END CERTIFICATE-----)\s*/).filter((p) => p.includes("BEGIN CERTIFICATE"))));

  app.get(`${EST}/csrattrs`, { config: { auth: "public" },
    schema: { summary: "EST csrattrs: accepted signature algorithms (base64 DER CsrAttrs)", tags: ["est"], produces: [EST_CSRATTRS_TYPE] },
  }, async (_req, reply) => reply.header("content-transfer-encoding", "base64").type(EST_CSRATTRS_TYPE).send(base64Body(csrAttrsDer())));

  app.post<{ Body: Buffer }>(`${EST}/simpleenroll`, { config: { auth: "bootstrap" },
    schema: { summary: "EST simpleenroll: PKCS#10 in, the device identity certificate out", tags: ["est"], consumes: ["application/pkcs10"], produces: [EST_CERTS_TYPE], response: problemResponses(400, 401, 403, 409) },
  }, async (req, reply) => {
    const csr = csrOf(req);
    const cred = registrationCredential(req);
    let registrationId: string;
    if (cred.kind === "basic") {
      registrationId = Buffer.from((req.headers.authorization ?? "").slice(6), "base64").toString("utf8").split(":")[0] ?? "";
    } else if (cred.kind === "x509") {
      registrationId = await svc.registrationIdForCertificate(cred.cert);
    } else {
      throw new EdgeTrustError("UNAUTHENTICATED", "EST enrollment needs a bootstrap client certificate or HTTP Basic credentials");
    }
    // An EST client retrying the same CSR gets the same certificate back; a new CSR for a registered id is refused.
    const out = await svc.register({ registrationId, csr, idempotencyKey: `est:${sha256Hex(csr.trim())}`, credential: cred, channel: "est", identityOnly: true });
    if (!out.replayed) metrics.issued.inc({ profile: "registration", kind: "est" });
    return sendCerts(reply, [out.result.identity.certificatePem]);
  });

  app.post<{ Body: Buffer }>(`${EST}/simplereenroll`, {
    onRequest: requireIssuedCertificate(store),
    schema: { summary: "EST simplereenroll: renew or rekey with the current identity certificate (mTLS)", tags: ["est"], consumes: ["application/pkcs10"], produces: [EST_CERTS_TYPE], response: problemResponses(400, 401, 403) },
  }, async (req, reply) => {
    const csr = csrOf(req);
    const peer = peerCertificate(req);
    if (!peer) throw new EdgeTrustError("UNAUTHENTICATED", "re-enrollment needs the current certificate as the TLS client certificate");
    const out = await ca.renew(new Uint8Array(peer.raw), csr);
    metrics.issued.inc({ profile: out.record.profile, kind: out.rekey ? "rekey" : "renew" });
    return sendCerts(reply, [out.record.certPem]);
  });
};
