import { describe, it, expect, beforeAll } from "vitest";
import { createServer, request } from "node:http";
import { DockerClient, type PullProgress } from "./docker.js";
import { ensureImage, imageStillPinned } from "./images.js";
import { buildBusyboxImage, removeLocalImage, dockerCli, DOCKER_SOCKET, REGISTRY, type BuiltImage } from "../test/fixtures/images.js";

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

  it("a pull that fails inside the engine's progress stream (after 200) fails with the engine's message, and leaves no image", async () => {
    // The real registry's bytes, one flipped per blob chunk, through a proxy dockerd trusts (127.0.0.0/8 is insecure by
    // default): the engine has answered 200 and streamed progress before it finds a blob that fails verification.
    const bad = buildBusyboxImage("corrupt", `corrupt-${process.pid}-${Date.now()}`);
    const id = dockerCli(["image", "inspect", "-f", "{{.Id}}", bad.ref]).trim();
    dockerCli(["image", "rm", "-f", id]);
    const [host, port] = REGISTRY.split(":");
    const proxy = createServer((req, res) => {
      const up = request({ host, port: Number(port), method: req.method, path: req.url, headers: req.headers }, (u) => {
        res.writeHead(u.statusCode ?? 502, u.headers);
        if (!/\/blobs\/sha256:/.test(req.url ?? "")) {
          u.pipe(res);
          return;
        }
        u.on("data", (c: Buffer) => {
          const b = Buffer.from(c);
          b[0] = (b[0] ?? 0) ^ 0xff;
          res.write(b);
        });
        u.on("end", () => res.end());
      });
      req.pipe(up);
    });
    await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", () => r()));
    try {
      const viaProxy = { repository: bad.repository.replace(REGISTRY, `127.0.0.1:${(proxy.address() as { port: number }).port}`), digest: bad.digest };
      const progress: PullProgress[] = [];
      const err = await ensureImage(docker, viaProxy, (p) => progress.push(p)).then(() => undefined, (e: unknown) => e as Error & { code?: string });
      expect(err?.message).toMatch(/^docker POST \/images\/create: .*verification failed for digest sha256:[0-9a-f]{64}$/);
      expect(err?.code).toBe("UNAVAILABLE");
      expect(progress.map((p) => p.status)).toContain(`Pulling from ${bad.repository.slice(REGISTRY.length + 1)}`);
      expect(await docker.inspectImage(`${viaProxy.repository}@${viaProxy.digest}`)).toBeUndefined();
    } finally {
      await new Promise<void>((r) => proxy.close(() => r()));
    }
  });
});
