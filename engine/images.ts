import { EdgeTrustError } from "../common/index.js";
import type { DockerClient, PullProgress } from "./docker.js";

/** An image pinned by digest: what a verified manifest names. */
export interface PinnedImage {
  /** Registry host + path, e.g. 127.0.0.1:5000/edgetrust/sensor. */
  repository: string;
  /** sha256:<64 hex>. */
  digest: string;
}

export interface ResolvedImage extends PinnedImage {
  /** The local image ID (content address of the config), which containers are created from. */
  imageId: string;
  pulled: boolean;
}

const DIGEST = /^sha256:[0-9a-f]{64}$/;

/**
 * Make sure the engine holds exactly the pinned image and return its image ID. An image already present with the
 * pinned digest is never pulled again (boots offline from cache). After a pull, the engine's RepoDigests must carry
 * `repository@digest`: a registry or cache that served anything else is refused.
 */
export async function ensureImage(
  docker: DockerClient,
  image: PinnedImage,
  onProgress?: (p: PullProgress) => void,
): Promise<ResolvedImage> {
  if (!DIGEST.test(image.digest)) {
    throw new EdgeTrustError("INVALID_INPUT", `image ${image.repository} is not pinned by a sha256 digest: ${image.digest}`);
  }
  const pinned = `${image.repository}@${image.digest}`;
  const cached = await docker.inspectImage(pinned);
  if (cached && carriesDigest(cached.RepoDigests, pinned)) {
    return { ...image, imageId: cached.Id, pulled: false };
  }
  await docker.pull(image.repository, image.digest, onProgress);
  const pulled = await docker.inspectImage(pinned);
  if (!pulled || !carriesDigest(pulled.RepoDigests, pinned)) {
    throw new EdgeTrustError("FORBIDDEN", `image ${pinned} does not carry its pinned digest after the pull`, {
      details: { repoDigests: pulled?.RepoDigests ?? [] },
    });
  }
  return { ...image, imageId: pulled.Id, pulled: true };
}

/** Does the engine still hold `pinned` as the image with this ID? Used when reconciling running containers. */
export async function imageStillPinned(docker: DockerClient, imageId: string, image: PinnedImage): Promise<boolean> {
  return imagePins(await docker.inspectImage(imageId), imageId, image);
}

/** The decision of `imageStillPinned` on an image already read (from the engine, or from a `ContainerWatch`). */
export function imagePins(info: { Id: string; RepoDigests: string[] | null } | undefined, imageId: string, image: PinnedImage): boolean {
  return Boolean(info && info.Id === imageId && carriesDigest(info.RepoDigests, `${image.repository}@${image.digest}`));
}

function carriesDigest(repoDigests: string[] | null, pinned: string): boolean {
  return (repoDigests ?? []).includes(pinned);
}
