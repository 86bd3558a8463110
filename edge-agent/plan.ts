import { EdgeTrustError } from "../common/index.js";
import { parsePinnedImage, type Manifest, type ManifestModule } from "../policy/index.js";
import type { BindMount, ContainerPlan } from "./containers.js";
import type { PinnedImage, ResolvedImage } from "../engine/index.js";

/** A module of a verified manifest, in start order, with its image pin: what the agent acts on. */
export interface PlannedModule {
  name: string;
  spec: ManifestModule;
  image: PinnedImage;
}

/** Modules in `startupOrder` (then name, so the order is total and stable). */
export function modulesInOrder(manifest: Manifest): PlannedModule[] {
  return Object.entries(manifest.modules)
    .map(([name, spec]) => {
      const p = parsePinnedImage(spec.image);
      // verifyManifest already refused unpinned images; this guards the invariant, it is not the check.
      if (!p) throw new EdgeTrustError("MANIFEST_REJECTED", `module ${name}: image ${spec.image} is not pinned by digest`);
      return { name, spec, image: { repository: p.repository, digest: p.digest } };
    })
    .sort((a, b) => a.spec.startupOrder - b.spec.startupOrder || a.name.localeCompare(b.name));
}

function parseBind(b: string): BindMount {
  const [source = "", target = "", mode] = b.split(":");
  return { source, target, readOnly: mode !== "rw" };
}

function parseDevice(d: string): string {
  return d.split(":")[0] ?? d;
}

/**
 * The container for a module, from options that verifyManifest already found inside policy. Binds default to
 * read-only here (policy refuses rw unless granted), the root filesystem to read-only, the network to none.
 */
export function containerPlan(
  deviceId: string,
  manifest: Manifest,
  m: PlannedModule,
  image: ResolvedImage,
  workloadSocketDir: string | undefined,
): ContainerPlan {
  const o = m.spec.options ?? {};
  if (o.privileged) throw new EdgeTrustError("FORBIDDEN", `module ${m.name} asks for privileged mode, which the agent never grants`);
  if (o.network === "bridge") {
    throw new EdgeTrustError("FORBIDDEN", `module ${m.name} asks for bridge networking; this device runs modules on loopback only`);
  }
  if (!o.user) throw new EdgeTrustError("FORBIDDEN", `module ${m.name} names no user; modules never run as the image's default user`);
  return {
    deviceId,
    module: m.name,
    deploymentId: manifest.deploymentId,
    manifestVersion: manifest.version,
    image,
    user: o.user,
    capAdd: o.capabilities ?? [],
    binds: (o.binds ?? []).map(parseBind),
    devices: (o.devices ?? []).map(parseDevice),
    network: o.network ?? "none",
    readOnlyRootfs: o.readOnlyRootfs ?? true,
    env: m.spec.env ?? {},
    ...(workloadSocketDir ? { workloadSocketDir } : {}),
  };
}

/** uid and gid of a plan's `user` ("uid[:gid]"), for the workload socket's ownership. */
export function userIds(user: string): { uid: number; gid: number } {
  const [u = "0", g] = user.split(":");
  return { uid: Number(u), gid: Number(g ?? u) };
}
