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

  it("censors a secret under any field two levels down (arrays too), in errors, bindings and interpolated objects, without changing the caller's object", () => {
    const { lines, destination } = capture();
    const log = createLogger("hsm", { destination }).child({ session: { token: "child-token" } });
    const modules = [{ name: "m1", key: "module-key-pem" }];
    const fields = { modules, deep: { any: { password: "pw-nested" } }, err: Object.assign(new Error("boom"), { secret: "err-secret" }) };
    log.info(fields, "x %j", { cfg: { apiToken: "interp-token" } });
    log.error(Object.assign(new Error("plain"), { sas: "sas-value" }));
    const out = lines.join("");
    for (const secret of ["child-token", "module-key-pem", "pw-nested", "err-secret", "interp-token", "sas-value"]) expect(out).not.toContain(secret);
    const [first, second] = lines.map((l) => JSON.parse(l) as { msg: string; err: { stack: string } });
    expect(first).toMatchObject({ session: { token: "[redacted]" }, modules: [{ name: "m1", key: "[redacted]" }], deep: { any: { password: "[redacted]" } } });
    expect(first?.err).toMatchObject({ type: "Error", message: "boom", secret: "[redacted]" });
    expect(first?.err.stack).toContain("boom");
    expect(first?.msg).toContain("[redacted]");
    expect(second).toMatchObject({ msg: "plain", err: { message: "plain", sas: "[redacted]" } });
    expect(modules[0]?.key).toBe("module-key-pem");
    expect(fields.err.secret).toBe("err-secret");
  });

  it("scrubs PINs from pkcs11 URIs", () => {
    expect(redactString("pkcs11:token=t;object=k;pin-value=1234")).toBe("pkcs11:token=t;object=k;pin-value=[redacted]");
    expect(redactString("pkcs11:object=k?pin-source=/etc/pin")).toBe("pkcs11:object=k?pin-source=[redacted]");
  });
});
