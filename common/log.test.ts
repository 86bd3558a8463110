import { describe, it, expect } from "vitest";
import { Writable } from "node:stream";
import { createLogger, redactString } from "./log.js";

function capture() {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk, _enc, cb) {
      lines.push(String(chunk));
      cb();
    },
  });
  return { lines, destination };
}

describe("logging", () => {
  it("writes JSON lines with the component name", () => {
    const { lines, destination } = capture();
    createLogger("hsm", { destination }).info({ slot: 3 }, "opened");
    const rec = JSON.parse(lines[0] ?? "{}");
    expect(rec).toMatchObject({ component: "hsm", level: "info", msg: "opened", slot: 3 });
  });

  it("never writes secrets, at the top level or nested", () => {
    const { lines, destination } = capture();
    const log = createLogger("hsm", { destination });
    log.info({ pin: "123456", cfg: { userPin: "987654", token: "tkn-secret" }, req: { headers: { authorization: "Bearer abc" } } }, "x");
    const out = lines.join("");
    for (const secret of ["123456", "987654", "tkn-secret", "Bearer abc"]) expect(out).not.toContain(secret);
    expect(out).toContain("[redacted]");
  });

  it("scrubs PINs from pkcs11 URIs", () => {
    expect(redactString("pkcs11:token=t;object=k;pin-value=1234")).toBe("pkcs11:token=t;object=k;pin-value=[redacted]");
    expect(redactString("pkcs11:object=k?pin-source=/etc/pin")).toBe("pkcs11:object=k?pin-source=[redacted]");
  });
});
