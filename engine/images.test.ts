import { describe, it, expect, beforeAll } from "vitest";
import { DockerClient } from "./docker.js";
import { ensureImage, imageStillPinned } from "./images.js";
import { buildBusyboxImage, removeLocalImage, dockerCli, DOCKER_SOCKET, type BuiltImage } from "../test/fixtures/images.js";

const docker = new DockerClient({ socketPath: DOCKER_SOCKET });

describe("images pinned by digest (real dockerd + registry)", () => {
  let img: BuiltImage;
  beforeAll(() => {
    img = buildBusyboxImage("pin", `pin-${process.pid}-${Date.now()}`);
  });

  it("pulls a missing image by digest and returns its image ID", async () => {
    removeLocalImage(img.ref);
    const steps: string[] = [];
    const r = await ensureImage(docker, img, (p) => steps.push(p.status));
    expect(r.pulled).toBe(true);
    expect(r.imageId).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(steps.length).toBeGreaterThan(0);
    expect((await docker.inspectImage(r.imageId))?.RepoDigests).toContain(img.ref);
  });

  it("never pulls again when the image with that digest is present", async () => {
    const r = await ensureImage(docker, img);
    expect(r.pulled).toBe(false);
  });

  it("refuses a digest the registry does not have", async () => {
    const bogus = { repository: img.repository, digest: "sha256:" + "0".repeat(64) };
    await expect(ensureImage(docker, bogus)).rejects.toThrow(/manifest unknown|not found/i);
  });

  it("refuses an image that is not pinned by digest", async () => {
    await expect(ensureImage(docker, { repository: img.repository, digest: "latest" })).rejects.toThrow(/not pinned/);
  });

  it("notices an image swapped under its tag: the old pin no longer names the new content", async () => {
    const first = await ensureImage(docker, img);
    const tag = img.repository + ":swap";
    const swapped = buildBusyboxImage("pin", `swap-${process.pid}-${Date.now()}`);
    dockerCli(["tag", swapped.ref, tag]);
    // The swapped image is a different image ID: pinning the old digest still resolves to the old content.
    expect(swapped.digest).not.toBe(img.digest);
    expect(await imageStillPinned(docker, first.imageId, img)).toBe(true);
    const swappedLocal = await docker.inspectImage(swapped.ref);
    expect(await imageStillPinned(docker, swappedLocal?.Id ?? "", img)).toBe(false);
  });
});
