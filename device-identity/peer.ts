import { execFile } from "node:child_process";
import { readdir, readFile, readlink } from "node:fs/promises";
import type { Socket } from "node:net";
import { promisify } from "node:util";
import type { DockerClient } from "../engine/index.js";
import type { AttestedModule } from "./attested-modules.js";
import type { ContainerVerdict } from "./container-check.js";
import { peerByKernel } from "./peer-cred.js";

const execFileAsync = promisify(execFile);

/** Node keeps the descriptor on its private handle; the accepted connection's socket inode is read from /proc. */
function socketInode(socket: Socket): Promise<string | undefined> {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== "number" || fd < 0) return Promise.resolve(undefined);
  return readlink(`/proc/self/fd/${fd}`).then((l) => /^socket:\[(\d+)\]$/.exec(l)?.[1], () => undefined);
}

const SS_ROW = /^u_\w+\s+\S+\s+\d+\s+\d+\s+\S+\s+(\d+)\s+\S+\s+(\d+)\s*(.*)$/;

/** Unix socket rows (`ss -xp`) of this network namespace, or of the one process `netnsOf` lives in. */
async function unixRows(netnsOf?: number): Promise<RegExpExecArray[]> {
  const [cmd, args] = netnsOf ? ["nsenter", ["-t", String(netnsOf), "-n", "ss", "-xpnH"]] : ["ss", ["-xpnH"]];
  try {
    const { stdout } = await execFileAsync(cmd, args as string[], { encoding: "utf8", maxBuffer: 16 << 20, timeout: 10_000 });
    return stdout.split("\n").map((l) => SS_ROW.exec(l.trim())).filter((m): m is RegExpExecArray => m !== null);
  } catch {
    return [];
  }
}

/** The process holding socket inode `inode`, by scanning every process's descriptors. */
async function pidHoldingSocket(inode: string): Promise<number> {
  const target = `socket:[${inode}]`;
  for (const pid of (await readdir("/proc").catch(() => [] as string[])).filter((d) => /^\d+$/.test(d))) {
    for (const fd of await readdir(`/proc/${pid}/fd`).catch(() => [] as string[])) {
      if ((await readlink(`/proc/${pid}/fd/${fd}`).catch(() => "")) === target) return Number(pid);
    }
  }
  return 0;
}

/** The peer of our socket `own` among `rows`: its pid, or 0 when `own` is not among them. */
async function peerPid(rows: RegExpExecArray[], own: string): Promise<number> {
  const peerInode = rows.find((m) => m[1] === own)?.[2];
  if (!peerInode || peerInode === "0") return 0;
  const row = rows.find((m) => m[1] === peerInode);
  return Number(/pid=(\d+)/.exec(row?.[3] ?? "")?.[1]) || (await pidHoldingSocket(peerInode));
}

/** cgroup v1 (cgroupfs: /docker/<id>) and systemd / cgroup v2 (docker-<id>.scope) layouts. */
function containerInCgroup(cgroup: string): string | undefined {
  return /(?:\/docker\/|docker-)([0-9a-f]{64})/.exec(cgroup)?.[1];
}

async function containerOf(pid: number): Promise<string | undefined> {
  return containerInCgroup(await readFile(`/proc/${pid}/cgroup`, "utf8").catch(() => ""));
}

/** How callers were identified (status, tests): by the kernel's SO_PEERPIDFD, or by `ss` (a process per check). */
export const callerLookups = { kernel: 0, ss: 0 };

function verdictFor(container: string | undefined, m: AttestedModule): ContainerVerdict {
  if (container !== undefined && container !== m.containerId) {
    return { ok: false, reason: `the caller runs in container ${container.slice(0, 12)}, not in module ${m.name}'s container` };
  }
  return container === undefined ? { ok: true, onHost: true } : { ok: true };
}

/**
 * Is the process calling module `m`'s workload socket inside `m`'s container? The socket directory is mounted into
 * that container only, but root can mount it anywhere: so the kernel is asked. The accepted end of a unix connection
 * lives in the *caller's* network namespace, so it is looked for in this namespace (callers on the host network) and
 * in the module container's; the peer process found there must belong to the module's container (cgroup). A process
 * on the host itself (root: the socket directory is not reachable otherwise) is let through for operators and tests.
 */
export async function checkCaller(
  docker: DockerClient,
  m: AttestedModule,
  socket: Socket,
  /** The container's main pid without asking the engine when it can (container-check.ts `containerPid`). */
  pidOf: (containerId: string) => Promise<number | undefined> = async (id) => (await docker.inspectContainer(id))?.State.Pid || undefined,
): Promise<ContainerVerdict> {
  // The kernel names the connecting process directly (no process spawned, any network namespace).
  const peer = await peerByKernel(socket);
  if (peer) {
    callerLookups.kernel++;
    return verdictFor(containerInCgroup(peer.cgroup), m);
  }
  callerLookups.ss++;
  const own = await socketInode(socket);
  if (!own) return { ok: false, reason: `could not read the socket of the call to module ${m.name}` };
  let pid = await peerPid(await unixRows(), own);
  if (!pid) {
    const containerPid = await pidOf(m.containerId);
    if (containerPid) pid = await peerPid(await unixRows(containerPid), own);
  }
  if (!pid) return { ok: false, reason: `the caller is not in module ${m.name}'s container (its connection comes from another network namespace)` };
  return verdictFor(await containerOf(pid), m);
}
