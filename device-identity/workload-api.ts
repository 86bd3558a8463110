import { chmodSync, chownSync, mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import type { Socket } from "node:net";
import { EdgeTrustError, unixSocketPathProblem, type Logger } from "../common/index.js";
import { answerShapes, certificateBody, WORKLOAD_SOCKET_NAME } from "../identity-api/index.js";
import { ApiServer } from "./api-server.js";
import type { AttestedModule, AttestedModules } from "./attested-modules.js";
import type { ContainerVerdict } from "./container-check.js";
import { iotEdgeWorkloadRoutes } from "./iotedge-workload.js";

/** What the workload API needs from the daemon: issue for an attested module, and the current trust bundle. */
interface WorkloadBackend {
  /** Throws EdgeTrustError FORBIDDEN with the reason when the module may not have a certificate now. */
  issueModuleCertificate(module: AttestedModule, csrPem: string): Promise<{ certificate: string; chain: string[]; notAfter: string }>;
  trustBundle(): string[];
  /** Is the process on the other end of this connection in the module's container? (peer.ts `checkCaller`) */
  checkCaller(module: AttestedModule, socket: Socket): Promise<ContainerVerdict>;
  /** SAS signing for modules granted `auth: sas` (iotedge-workload.ts); checks the container, then signs in the HSM. */
  sasSign?(module: AttestedModule, generationId: string, data: Buffer): Promise<Buffer>;
}


/**
 * One unix socket per module, in a directory owned by the module's uid: the socket *is* the module's identity,
 * because the agent mounts that directory into that module's container only.
 */
export class WorkloadSockets {
  private readonly servers = new Map<string, ApiServer>();
  /**
   * The caller check's verdict per connection (and the container it was made for): the process at the other end of a
   * unix connection is fixed when it connects, so a keep-alive client is looked up once (`ss` is ~10 ms of CPU), not
   * on every request. A new registration (another container) is checked afresh.
   */
  private readonly callers = new WeakMap<Socket, { containerId: string; verdict: Promise<ContainerVerdict> }>();

  constructor(
    private readonly dir: string,
    private readonly modules: AttestedModules,
    private readonly backend: WorkloadBackend,
    private readonly log: Logger,
  ) {}

  socketDir(module: string): string {
    return join(this.dir, module);
  }

  socketPath(module: string): string {
    return join(this.socketDir(module), WORKLOAD_SOCKET_NAME);
  }

  async open(m: AttestedModule): Promise<string> {
    const problem = unixSocketPathProblem(this.socketPath(m.name));
    if (problem) throw new EdgeTrustError("INVALID_INPUT", `no workload socket for module ${m.name}: ${problem}`, { hint: "use a shorter module name or a shorter device.workloadDir" });
    await this.close(m.name);
    const dir = this.socketDir(m.name);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    chownSync(dir, m.uid, m.gid);
    chmodSync(dir, 0o700);
    const path = this.socketPath(m.name);
    rmSync(path, { force: true });
    const app = this.build(m.name);
    await app.listen(path);
    chownSync(path, m.uid, m.gid);
    chmodSync(path, 0o600);
    this.servers.set(m.name, app);
    this.log.info({ module: m.name, socket: path }, "workload socket open");
    return path;
  }

  async close(module: string): Promise<void> {
    const app = this.servers.get(module);
    if (!app) return;
    this.servers.delete(module);
    await app.close();
    rmSync(this.socketPath(module), { force: true });
    this.log.info({ module }, "workload socket closed");
  }

  async closeAll(): Promise<void> {
    await Promise.all([...this.servers.keys()].map((m) => this.close(m)));
  }

  private build(moduleName: string): ApiServer {
    return new ApiServer({
      bodyLimit: 32 * 1024,
      log: this.log,
      routes: [
        {
          method: "POST", path: "/v1/certificate", body: certificateBody, answers: { 200: answerShapes.certificateAnswer },
          handler: async (req) => {
            const m = await this.authorize(moduleName, req.socket);
            const { csr } = req.body as { csr: string };
            const issued = await this.backend.issueModuleCertificate(m, csr);
            this.log.info({ module: moduleName, notAfter: issued.notAfter }, "module certificate issued");
            return issued;
          },
        },
        { method: "GET", path: "/v1/trust-bundle", answers: { 200: answerShapes.trustBundleAnswer }, handler: async () => ({ certificates: this.backend.trustBundle() }) },
        ...iotEdgeWorkloadRoutes({
          module: moduleName,
          authorize: (req) => this.authorize(moduleName, req.socket, true),
          issue: (m, csr) => this.backend.issueModuleCertificate(m, csr),
          trustBundle: () => this.backend.trustBundle(),
          ...(this.backend.sasSign ? { sign: this.backend.sasSign.bind(this.backend) } : {}),
          log: this.log,
        }),
      ],
    });
  }

  /** The registered module, if the process on the other end of `sock` is inside its container; else FORBIDDEN. */
  private async authorize(moduleName: string, sock: Socket, containerOnly = false): Promise<AttestedModule> {
    // Looked up on every call: a module deregistered a moment ago gets nothing.
    const m = this.modules.get(moduleName);
    if (!m) throw new EdgeTrustError("FORBIDDEN", `module ${moduleName} is not registered as attested`);
    // The socket is the module's identity only if the caller is in that module's container: a container started
    // by hand with another module's socket directory mounted is refused here.
    let known = this.callers.get(sock);
    if (!known || known.containerId !== m.containerId) {
      known = { containerId: m.containerId, verdict: this.backend.checkCaller(m, sock) };
      this.callers.set(sock, known);
    }
    const caller = await known.verdict;
    if (!caller.ok) {
      this.log.warn({ module: moduleName, reason: caller.reason }, "workload socket used from outside the module's container");
      throw new EdgeTrustError("FORBIDDEN", caller.reason);
    }
    // The IoT Edge routes sign SAS tokens: only the module's own processes, never a host process that can reach the
    // socket directory (root, or a host user with the module's uid).
    if (containerOnly && caller.onHost) {
      this.log.warn({ module: moduleName }, "IoT Edge workload API called from the host, not from the module's container");
      throw new EdgeTrustError("FORBIDDEN", `the caller is a process on the host, not in module ${moduleName}'s container`);
    }
    return m;
  }
}
