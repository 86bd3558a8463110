import { chmodSync, rmSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { EdgeTrustError, unixSocketPathProblem, type Logger } from "../common/index.js";
import {
  answerShapes, attestedModuleBody, deregisterQuery, eventsQuery, evidenceBody, nameParams, renewBody, type AttestedModuleInput, type RenewKind,
} from "../identity-api/index.js";
import { Answer, ApiServer, type Route } from "./api-server.js";
import type { AttestedModule, AttestedModules } from "./attested-modules.js";
import type { WorkloadSockets } from "./workload-api.js";
import type { ContainerVerdict } from "./container-check.js";
import type { ModuleEventLog } from "./events.js";
import { sasVerifyRoute } from "./sas-api.js";
import type { SasKeys } from "./sas.js";

interface ManagementBackend {
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
}): Promise<ApiServer> {
  const { modules, sockets, backend, log, events, sas } = opts;
  const view = (m: AttestedModule) => ({ ...m, socketPath: sockets.socketPath(m.name) });
  const routes: Route[] = [
    {
      method: "POST", path: "/v1/modules", body: attestedModuleBody, answers: { 201: answerShapes.moduleView },
      handler: async (req) => {
        const input = req.body as AttestedModuleInput;
        // Before anything is checked, kept or written: a socket path the kernel cannot take would otherwise be
        // registered and then fail as a generic error (node binds a longer path cut short).
        const socketProblem = unixSocketPathProblem(sockets.socketPath(input.name));
        if (socketProblem) {
          throw new EdgeTrustError("INVALID_INPUT", `refused to attest module ${input.name}: its workload socket cannot be made: ${socketProblem}`, { hint: "use a shorter module name or a shorter device.workloadDir" });
        }
        const candidate: AttestedModule = { ...input, registeredAt: new Date().toISOString() };
        const verdict = await backend.checkContainer(candidate);
        if (!verdict.ok) throw new EdgeTrustError("FORBIDDEN", `refused to attest module ${input.name}: ${verdict.reason}`);
        if (input.auth === "sas" && !sas) throw new EdgeTrustError("FORBIDDEN", `refused to attest module ${input.name}: this daemon keeps no SAS keys`);
        await sas?.prepare(input);
        const m = modules.register(input);
        await sockets.open(m);
        log.info({ module: m.name, digest: m.imageDigest, manifestVersion: m.manifestVersion }, "module attested");
        return new Answer(201, view(m));
      },
    },
    {
      method: "DELETE", path: "/v1/modules/:name", params: nameParams, query: deregisterQuery,
      handler: async (req) => {
        const { name } = req.params as { name: string };
        const reason = (req.query as { reason?: string }).reason ?? "deregistered by agent";
        const m = modules.deregister(name, reason);
        if (!m) throw new EdgeTrustError("NOT_FOUND", `module ${name} is not registered`);
        await sockets.close(name);
        log.info({ module: name, reason }, "module deregistered");
        return new Answer(204);
      },
    },
    {
      method: "GET", path: "/v1/modules", answers: { 200: answerShapes.moduleList },
      handler: async () => ({ modules: modules.list().map(view) }),
    },
    {
      method: "GET", path: "/v1/modules/:name", params: nameParams, answers: { 200: answerShapes.moduleView },
      handler: async (req) => {
        const m = modules.get((req.params as { name: string }).name);
        if (!m) throw new EdgeTrustError("NOT_FOUND", `module ${(req.params as { name: string }).name} is not registered`);
        return view(m);
      },
    },
    { method: "GET", path: "/v1/status", handler: async () => backend.status() },
    {
      method: "GET", path: "/v1/events", query: eventsQuery, answers: { 200: answerShapes.eventsPage },
      handler: async (req) => {
        if (!events) throw new EdgeTrustError("NOT_FOUND", "this daemon keeps no event log");
        const q = req.query as { after: number; waitSeconds: number };
        await events.wait(q.after, q.waitSeconds * 1000, req.signal);
        const { events: list, gap } = events.since(q.after);
        return { epoch: events.epoch, events: list, next: events.lastSeq, gap };
      },
    },
    {
      method: "POST", path: "/v1/renew", body: renewBody,
      handler: async (req) => {
        if (!backend.renew) throw new EdgeTrustError("NOT_FOUND", "renewal is not available on this socket");
        const b = req.body as { kind: RenewKind; rekey: boolean };
        return backend.renew(b.kind, b.rekey);
      },
    },
    {
      method: "POST", path: "/v1/attestation/evidence", body: evidenceBody, answers: { 200: answerShapes.evidenceAnswer },
      handler: async (req) => {
        if (!backend.evidence) throw new EdgeTrustError("NOT_FOUND", "attestation evidence is not available on this socket");
        return { evidence: await backend.evidence((req.body as { nonce: string }).nonce) };
      },
    },
  ];
  if (sas) routes.push(sasVerifyRoute(sas, log));
  const server = new ApiServer({ routes, bodyLimit: 16 * 1024, log });

  const socketProblem = unixSocketPathProblem(opts.path);
  if (socketProblem) throw new EdgeTrustError("INVALID_CONFIG", `device.managementSocket: ${socketProblem}`, { hint: "choose a shorter path" });
  mkdirSync(dirname(opts.path), { recursive: true });
  rmSync(opts.path, { force: true });
  await server.listen(opts.path);
  chmodSync(opts.path, 0o600);
  return server;
}
