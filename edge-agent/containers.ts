import { LABELS, type DockerClient, type ResolvedImage } from "../engine/index.js";

/** Where a module finds its workload socket inside its container. */
export const WORKLOAD_MOUNT = "/run/edgetrust/workload";

export interface BindMount {
  source: string;
  target: string;
  readOnly: boolean;
}

/**
 * Everything needed to create one module's container, already decided: the manifest asked, policy granted. Nothing in
 * here is a default the engine fills in — each security-relevant field is explicit.
 */
export interface ContainerPlan {
  /** The device this agent runs for: an engine shared by several agents (tests, labs) keeps them apart. */
  deviceId: string;
  module: string;
  deploymentId: string;
  manifestVersion: number;
  image: ResolvedImage;
  /** uid[:gid]; root only when policy granted it literally. */
  user: string;
  capAdd: string[];
  binds: BindMount[];
  devices: string[];
  network: "none" | "host";
  readOnlyRootfs: boolean;
  env: Record<string, string>;
  cmd?: string[];
  /** Host directory that holds this module's workload socket and nothing else. */
  workloadSocketDir?: string;
}

export function containerName(module: string): string {
  return `edgetrust-${module}`;
}

/** The Docker create body for a plan. Privileged is never set; all capabilities are dropped first. */
export function createSpec(plan: ContainerPlan): Record<string, unknown> {
  const binds = plan.binds.map((b) => `${b.source}:${b.target}:${b.readOnly ? "ro" : "rw"}`);
  if (plan.workloadSocketDir) binds.push(`${plan.workloadSocketDir}:${WORKLOAD_MOUNT}:ro`);
  return {
    Image: plan.image.imageId,
    User: plan.user,
    Env: Object.entries(plan.env).map(([k, v]) => `${k}=${v}`),
    ...(plan.cmd ? { Cmd: plan.cmd } : {}),
    Labels: {
      [LABELS.managed]: "true",
      [LABELS.device]: plan.deviceId,
      [LABELS.module]: plan.module,
      [LABELS.deployment]: plan.deploymentId,
      [LABELS.version]: String(plan.manifestVersion),
      [LABELS.digest]: plan.image.digest,
      [LABELS.repository]: plan.image.repository,
    },
    HostConfig: {
      Privileged: false,
      CapDrop: ["ALL"],
      CapAdd: plan.capAdd,
      ReadonlyRootfs: plan.readOnlyRootfs,
      NetworkMode: plan.network,
      Binds: binds,
      Devices: plan.devices.map((d) => ({ PathOnHost: d, PathInContainer: d, CgroupPermissions: "rwm" })),
      SecurityOpt: ["no-new-privileges"],
      // The agent supervises restarts itself so it can re-check the image digest before each one.
      RestartPolicy: { Name: "no" },
      PidsLimit: 256,
      IpcMode: "private",
    },
  };
}

/** Create (replacing any stale container of the same name) and return the container ID. Does not start it. */
export async function createModuleContainer(docker: DockerClient, plan: ContainerPlan): Promise<string> {
  const name = containerName(plan.module);
  await docker.removeContainer(name, true);
  return docker.createContainer(name, createSpec(plan));
}

export interface ManagedContainer {
  id: string;
  module: string;
  deploymentId: string;
  manifestVersion: number;
  digest: string;
  repository: string;
  imageId: string;
  running: boolean;
  state: string;
}

/** Every container the agent of `deviceId` manages, read back from the engine (the engine is the source of truth). */
export async function listManaged(docker: DockerClient, deviceId: string): Promise<ManagedContainer[]> {
  const list = await docker.listContainers({ [LABELS.managed]: "true", [LABELS.device]: deviceId });
  return list.map((c) => ({
    id: c.Id,
    module: c.Labels[LABELS.module] ?? "",
    deploymentId: c.Labels[LABELS.deployment] ?? "",
    manifestVersion: Number(c.Labels[LABELS.version] ?? 0),
    digest: c.Labels[LABELS.digest] ?? "",
    repository: c.Labels[LABELS.repository] ?? "",
    imageId: c.ImageID,
    running: c.State === "running",
    state: c.State,
  }));
}
