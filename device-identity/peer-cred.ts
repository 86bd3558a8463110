import { closeSync, readFileSync } from "node:fs";
import type { Socket } from "node:net";

/** `getsockopt(2)` through koffi (FFI): Node exposes no socket option for a unix connection's peer. */
type GetSockOpt = (fd: number, level: number, name: number, optval: Buffer, optlen: number[]) => number;

const SOL_SOCKET = 1;
/** Linux ≥ 6.5: a pidfd of the process that connected (it pins that process: its pid cannot be reused while it lives). */
const SO_PEERPIDFD = 77;

let getsockopt: GetSockOpt | null | undefined;

async function load(): Promise<GetSockOpt | null> {
  if (getsockopt !== undefined) return getsockopt;
  try {
    const koffi = (await import("koffi")).default;
    getsockopt = koffi.load("libc.so.6").func("int getsockopt(int, int, int, _Out_ uint8_t *optval, _Inout_ uint32_t *optlen)") as GetSockOpt;
  } catch {
    getsockopt = null;
  }
  return getsockopt;
}

/** The pid a pidfd refers to in our pid namespace; -1 once that process is gone, 0 when it is not visible here. */
function pidOf(pidfd: number): number {
  const m = /^Pid:\s*(-?\d+)$/m.exec(readFileSync(`/proc/self/fdinfo/${pidfd}`, "utf8"));
  return m ? Number(m[1]) : -1;
}

/**
 * The process that connected `socket` and its cgroup, from the kernel: SO_PEERPIDFD names the connecting process
 * itself (any network namespace), and its cgroup is read between two looks at the pidfd — a process still alive after
 * the read is the one whose cgroup was read (a pid is reused only after its process is reaped). No process is spawned.
 * `undefined` when the kernel cannot say (koffi missing, a kernel without SO_PEERPIDFD, the connecting process gone,
 * a cgroup that cannot be read): the caller then asks `ss` (peer.ts).
 */
export async function peerByKernel(socket: Socket): Promise<{ pid: number; cgroup: string } | undefined> {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== "number" || fd < 0) return undefined;
  const gso = await load();
  if (!gso) return undefined;
  const out = Buffer.alloc(4);
  if (gso(fd, SOL_SOCKET, SO_PEERPIDFD, out, [4]) !== 0) return undefined;
  const pidfd = out.readInt32LE(0);
  try {
    const pid = pidOf(pidfd);
    if (pid <= 0) return undefined;
    let cgroup: string;
    try {
      cgroup = readFileSync(`/proc/${pid}/cgroup`, "utf8");
    } catch {
      return undefined;
    }
    if (!cgroup.trim() || pidOf(pidfd) !== pid) return undefined;
    return { pid, cgroup };
  } finally {
    closeSync(pidfd);
  }
}
