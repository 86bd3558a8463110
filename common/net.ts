import { createServer, type Socket } from "node:net";

/** A loopback TCP port free at the moment of asking (tests, the demo, benchmarks). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      s.close(() => (a && typeof a === "object" ? resolve(a.port) : reject(new Error("no free port"))));
    });
  });
}

/**
 * A loopback port held by a listener that accepts and at once closes every connection: a peer that is down, for sure
 * (nothing else can take the port meanwhile). `release` frees it; calling it twice is harmless.
 */
export async function holdDownPort(): Promise<{ port: number; release: () => Promise<void> }> {
  const socks = new Set<Socket>();
  const s = createServer((sock) => {
    socks.add(sock);
    sock.on("close", () => socks.delete(sock));
    sock.destroy();
  });
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  const port = (s.address() as { port: number }).port;
  let released = false;
  const release = async () => {
    if (released) return;
    released = true;
    for (const k of socks) k.destroy();
    await new Promise<void>((r) => s.close(() => r()));
  };
  return { port, release };
}

/**
 * Longest unix socket path, in bytes: Linux's sun_path holds 108 with the terminating NUL that most clients (curl,
 * Docker, C and Rust programs) write. Node does not refuse a longer path: it binds or connects to the path cut at 108
 * bytes, so a daemon would listen where no client looks and then fail on its own file operations.
 */
export const UNIX_SOCKET_PATH_MAX = 107;

/** Why `path` cannot be a unix socket path (one line), or undefined when it fits. */
export function unixSocketPathProblem(path: string): string | undefined {
  const n = Buffer.byteLength(path);
  if (n <= UNIX_SOCKET_PATH_MAX) return undefined;
  return `unix socket path ${JSON.stringify(path)} is ${n} bytes; the kernel's limit (sun_path) is ${UNIX_SOCKET_PATH_MAX} bytes`;
}
