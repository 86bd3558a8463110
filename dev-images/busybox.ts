import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync, copyFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/**
 * Module images for development, tests, the demo and benchmarks: built from local files with the docker CLI (there is
 * no base image to pull here) and pushed to the local registry, then used pinned by digest like any other.
 */

/** Where `scripts/setup.sh` runs the project's dockerd and registry. */
export const DOCKER_SOCKET = process.env.EDGETRUST_DOCKER_SOCKET ?? "/run/edgetrust/docker.sock";
export const REGISTRY = process.env.EDGETRUST_REGISTRY ?? "127.0.0.1:5000";
const BUSYBOX = "/bin/busybox";

export interface BuiltImage {
  repository: string;
  digest: string;
  ref: string;
}

function docker(args: string[], input?: string): string {
  return execFileSync("docker", args, {
    env: { ...process.env, DOCKER_HOST: `unix://${DOCKER_SOCKET}` },
    encoding: "utf8",
    input,
    stdio: ["pipe", "pipe", "pipe"],
    timeout: 120_000,
  });
}

/**
 * Build a tiny module image from Debian's busybox-static, push it to the local registry and return its digest.
 * `marker` goes into the image so different markers give different digests.
 */
export function buildBusyboxImage(name: string, marker: string, cmd: string[] = ["sh", "-c", "sleep 3600"]): BuiltImage {
  const dir = mkdtempSync(join(tmpdir(), "et-img-"));
  try {
    copyFileSync(BUSYBOX, join(dir, "busybox"));
    writeFileSync(join(dir, "marker"), marker);
    writeFileSync(
      join(dir, "Dockerfile"),
      [
        "FROM scratch",
        "COPY busybox /bin/busybox",
        "COPY marker /etc/edgetrust-marker",
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]',
        `ENTRYPOINT []`,
        `CMD ${JSON.stringify(cmd)}`,
      ].join("\n"),
    );
    const tag = `${REGISTRY}/edgetrust-test/${name}:${marker.replace(/[^a-zA-Z0-9_.-]/g, "-").slice(0, 60)}`;
    docker(["build", "-q", "-t", tag, dir]);
    const out = docker(["push", tag]);
    const m = /digest: (sha256:[0-9a-f]{64})/.exec(out);
    if (!m?.[1]) throw new Error(`push of ${tag} printed no digest: ${out}`);
    const repository = tag.slice(0, tag.lastIndexOf(":"));
    return { repository, digest: m[1], ref: `${repository}@${m[1]}` };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Remove every local copy of an image so the next use must pull it. */
export function removeLocalImage(ref: string): void {
  try {
    docker(["image", "rm", "-f", ref]);
  } catch {
    /* not present */
  }
}

export function dockerCli(args: string[]): string {
  return docker(args);
}
