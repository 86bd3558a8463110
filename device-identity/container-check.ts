import { imagePins, imageStillPinned, LABELS, type ContainerWatch, type DockerClient } from "../engine/index.js";
import type { AttestedModule } from "./attested-modules.js";

/** `onHost`: the caller check found a process on the host itself (root or the module's uid), not in any container. */
export type ContainerVerdict = { ok: true; onHost?: boolean } | { ok: false; reason: string };

interface CheckOptions {
  allowCreated?: boolean;
}

/** The container facts both paths (engine call, memory) decide on. */
interface ContainerFacts {
  status: string;
  running: boolean;
  labels: Record<string, string>;
  imageId: string;
}

/** Everything but the image pin; `undefined` means "so far so good: now the image". */
function judge(c: ContainerFacts | undefined, m: AttestedModule, opts: CheckOptions): ContainerVerdict | undefined {
  if (!c) return { ok: false, reason: `container ${m.containerId.slice(0, 12)} of module ${m.name} no longer exists` };
  // The agent registers a module between create and start, so its socket exists when the module first runs.
  const startable = opts.allowCreated && c.status === "created";
  if (!c.running && !startable) return { ok: false, reason: `container of module ${m.name} is not running (${c.status})` };
  if (c.labels[LABELS.module] !== m.name) return { ok: false, reason: `container ${m.containerId.slice(0, 12)} is not module ${m.name}` };
  if (c.labels[LABELS.digest] !== m.imageDigest) {
    return { ok: false, reason: `container of module ${m.name} was created for another image digest` };
  }
  return undefined;
}

function notPinned(m: AttestedModule, imageId: string): ContainerVerdict {
  return { ok: false, reason: `container of module ${m.name} runs image ${imageId.slice(0, 19)}, not ${m.imageDigest}` };
}

const pin = (m: AttestedModule) => ({ repository: m.imageRepository, digest: m.imageDigest });

/**
 * Before any module certificate is issued: the registered container must exist, run, carry the attested digest, and
 * its image must still be the content that digest names (an image re-tagged under the container is caught here).
 * Asks the engine (two calls).
 */
export async function checkAttestedContainer(docker: DockerClient, m: AttestedModule, opts: CheckOptions = {}): Promise<ContainerVerdict> {
  const c = await docker.inspectContainer(m.containerId);
  const facts = c && { status: c.State.Status, running: c.State.Running, labels: c.Config.Labels ?? {}, imageId: c.Image };
  const early = judge(facts, m, opts);
  if (early) return early;
  return (await imageStillPinned(docker, c!.Image, pin(m))) ? { ok: true } : notPinned(m, c!.Image);
}

/**
 * The same decision from the engine's event stream as `watch` holds it, or `undefined` when memory cannot answer
 * (stream down or re-syncing, a change announced and not re-read yet): then the engine must be asked.
 */
function checkFromWatch(watch: ContainerWatch, m: AttestedModule, opts: CheckOptions = {}): ContainerVerdict | undefined {
  const known = watch.lookup(m.containerId);
  if (!known) return undefined;
  if (!known.exists) return judge(undefined, m, opts);
  const c = known.container;
  const early = judge(c, m, opts);
  if (early) return early;
  if (!known.image) return undefined;
  return imagePins({ Id: known.image.id, RepoDigests: known.image.repoDigests }, c.imageId, pin(m)) ? { ok: true } : notPinned(m, c.imageId);
}

/**
 * The check the daemon uses: memory while the event stream is followed, else the engine (never memory that may be
 * stale). Registration (`allowCreated`, the attestation moment) always asks the engine.
 */
export function containerChecker(docker: DockerClient, watch: ContainerWatch | undefined): (m: AttestedModule, opts?: CheckOptions) => Promise<ContainerVerdict> {
  return async (m, opts = {}) => {
    if (watch && !opts.allowCreated) {
      const fast = checkFromWatch(watch, m, opts);
      if (fast) return fast;
    }
    return checkAttestedContainer(docker, m, opts);
  };
}

/** The main process of a container, from memory when it answers, else from the engine (peer.ts, callers in another netns). */
export function containerPid(docker: DockerClient, watch: ContainerWatch | undefined): (containerId: string) => Promise<number | undefined> {
  return async (id) => {
    const known = watch?.lookup(id);
    if (known) return known.exists && known.container.running ? known.container.pid : undefined;
    return (await docker.inspectContainer(id))?.State.Pid || undefined;
  };
}
