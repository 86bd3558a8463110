import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { mkdtempSync, writeFileSync, chownSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DockerClient } from "../engine/index.js";
import { ensureImage, type ResolvedImage } from "../engine/index.js";
import { createModuleContainer, listManaged, type ContainerPlan } from "./containers.js";
import { buildBusyboxImage, DOCKER_SOCKET } from "../test/fixtures/images.js";

const docker = new DockerClient({ socketPath: DOCKER_SOCKET });
const suffix = `${process.pid}`;

function plan(image: ResolvedImage, over: Partial<ContainerPlan> = {}): ContainerPlan {
  return {
    deviceId: "dev-probe",
    module: `probe-${suffix}`,
    deploymentId: "dep-1",
    manifestVersion: 7,
    image,
    user: "1000:1000",
    capAdd: [],
    binds: [],
    devices: [],
    network: "none",
    readOnlyRootfs: true,
    env: { GREETING: "hi" },
    ...over,
  };
}

async function runToExit(p: ContainerPlan): Promise<{ code: number; out: string }> {
  const id = await createModuleContainer(docker, p);
  await docker.startContainer(id);
  const code = await docker.waitContainer(id);
  const out = await docker.logs(id);
  await docker.removeContainer(id);
  return { code, out };
}

describe("module containers within policy (real dockerd)", () => {
  let image: ResolvedImage;
  beforeAll(async () => {
    const built = buildBusyboxImage("probe", `probe-${suffix}-${Date.now()}`);
    image = await ensureImage(docker, built);
  });
  afterAll(async () => {
    await docker.removeContainer(`edgetrust-probe-${suffix}`);
  });

  it("runs as the planned non-root user with every capability dropped", async () => {
    const { code, out } = await runToExit(plan(image, { cmd: ["sh", "-c", "id -u; grep CapEff /proc/self/status; echo $GREETING"] }));
    expect(code).toBe(0);
    const [uid, capLine, greeting] = out.trim().split("\n");
    expect(uid).toBe("1000");
    expect(capLine).toMatch(/CapEff:\s+0000000000000000/);
    expect(greeting).toBe("hi");
  });

  it("has a read-only root filesystem and no network but loopback", async () => {
    const { out } = await runToExit(plan(image, { cmd: ["sh", "-c", "touch /x 2>&1 || echo ro; ls /sys/class/net"] }));
    expect(out).toContain("ro");
    expect(out.trim().split("\n").slice(-1)[0]).toBe("lo");
  });

  it("adds only the granted capability", async () => {
    const { out } = await runToExit(plan(image, { user: "0:0", capAdd: ["CAP_NET_BIND_SERVICE"], cmd: ["sh", "-c", "grep CapEff /proc/self/status"] }));
    // CAP_NET_BIND_SERVICE is bit 10 -> 0x400.
    expect(out).toMatch(/CapEff:\s+0000000000000400/);
  });

  it("mounts the module's workload socket directory read-only and nothing else of the daemon's", async () => {
    const dir = mkdtempSync(join(tmpdir(), "wl-"));
    writeFileSync(join(dir, "marker"), "mine");
    // The identity daemon hands each module's socket directory to that module's uid.
    chownSync(dir, 1000, 1000);
    chownSync(join(dir, "marker"), 1000, 1000);
    const { out } = await runToExit(
      plan(image, { workloadSocketDir: dir, cmd: ["sh", "-c", "cat /run/edgetrust/workload/marker; echo; touch /run/edgetrust/workload/y 2>&1 || echo denied; ls /run/edgetrust"] }),
    );
    const lines = out.trim().split("\n");
    expect(lines[0]).toBe("mine");
    expect(lines).toContain("denied");
    expect(lines.slice(-1)[0]).toBe("workload");
  });

  it("labels containers so the agent can find and check them", async () => {
    const id = await createModuleContainer(docker, plan(image, { cmd: ["sleep", "30"] }));
    const managed = (await listManaged(docker, "dev-probe")).find((c) => c.id === id);
    expect(managed).toMatchObject({ module: `probe-${suffix}`, deploymentId: "dep-1", manifestVersion: 7, digest: image.digest, imageId: image.imageId });
    const info = await docker.inspectContainer(id);
    expect(info?.HostConfig).toMatchObject({ Privileged: false, CapDrop: ["ALL"], ReadonlyRootfs: true, NetworkMode: "none" });
    await docker.removeContainer(id);
  });
});
