import { join } from "node:path";
import { isEdgeTrustError } from "../common/index.js";
import { ManagementClient } from "../identity-api/index.js";
import type { IdentityRegistrar } from "./agent.js";

/** The agent's side of device-identity's root-only management socket. */
export class ManagementSocketRegistrar implements IdentityRegistrar {
  private readonly client: ManagementClient;

  constructor(
    socketPath: string,
    /** The daemon's workload sockets directory (`device.workloadSocketsDir`). */
    private readonly socketsDir: string,
  ) {
    this.client = new ManagementClient(socketPath);
  }

  workloadSocketDir(module: string): string {
    return join(this.socketsDir, module);
  }

  async register(m: Parameters<IdentityRegistrar["register"]>[0]): Promise<void> {
    await this.client.register(m);
  }

  async deregister(name: string, reason: string): Promise<void> {
    try {
      await this.client.deregister(name, reason.slice(0, 200));
    } catch (e) {
      if (!isEdgeTrustError(e, "NOT_FOUND")) throw e;
    }
  }

  registered(): Promise<Array<{ name: string; containerId: string }>> {
    return this.client.list();
  }
}
