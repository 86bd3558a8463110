import { imageStillPinned, LABELS, type DockerClient } from "../engine/index.js";
import type { AttestedModule } from "./attested-modules.js";

/** `onHost`: the caller check found a process on the host itself (root or the module's uid), not in any container. */
export type ContainerVerdict = { ok: true; onHost?: boolean } | { ok: false; reason: string };

/**
 * Before any module certificate is issued: the registered container must exist, run, carry the attested digest, and
 * its image must still be the content that digest names (an image re-tagged under the container is caught here).
 */
export async function checkAttestedContainer(
  docker: DockerClient,
  m: AttestedModule,
  opts: { allowCreated?: boolean } = {},
): Promise<ContainerVerdict> {
  const c = await docker.inspectContainer(m.containerId);
  if (!c) return { ok: false, reason: `container ${m.containerId.slice(0, 12)} of module ${m.name} no longer exists` };
  // The agent registers a module between create and start, so its socket exists when the module first runs.
  const startable = opts.allowCreated && c.State.Status === "created";
  if (!c.State.Running && !startable) return { ok: false, reason: `container of module ${m.name} is not running (${c.State.Status})` };
  if (c.Config.Labels[LABELS.module] !== m.name) return { ok: false, reason: `container ${m.containerId.slice(0, 12)} is not module ${m.name}` };
  if (c.Config.Labels[LABELS.digest] !== m.imageDigest) {
    return { ok: false, reason: `container of module ${m.name} was created for another image digest` };
  }
  const pinned = await imageStillPinned(docker, c.Image, { repository: m.imageRepository, digest: m.imageDigest });
  if (!pinned) return { ok: false, reason: `container of module ${m.name} runs image ${c.Image.slice(0, 19)}, not ${m.imageDigest}` };
  return { ok: true };
}
