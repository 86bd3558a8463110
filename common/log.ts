import { pino, type Logger, type LoggerOptions } from "pino";

/**
 * pino JSON logs for every component. Secrets never reach a log: every field whose name says it holds a secret is
 * censored wherever it appears (two levels deep), and `redactString` scrubs PIN-bearing strings such as pkcs11: URIs.
 */
const SECRET_KEYS = [
  "pin", "userPin", "soPin", "password", "passphrase", "secret", "token", "apiToken", "authorization",
  "privateKey", "key", "privateKeyIdentifier", "symmetricKey", "groupKey", "sas", "cookie",
];

const redactPaths = SECRET_KEYS.flatMap((k) => [k, `*.${k}`, `*.*.${k}`, `req.headers.${k}`]);

export type { Logger };

export interface LogOptions {
  level?: string;
  /** Write to this destination (tests pass a stream to inspect output). */
  destination?: NodeJS.WritableStream;
}

export function createLogger(component: string, opts: LogOptions = {}): Logger {
  const options: LoggerOptions = {
    name: "edgetrust",
    level: opts.level ?? process.env.EDGETRUST_LOG_LEVEL ?? "info",
    base: { component },
    redact: { paths: redactPaths, censor: "[redacted]" },
    formatters: { level: (label) => ({ level: label }) },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  return opts.destination ? pino(options, opts.destination as pino.DestinationStream) : pino(options, pino.destination(2));
}

/** Remove PIN values from strings that may embed them (pkcs11: URIs, command lines). */
export function redactString(s: string): string {
  return s
    .replace(/(pin-value=)[^;&?\s]*/gi, "$1[redacted]")
    .replace(/(pin-source=)[^;&?\s]*/gi, "$1[redacted]");
}
