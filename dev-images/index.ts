/**
 * dev-images/: module images for development — the demo, tests and benchmarks (never a daemon): a busybox image and a
 * Node module image, built locally with the docker CLI, pushed to the local registry and used pinned by digest.
 */
export { buildBusyboxImage, removeLocalImage, dockerCli, DOCKER_SOCKET, REGISTRY } from "./busybox.js";
export type { BuiltImage } from "./busybox.js";
export { buildNodeModuleImage } from "./node-image.js";
export type { NodeModuleImage } from "./node-image.js";
