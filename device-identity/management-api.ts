import { chmodSync, rmSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";
import Fastify, { type FastifyInstance } from "fastify";
import { EdgeTrustError, installProblemHandler, type Logger } from "../common/index.js";
import {
  AttestedModuleSchema, DeregisterQuery, EventsPageSchema, EventsQuery, EvidenceBody, EvidenceResponse, ModuleListSchema, ModuleViewSchema, NameParams, RenewBody,
  type RenewKind,
} from "../identity-api/index.js";
import type { AttestedModule, AttestedModules } from "./attested-modules.js";
import type { WorkloadSockets } from "./workload-api.js";
import type { ContainerVerdict } from "./container-check.js";
import type { ModuleEventLog } from "./events.js";
import { addSasVerifyRoute } from "./sas-api.js";
import type { SasKeys } from "./sas.js";

export interface ManagementBackend {
  /** Checked at registration: the agent may only vouch for a container that really runs the digest. */
  checkContainer(m: AttestedModule): Promise<ContainerVerdict>;
  status(): Record<string, unknown>;
  /** Renew now (operators, tests); absent in tests that only exercise the module registry. */
  renew?(kind: RenewKind, rekey: boolean): Promise<Record<string, unknown>>;
  /** Attestation evidence (EAT-style JWT signed with the device key) for a verifier's nonce. */
  evidence?(nonce: string): Promise<string>;
}

/** The agent's API: root-only socket (0600), register/deregister attested modules, status. */
export async function startManagementApi(opts: {
  path: string;
  modules: AttestedModules;
  sockets: WorkloadSockets;
  backend: ManagementBackend;
  /** Attestation change log for `GET /v1/events` (the hub's cross-process AttestationSource). */
  events?: ModuleEventLog;
  /** SAS keys of modules granted `auth: sas`: made before registration, and `POST /v1/sas/verify` for the hub. */
  sas?: SasKeys;
  log: Logger;
}): Promise<FastifyInstance> {
  const { modules, sockets, backend, log, events, sas } = opts;
  const view = (m: AttestedModule) => ({ ...m, socketPath: sockets.socketPath(m.name) });
  const app = Fastify({ logger: false, bodyLimit: 16 * 1024 });
  installProblemHandler(app, { log });

  app.post("/v1/modules", { schema: { body: AttestedModuleSchema, response: { 201: ModuleViewSchema } } }, async (req, reply) => {
    const input = req.body as typeof AttestedModuleSchema.static;
    const candidate: AttestedModule = { ...input, registeredAt: new Date().toISOString() };
    const verdict = await backend.checkContainer(candidate);
    if (!verdict.ok) throw new EdgeTrustError("FORBIDDEN", `refused to attest module ${input.name}: ${verdict.reason}`);
    if (input.auth === "sas" && !sas) throw new EdgeTrustError("FORBIDDEN", `refused to attest module ${input.name}: this daemon keeps no SAS keys`);
    await sas?.prepare(input);
    const m = modules.register(input);
    await sockets.open(m);
    log.info({ module: m.name, digest: m.imageDigest, manifestVersion: m.manifestVersion }, "module attested");
    return reply.code(201).send(view(m));
  });

  app.delete("/v1/modules/:name", { schema: { params: NameParams, querystring: DeregisterQuery } }, async (req, reply) => {
    const { name } = req.params as { name: string };
    const reason = (req.query as { reason?: string }).reason ?? "deregistered by agent";
    const m = modules.deregister(name, reason);
    if (!m) throw new EdgeTrustError("NOT_FOUND", `module ${name} is not registered`);
    await sockets.close(name);
    log.info({ module: name, reason }, "module deregistered");
    return reply.code(204).send();
  });

  app.get("/v1/modules", { schema: { response: { 200: ModuleListSchema } } }, async () => ({
    modules: modules.list().map(view),
  }));

  app.get("/v1/modules/:name", { schema: { params: NameParams, response: { 200: ModuleViewSchema } } }, async (req) => {
    const m = modules.get((req.params as { name: string }).name);
    if (!m) throw new EdgeTrustError("NOT_FOUND", `module ${(req.params as { name: string }).name} is not registered`);
    return view(m);
  });

  app.get("/v1/status", async () => backend.status());

  app.get("/v1/events", { schema: { querystring: EventsQuery, response: { 200: EventsPageSchema } } }, async (req) => {
    if (!events) throw new EdgeTrustError("NOT_FOUND", "this daemon keeps no event log");
    const q = req.query as { after: number; waitSeconds: number };
    const abort = new AbortController();
    req.raw.once("close", () => abort.abort());
    await events.wait(q.after, q.waitSeconds * 1000, abort.signal);
    const { events: list, gap } = events.since(q.after);
    return { epoch: events.epoch, events: list, next: events.lastSeq, gap };
  });

  app.post("/v1/renew", { schema: { body: RenewBody } }, async (req) => {
    if (!backend.renew) throw new EdgeTrustError("NOT_FOUND", "renewal is not available on this socket");
    const b = req.body as { kind: RenewKind; rekey: boolean };
    return backend.renew(b.kind, b.rekey);
  });

  app.post("/v1/attestation/evidence", { schema: { body: EvidenceBody, response: { 200: EvidenceResponse } } }, async (req) => {
    if (!backend.evidence) throw new EdgeTrustError("NOT_FOUND", "attestation evidence is not available on this socket");
    return { evidence: await backend.evidence((req.body as { nonce: string }).nonce) };
  });

  if (sas) addSasVerifyRoute(app, sas, log);

  mkdirSync(dirname(opts.path), { recursive: true });
  rmSync(opts.path, { force: true });
  await app.listen({ path: opts.path });
  chmodSync(opts.path, 0o600);
  return app;
}
