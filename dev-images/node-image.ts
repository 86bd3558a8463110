/**
 * A Node.js module image built from this machine's own node binary (there are no registry base images here):
 *
 *   node-runtime  FROM scratch: the node binary (debug symbols stripped when `strip` exists), exactly the shared
 *                 libraries `ldd` lists and the dynamic loader. No shell, no CA store, no package manager. Built once
 *                 per node binary and kept locally under a tag derived from the binary, so later runs skip it.
 *   module image  FROM node-runtime: dev-images/module-image/*.mjs plus the dependency closure of the npm packages the
 *                 program imports (mqtt, @peculiar/x509, reflect-metadata), copied from node_modules without type
 *                 declarations, source maps or docs; and a marker, so each marker gives its own digest.
 *
 * Everything runs through the async docker CLI against the project dockerd, so an in-process server keeps serving
 * while an image builds.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { copyFile, cp, mkdir, mkdtemp, readFile, readdir, realpath, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, dirname, join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { DOCKER_SOCKET, REGISTRY, type BuiltImage } from "./busybox.js";

const execFileAsync = promisify(execFile);

/**
 * The source tree root: the nearest folder above this file with a package.json. From the sources that is `..`; from
 * the build output (dist/dev-images/) it is `../..` — the program and node_modules are read from the source tree.
 */
function sourceRoot(): string {
  for (let d = dirname(fileURLToPath(import.meta.url)); ; d = dirname(d)) {
    if (existsSync(join(d, "package.json")) && existsSync(join(d, "dev-images", "module-image"))) return d;
    if (dirname(d) === d) throw new Error("dev-images/module-image not found above " + fileURLToPath(import.meta.url));
  }
}
const REPO_ROOT = sourceRoot();
/** The module program (plain ESM JavaScript, no build step), read from the source tree at run time. */
const MODULE_PROGRAM_DIR = join(REPO_ROOT, "dev-images", "module-image");
/** The npm packages the module program imports; their dependency closure goes into the image. */
const PROGRAM_PACKAGES = ["mqtt", "@peculiar/x509", "reflect-metadata"];
/** Where the program sits in the image. */
const MODULE_ENTRY = "/app/module.mjs";

export interface NodeModuleImage extends BuiltImage {
  /** Uncompressed image size as the engine reports it. */
  sizeBytes: number;
  /** Of which the node runtime layer (binary + libraries). */
  runtimeBytes: number;
  /** Wall time of this build: runtime (if it had to be built) + module layer + push. */
  buildMs: number;
  runtimeTag: string;
  /** False when the runtime image was already there (the usual case after the first run on a machine). */
  runtimeBuilt: boolean;
}

/**
 * Another program, another engine: `program` names a folder of .mjs files, the packages they import and the entry
 * file (e.g. an unmodified Azure IoT Edge module); `dockerSocket` + `registry` build and push with another dockerd
 * (a test's own, in its own network namespace).
 */
interface NodeImageOptions {
  program?: { dir: string; packages: string[]; entry: string };
  dockerSocket?: string;
  registry?: string;
}

async function docker(args: string[], socket = DOCKER_SOCKET): Promise<string> {
  const { stdout } = await execFileAsync("docker", args, {
    env: { ...process.env, DOCKER_HOST: `unix://${socket}` },
    encoding: "utf8",
    timeout: 180_000,
    maxBuffer: 16 * 1024 * 1024,
  });
  return stdout;
}

async function imageSize(ref: string, socket?: string): Promise<number | undefined> {
  try {
    return Number((await docker(["image", "inspect", "--format", "{{.Size}}", ref], socket)).trim());
  } catch {
    return undefined;
  }
}

/** The node binary and what the loader needs to run it: `ldd`'s list (resolved paths kept under the listed name). */
async function nodeRuntimeFiles(node = process.execPath): Promise<string[]> {
  const { stdout } = await execFileAsync("ldd", [node], { encoding: "utf8" });
  const libs: string[] = [];
  for (const line of stdout.split("\n")) {
    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"; vdso has no file.
    const m = /(?:=>\s*)?(\/\S+)\s+\(0x[0-9a-f]+\)/.exec(line);
    if (m?.[1]) libs.push(m[1]);
    else if (/=>\s*not found/.test(line)) throw new Error(`ldd ${node}: ${line.trim()}`);
  }
  if (!libs.some((l) => basename(l).startsWith("ld-linux"))) throw new Error(`ldd ${node} named no dynamic loader`);
  return [node, ...libs];
}

const runtimePromises = new Map<string, Promise<{ tag: string; built: boolean; bytes: number }>>();

/** Build (once per node binary and engine) the FROM-scratch runtime image; returns its local tag. */
function nodeRuntimeImage(socket = DOCKER_SOCKET, registry = REGISTRY): Promise<{ tag: string; built: boolean; bytes: number }> {
  const k = `${socket}\0${registry}`;
  let runtimePromise = runtimePromises.get(k);
  runtimePromise ??= (async () => {
    const files = await nodeRuntimeFiles();
    const h = createHash("sha256");
    for (const f of files) {
      const s = await stat(f);
      h.update(`${f}\0${s.size}\0${s.mtimeMs}\0${s.ino}\n`);
    }
    const tag = `${registry}/edgetrust-test/node-runtime:${process.versions.node}-${h.digest("hex").slice(0, 12)}`;
    const existing = await imageSize(tag, socket);
    if (existing !== undefined) return { tag, built: false, bytes: existing };
    const dir = await mkdtemp(join(tmpdir(), "et-node-rt-"));
    try {
      const [node = "", ...libs] = files;
      await mkdir(join(dir, "rootfs/usr/bin"), { recursive: true });
      const nodeDest = join(dir, "rootfs/usr/bin/node");
      try {
        // Debug info is most of what strip removes; the dynamic symbol table (for native addons) stays.
        await execFileAsync("strip", ["--strip-unneeded", "-o", nodeDest, node]);
      } catch {
        await copyFile(node, nodeDest);
      }
      for (const lib of libs) {
        const dest = join(dir, "rootfs", lib);
        await mkdir(dirname(dest), { recursive: true });
        await copyFile(await realpath(lib), dest);
      }
      await writeFile(join(dir, "Dockerfile"), ["FROM scratch", "COPY rootfs/ /", 'ENTRYPOINT ["/usr/bin/node"]', ""].join("\n"));
      await docker(["build", "-q", "-t", tag, dir], socket);
      return { tag, built: true, bytes: (await imageSize(tag, socket)) ?? 0 };
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  })();
  runtimePromises.set(k, runtimePromise);
  runtimePromise.catch(() => runtimePromises.delete(k));
  return runtimePromise;
}

/** Directory of an installed package, resolved the way Node does from `fromDir` (nested node_modules first). */
function packageDir(name: string, fromDir: string): string {
  for (let d = fromDir; ; d = dirname(d)) {
    const candidate = join(d, "node_modules", name);
    if (existsSync(join(candidate, "package.json"))) return candidate;
    if (d === REPO_ROOT || dirname(d) === d) break;
  }
  throw new Error(`package ${name} (needed from ${relative(REPO_ROOT, fromDir) || "."}) is not installed`);
}

/** Package folders (relative to the repo root) of `roots` and everything they depend on at run time. */
async function dependencyClosure(roots: string[] = PROGRAM_PACKAGES): Promise<string[]> {
  const seen = new Set<string>();
  const visit = async (dir: string): Promise<void> => {
    if (seen.has(dir)) return;
    seen.add(dir);
    const pj = JSON.parse(await readFile(join(dir, "package.json"), "utf8")) as { dependencies?: Record<string, string>; optionalDependencies?: Record<string, string> };
    for (const dep of Object.keys({ ...pj.dependencies })) {
      if (dep.startsWith("@types/")) continue; // type declarations only
      await visit(packageDir(dep, dir));
    }
    for (const dep of Object.keys({ ...pj.optionalDependencies })) {
      try {
        await visit(packageDir(dep, dir));
      } catch {
        /* optional and not installed */
      }
    }
  };
  for (const r of roots) await visit(packageDir(r, REPO_ROOT));
  return [...seen].map((d) => relative(REPO_ROOT, d)).sort();
}

/** What run time does not read: type declarations, source maps, docs; nested node_modules come from the closure. */
function keep(src: string, pkgRoot: string): boolean {
  const rel = relative(pkgRoot, src);
  if (rel.split(sep).includes("node_modules")) return false;
  return !/(\.d\.[cm]?ts|\.map|\.md|\.markdown|\.tsbuildinfo)$/i.test(src);
}

const built = new Map<string, Promise<NodeModuleImage>>();

/**
 * Build the Node module image for `name` with `marker`, push it to the local registry and return its digest. Cached
 * per run: the same name and marker build once.
 */
export function buildNodeModuleImage(name: string, marker: string, opts: NodeImageOptions = {}): Promise<NodeModuleImage> {
  const key = `${name}\0${marker}\0${opts.dockerSocket ?? ""}\0${opts.program?.dir ?? ""}`;
  let p = built.get(key);
  if (!p) {
    p = buildOnce(name, marker, opts);
    built.set(key, p);
    p.catch(() => built.delete(key));
  }
  return p;
}

async function buildOnce(name: string, marker: string, opts: NodeImageOptions): Promise<NodeModuleImage> {
  const started = performance.now();
  const socket = opts.dockerSocket ?? DOCKER_SOCKET;
  const registry = opts.registry ?? REGISTRY;
  const program = opts.program ?? { dir: MODULE_PROGRAM_DIR, packages: PROGRAM_PACKAGES, entry: MODULE_ENTRY };
  const runtime = await nodeRuntimeImage(socket, registry);
  const dir = await mkdtemp(join(tmpdir(), "et-node-img-"));
  try {
    const app = join(dir, "app");
    await mkdir(app, { recursive: true });
    for (const f of await readdir(program.dir)) {
      if (f.endsWith(".mjs")) await copyFile(join(program.dir, f), join(app, f));
    }
    await writeFile(join(app, "package.json"), JSON.stringify({ name: "edgetrust-test-module", private: true, type: "module" }, null, 2));
    for (const pkg of await dependencyClosure(program.packages)) {
      const src = join(REPO_ROOT, pkg);
      await cp(src, join(app, pkg), { recursive: true, filter: (s) => keep(s, src) });
    }
    await writeFile(join(dir, "marker"), marker);
    await writeFile(
      join(dir, "Dockerfile"),
      [
        `FROM ${runtime.tag}`,
        "COPY app/ /app/",
        "COPY marker /etc/edgetrust-marker",
        "WORKDIR /app",
        // A default that is not root; the agent always sets the user the manifest and policy agreed on.
        "USER 65534:65534",
        `ENTRYPOINT ["/usr/bin/node", "${program.entry}"]`,
        "",
      ].join("\n"),
    );
    const tag = `${registry}/edgetrust-test/${name}:${marker.replace(/[^a-zA-Z0-9_.-]/g, "-").slice(0, 60)}`;
    await docker(["build", "-q", "-t", tag, dir], socket);
    const out = await docker(["push", tag], socket);
    const m = /digest: (sha256:[0-9a-f]{64})/.exec(out);
    if (!m?.[1]) throw new Error(`push of ${tag} printed no digest: ${out}`);
    const repository = tag.slice(0, tag.lastIndexOf(":"));
    return {
      repository,
      digest: m[1],
      ref: `${repository}@${m[1]}`,
      sizeBytes: (await imageSize(tag, socket)) ?? 0,
      runtimeBytes: runtime.bytes,
      buildMs: Math.round(performance.now() - started),
      runtimeTag: runtime.tag,
      runtimeBuilt: runtime.built,
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
