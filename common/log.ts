import { pino, type Logger, type LoggerOptions } from "pino";

/**
 * pino JSON logs for every component. Secrets never reach a log: every field whose name says it holds a secret is
 * censored wherever it appears (two levels deep), and `redactString` scrubs PIN-bearing strings such as pkcs11: URIs.
 */
const SECRET_KEYS = [
  "pin", "userPin", "soPin", "password", "passphrase", "secret", "token", "apiToken", "authorization",
  "privateKey", "key", "privateKeyIdentifier", "symmetricKey", "groupKey", "sas", "cookie",
];

const SECRET_KEY_SET: ReadonlySet<string> = new Set(SECRET_KEYS);
const CENSOR = "[redacted]";
/** Levels below the log object whose keys are checked: pino's `k`, `*.k` and `*.*.k` (arrays count as a level). */
const REDACT_DEPTH = 2;

/**
 * The value as it will be logged: every own property named in SECRET_KEYS, at the top level or up to REDACT_DEPTH
 * levels down, replaced by the censor. Not pino's `redact` option: its redaction (@pinojs/redact) parses each of its
 * paths again for every object it redacts, every log line (3 % of the identity daemon's busy time under load); this
 * is one Set lookup per key. Copy on write: the caller's object is never changed, and nothing is copied when there is
 * nothing to censor; a copy keeps its prototype and every own property (an Error stays an Error for pino's `err`
 * serializer).
 */
function redactSecrets(value: unknown, depth: number): unknown {
  if (value === null || typeof value !== "object" || ArrayBuffer.isView(value)) return value;
  let copy: Record<string, unknown> | undefined;
  const source = value as Record<string, unknown>;
  for (const key of Object.keys(source)) {
    const before = source[key];
    const after = SECRET_KEY_SET.has(key) ? CENSOR : depth < REDACT_DEPTH ? redactSecrets(before, depth + 1) : before;
    if (after === before) continue;
    copy ??= Array.isArray(source)
      ? (source.slice() as unknown as Record<string, unknown>)
      : (Object.create(Object.getPrototypeOf(source), Object.getOwnPropertyDescriptors(source)) as Record<string, unknown>);
    Object.defineProperty(copy, key, { value: after, enumerable: true, writable: true, configurable: true });
  }
  return copy ?? value;
}

export type { Logger };

interface LogOptions {
  level?: string;
  /** Write to this destination (tests pass a stream to inspect output). */
  destination?: NodeJS.WritableStream;
}

export function createLogger(component: string, opts: LogOptions = {}): Logger {
  const options: LoggerOptions = {
    name: "edgetrust",
    level: opts.level ?? process.env.EDGETRUST_LOG_LEVEL ?? "info",
    base: { component },
    // Every object argument (the merging object, objects interpolated into the message) goes through redactSecrets
    // before pino serialises it; child bindings too (below).
    hooks: {
      logMethod(args, method) {
        const redacted = args.map((a) => redactSecrets(a, 0)) as Parameters<typeof method>;
        method.apply(this, redacted);
      },
    },
    formatters: { level: (label) => ({ level: label }) },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  const logger = opts.destination ? pino(options, opts.destination as pino.DestinationStream) : pino(options, pino.destination(2));
  // pino runs no hook or formatter on a child's bindings: censor them here. Children are made from their parent's
  // prototype, so every descendant inherits this `child`.
  const pinoChild = logger.child as unknown as (this: Logger, bindings: pino.Bindings, childOptions?: pino.ChildLoggerOptions) => Logger;
  logger.child = function (this: Logger, bindings: pino.Bindings, childOptions?: pino.ChildLoggerOptions) {
    return pinoChild.call(this, redactSecrets(bindings, 0) as pino.Bindings, childOptions);
  } as unknown as Logger["child"];
  return logger;
}

/** Remove PIN values from strings that may embed them (pkcs11: URIs, command lines). */
export function redactString(s: string): string {
  return s
    .replace(/(pin-value=)[^;&?\s]*/gi, "$1[redacted]")
    .replace(/(pin-source=)[^;&?\s]*/gi, "$1[redacted]");
}
