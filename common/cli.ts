import type { LoadConfigOptions } from "./config.js";
import { isEdgeTrustError } from "./errors.js";

/**
 * Command-line plumbing shared by every component's `cli.ts`: one-line failures, `--json` output, and the config
 * reader. The reader is handed in by the command tree (`cli/`), which composes the whole edgetrust.yaml schema from
 * every component's section; a component names only the sections it reads, so no component imports the tree.
 */
export type ConfigReader<T> = (opts?: LoadConfigOptions) => T;

/** The `log:` section every command reads. */
export interface LogSection {
  level: "trace" | "debug" | "info" | "warn" | "error";
}

/** Set by commands that were given --json so failures are machine-readable too. */
let jsonMode = false;
function setJsonMode(on: boolean): void {
  jsonMode = on;
}

/** What a command prints: JSON for scripts when --json, otherwise the human text. */
export function emit(json: boolean, value: unknown, human: () => string): void {
  process.stdout.write(json ? JSON.stringify(value, null, 2) + "\n" : human().replace(/\n?$/, "\n"));
}

/** A failure as one line on stderr (or a JSON object with --json) and exit code 1. */
export function reportFailure(err: unknown): number {
  const line = isEdgeTrustError(err) ? err.toLine() : err instanceof Error ? err.message : String(err);
  if (jsonMode) {
    const code = isEdgeTrustError(err) ? err.code : "INTERNAL";
    process.stdout.write(JSON.stringify({ ok: false, code, error: line }) + "\n");
  }
  process.stderr.write(`edgetrust: ${line.split("\n").join("\n  ")}\n`);
  return 1;
}

/** Wrap a command action so every failure becomes a one-line reason and a non-zero exit, never a stack trace. */
export function action<A extends unknown[]>(fn: (...args: A) => Promise<void> | void): (...args: A) => Promise<void> {
  return async (...args: A) => {
    const opts = args.find((a) => a && typeof a === "object" && "json" in (a as object)) as { json?: boolean } | undefined;
    if (opts?.json) setJsonMode(true);
    try {
      await fn(...args);
    } catch (e) {
      process.exitCode = reportFailure(e);
    }
  };
}
