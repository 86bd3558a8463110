import "reflect-metadata";
import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import type { AddressInfo } from "node:net";
import Fastify, { LogController, type FastifyInstance } from "fastify";
import swagger from "@fastify/swagger";
import rateLimit, { type FastifyRateLimitStoreCtor } from "@fastify/rate-limit";
import * as x509 from "@peculiar/x509";
import { createLogger, type Logger } from "../common/index.js";
import { EKU_SERVER_AUTH, randomSerial, signingAlgorithmFor } from "../pki/index.js";
import type { CertificateAuthority } from "./ca.js";
import type { CaConfig } from "./config.js";
import { installProblemHandlers } from "./http.js";
import { enforceRouteAuth, type RouteAuthEntry } from "./route-auth.js";
import { CaMetrics } from "./metrics.js";
import { normalizeSerial, sha256Hex, type CaStore } from "./store.js";
import type { RouteDeps } from "./shared/route-deps.js";
import { healthRoutes, opsPlugin } from "./ops/routes.js";
import { caPlugin, revocationPlugin } from "./ca/routes.js";
import { attestationPlugin, renewalAttestationGate } from "./attestation/routes.js";
import { enrollmentPlugin } from "./enrollment/routes.js";
import { deploymentsPlugin } from "./deployments/routes.js";
import { startFleet, type Fleet } from "./shared/fleet.js";

interface CaServerDeps {
  ca: CertificateAuthority;
  store: CaStore;
  logger?: Logger;
  /** PEM TLS material; default from config.tlsCert/tlsKey, else a certificate the issuing CA issues at start. */
  tls?: { cert: string; key: string };
  /** Plain HTTP instead of HTTPS (tests using inject; never in production: renewal needs mTLS). */
  plainHttp?: boolean;
  /** `x-edgetrust-instance` of this server (a `ca serve --workers` worker names itself); default instanceIdOf(config). */
  instanceId?: string;
  /**
   * Where request counters of the rate limit live when the store does not hold them (SQLite): a `ca serve --workers`
   * worker counts in the primary over IPC, so a limit is granted once per service, not once per worker.
   */
  rateLimitStore?: FastifyRateLimitStoreCtor;
}

export interface CaServer {
  /** The HTTPS API (every route). */
  app: FastifyInstance;
  /** The plain-HTTP revocation listener (CRL + OCSP + health), when config.revocationPort >= 0. */
  revocationApp?: FastifyInstance;
  metrics: CaMetrics;
  /** Every route of both listeners and what authenticates it (see route-auth.ts). */
  routeAuth: RouteAuthEntry[];
  /** The PEM certificate the HTTPS listener presents. */
  tlsCertPem?: string;
  listen(): Promise<{ url: string; revocationUrl?: string }>;
  close(): Promise<void>;
}

/** A TLS server certificate for the CA's own listener, issued by the current issuing CA and recorded like any other. */
export async function selfIssuedTls(ca: CertificateAuthority, config: CaConfig): Promise<{ cert: string; key: string }> {
  const keys = (await globalThis.crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"])) as CryptoKeyPair;
  const issuer = ca.current();
  const names: x509.JsonGeneralName[] = config.serverNames.map((n) => ({ type: isIP(n) ? "ip" : "dns", value: n }));
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: new x509.Name([{ CN: [config.serverNames[0] ?? "localhost"] }]),
    issuer: issuer.cert.subjectName,
    notBefore: new Date(Date.now() - 300e3),
    notAfter: new Date(Math.min(Date.now() + 30 * 86400e3, issuer.cert.notAfter.getTime())),
    publicKey: keys.publicKey,
    signingKey: issuer.key,
    signingAlgorithm: signingAlgorithmFor(issuer.key),
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([EKU_SERVER_AUTH], false),
      new x509.SubjectAlternativeNameExtension(names, false),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false),
      new x509.AuthorityKeyIdentifierExtension(issuer.cert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId ?? "", false),
    ],
  }, ca.crypto);
  await ca.store.recordIssued({
    serial: normalizeSerial(cert.serialNumber), issuerId: issuer.record.id, profile: "ca-server", subject: cert.subject,
    sans: names.map((n) => `${n.type}:${n.value}`), deviceId: null, spkiSha256: sha256Hex(new Uint8Array(cert.publicKey.rawData)),
    fingerprintSha256: sha256Hex(new Uint8Array(cert.rawData)), notBefore: cert.notBefore.toISOString(), notAfter: cert.notAfter.toISOString(),
    certPem: cert.toString("pem"), replacesSerial: null,
  }, "ca-service:start", "cert.issue.server");
  const pkcs8 = await globalThis.crypto.subtle.exportKey("pkcs8", keys.privateKey);
  const key = x509.PemConverter.encode(pkcs8, "PRIVATE KEY");
  return { cert: [cert.toString("pem"), issuer.cert.toString("pem")].join("\n"), key };
}

function baseOptions(config: CaConfig, logger: Logger) {
  return {
    loggerInstance: logger,
    bodyLimit: config.bodyLimitBytes,
    // Registration ids may be 128 characters (find-my-way's default of 100 answered longer ones with a bare 414).
    routerOptions: { maxParamLength: 256 },
    return503OnClosing: true,
    // fastify's two info lines per request ("incoming request", "request completed") cost each request two
    // synchronous writes to stdout; the one line below is at debug. Requests are counted in /metrics, issuance is in
    // the audit log, and failures are logged at error by the problem handler (README "Request logging").
    logController: new LogController({ disableRequestLogging: true }),
    ajv: { customOptions: { removeAdditional: false as const, coerceTypes: "array" as const, allErrors: false } },
  };
}

function instrument(app: FastifyInstance, metrics: CaMetrics): void {
  // Callback-style hooks (here and the instance header): an async hook costs fastify a promise per request.
  app.addHook("onResponse", (req, reply, done) => {
    const route = req.routeOptions.url ?? "unmatched";
    metrics.httpRequests.inc({ method: req.method, route, status: String(reply.statusCode) });
    metrics.httpDuration.observe({ method: req.method, route }, reply.elapsedTime / 1000);
    req.log.debug({ method: req.method, url: req.url.split("?")[0], status: reply.statusCode, ms: Math.round(reply.elapsedTime * 10) / 10 }, "request");
    done();
  });
}

/**
 * Build the CA's HTTPS service (and its plain-HTTP revocation listener) on a loaded CertificateAuthority. Every route
 * is a plugin with a TypeBox schema; errors are problem+json; OpenAPI at /openapi.json; /metrics; /healthz.
 */
export async function createCaServer(config: CaConfig, deps: CaServerDeps): Promise<CaServer> {
  const logger = deps.logger ?? createLogger("ca-service");
  const metrics = new CaMetrics();
  metrics.watchGroupCommit(deps.store.issuance.stats);
  let tls: { cert: string; key: string } | undefined;
  if (!deps.plainHttp) {
    tls = deps.tls ?? (config.tlsCert && config.tlsKey
      ? { cert: readFileSync(config.tlsCert, "utf8"), key: readFileSync(config.tlsKey, "utf8") }
      : await selfIssuedTls(deps.ca, config));
  }
  const clientCas = [...deps.ca.rootCertificates(), ...deps.ca.issuers().map((c) => c.cert)].map((c) => c.toString("pem"));
  const app = (tls
    ? Fastify({ ...baseOptions(config, logger), https: { cert: tls.cert, key: tls.key, ca: clientCas, requestCert: true, rejectUnauthorized: false, minVersion: "TLSv1.2" as const } })
    : Fastify(baseOptions(config, logger))) as unknown as FastifyInstance;

  const routeDeps: RouteDeps = { ca: deps.ca, store: deps.store, config, metrics };
  const routeAuth: RouteAuthEntry[] = [];
  installProblemHandlers(app);
  enforceRouteAuth(app, routeAuth);
  instrument(app, metrics);
  const fleet: Fleet = startFleet(config, deps.ca, deps.store, logger, metrics, {
    ...(deps.instanceId ? { instanceId: deps.instanceId } : {}),
    ...(deps.rateLimitStore ? { rateLimitStore: deps.rateLimitStore } : {}),
  });
  app.addHook("onSend", (_req, reply, payload, done) => { reply.header("x-edgetrust-instance", fleet.instanceId); done(null, payload); });
  await app.register(rateLimit, { max: config.rateLimitPerMinute, timeWindow: 60_000, ...fleet.rateLimitStore });
  await app.register(swagger, {
    openapi: {
      openapi: "3.0.3",
      info: { title: "edgetrust CA", version: "1", description: "Cloud CA of edgetrust: issuance, renewal, revocation (CRL, OCSP), audit" },
      components: { securitySchemes: { bearer: { type: "http", scheme: "bearer", description: "admin or auditor API token" } } },
    },
  });
  // One plugin per feature folder (see README "Layout"); each is encapsulated except the renewal gate (fastify-plugin).
  await app.register(opsPlugin, routeDeps);
  await app.register(caPlugin, routeDeps);
  await app.register(attestationPlugin, routeDeps);
  if (config.attestation.requiredForRenewal) await app.register(renewalAttestationGate, routeDeps);
  await app.register(enrollmentPlugin, routeDeps);
  await app.register(deploymentsPlugin, routeDeps);

  let revocationApp: FastifyInstance | undefined;
  if (config.revocationPort >= 0) {
    revocationApp = Fastify(baseOptions(config, logger)) as unknown as FastifyInstance;
    installProblemHandlers(revocationApp);
    enforceRouteAuth(revocationApp, routeAuth);
    instrument(revocationApp, metrics);
    revocationApp.addHook("onSend", (_req, reply, payload, done) => { reply.header("x-edgetrust-instance", fleet.instanceId); done(null, payload); });
    await revocationApp.register(rateLimit, { max: config.rateLimitPerMinute, timeWindow: 60_000, ...fleet.rateLimitStore });
    await revocationApp.register(revocationPlugin, routeDeps);
    await revocationApp.register(healthRoutes, routeDeps);
  }

  const server: CaServer = {
    app,
    metrics,
    routeAuth,
    ...(revocationApp ? { revocationApp } : {}),
    ...(tls ? { tlsCertPem: tls.cert } : {}),
    async listen() {
      await fleet.start();
      await app.listen({ host: config.host, port: config.port });
      const a = app.server.address() as AddressInfo;
      const url = `${tls ? "https" : "http"}://${config.host}:${a.port}`;
      if (!revocationApp) return { url };
      await revocationApp.listen({ host: config.host, port: config.revocationPort });
      const r = revocationApp.server.address() as AddressInfo;
      return { url, revocationUrl: `http://${config.host}:${r.port}` };
    },
    async close() {
      await Promise.all([app.close(), revocationApp?.close()]);
      await fleet.close();
    },
  };
  return server;
}
