import { readFileSync } from "node:fs";
import { EdgeTrustError } from "../common/index.js";

/**
 * Where the user PIN comes from. The PIN itself is never logged and never put in an error message; messages name
 * only the file or variable it should come from.
 */
interface PinSource {
  /** File whose first line is the PIN (preferred). */
  pinFile?: string;
  /** Environment variable holding the PIN, used when pinFile is empty. */
  pinEnv?: string;
  /** An RFC 7512 `pin-source` (`file:/path` or a path). */
  pinSource?: string;
  env?: NodeJS.ProcessEnv;
}

export function readPin(src: PinSource): string {
  const file = src.pinFile || (src.pinSource ? src.pinSource.replace(/^file:(\/\/)?/, "") : "");
  if (file) {
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new EdgeTrustError("HSM_PIN_MISSING", `PIN file ${file} cannot be read (${code ?? "error"})`, {
        hint: "create the file with the user PIN on its first line, readable only by the service user (chmod 600)",
      });
    }
    const pin = (text.split("\n")[0] ?? "").replace(/\r$/, "");
    if (pin === "") {
      throw new EdgeTrustError("HSM_PIN_MISSING", `PIN file ${file} is empty`, { hint: "put the user PIN on the file's first line" });
    }
    return pin;
  }
  const envName = src.pinEnv ?? "";
  const env = src.env ?? process.env;
  const pin = envName ? env[envName] : undefined;
  if (pin === undefined || pin === "") {
    throw new EdgeTrustError("HSM_PIN_MISSING", envName ? `no HSM user PIN: hsm.pinFile is empty and ${envName} is not set` : "no HSM user PIN configured", {
      hint: `set hsm.pinFile (or --pin-file) to a file holding the PIN${envName ? `, or export ${envName}` : ""}`,
    });
  }
  return pin;
}
