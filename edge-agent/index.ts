export { DockerClient, DockerApiError } from "./docker.js";
export type { DockerOptions, ImageInspect, ContainerInspect, ContainerSummary, PullProgress } from "./docker.js";
export { ensureImage, imageStillPinned } from "./images.js";
export type { PinnedImage, ResolvedImage } from "./images.js";
export { createSpec, createModuleContainer, listManaged, containerName, LABELS, WORKLOAD_MOUNT } from "./containers.js";
export type { ContainerPlan, BindMount, ManagedContainer } from "./containers.js";
