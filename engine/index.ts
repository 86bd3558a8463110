/** engine/: the Docker Engine API client, the labels of edgetrust's containers and the image-pin checks. */
export { DockerClient } from "./docker.js";
export type { PullProgress } from "./docker.js";
export { ensureImage, imageStillPinned, imagePins } from "./images.js";
export { ContainerWatch } from "./watch.js";
export type { PinnedImage, ResolvedImage } from "./images.js";
export { LABELS } from "./labels.js";
