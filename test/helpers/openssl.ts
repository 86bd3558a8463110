import { spawnSync } from "node:child_process";

/** Run the real openssl CLI; returns status and combined output (never throws). */
export function openssl(args: string[], input?: string): { status: number; out: string } {
  const r = spawnSync("openssl", args, { encoding: "utf8", input, env: { ...process.env, OPENSSL_CONF: "/dev/null" } });
  return { status: r.status ?? -1, out: `${r.stdout ?? ""}${r.stderr ?? ""}` };
}

/** `openssl verify -x509_strict` of `leaf` against `root` with `untrusted` intermediates (files). */
export function opensslVerify(opts: { root: string; untrusted?: string[]; leaf: string; purpose?: string; extra?: string[] }): { status: number; out: string } {
  const args = ["verify", "-x509_strict", "-CAfile", opts.root];
  for (const u of opts.untrusted ?? []) args.push("-untrusted", u);
  if (opts.purpose) args.push("-purpose", opts.purpose);
  args.push(...(opts.extra ?? []), opts.leaf);
  return openssl(args);
}
