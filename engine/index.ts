/** engine/: the Docker Engine API client, the labels of edgetrust's containers and the image-pin checks. */
export { DockerClient, DockerApiError } from "./docker.js";
export type { DockerOptions, ImageInspect, ContainerInspect, ContainerSummary, PullProgress } from "./docker.js";
export { ensureImage, imageStillPinned } from "./images.js";
export type { PinnedImage, ResolvedImage } from "./images.js";
export { LABELS } from "./labels.js";
