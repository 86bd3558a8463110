import { describe, it, expect } from "vitest";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Type } from "@sinclair/typebox";
import { loadConfig, renderDefaults } from "./config.js";

const Section = Type.Object(
  {
    module: Type.String({ default: "/usr/lib/softhsm/libsofthsm2.so", description: "module path" }),
    poolSize: Type.Integer({ minimum: 1, default: 4, description: "sessions" }),
  },
  { additionalProperties: false, default: {}, description: "the hsm" },
);
const Schema = Type.Object({ hsm: Section }, { additionalProperties: false });

function tmpFile(text: string): string {
  const f = join(mkdtempSync(join(tmpdir(), "cfg-")), "edgetrust.yaml");
  writeFileSync(f, text);
  return f;
}

describe("loadConfig", () => {
  it("uses the documented defaults when no file exists", () => {
    expect(loadConfig(Schema, { file: "/nonexistent/edgetrust.yaml", env: {} })).toEqual({
      hsm: { module: "/usr/lib/softhsm/libsofthsm2.so", poolSize: 4 },
    });
  });

  it("file overrides defaults, environment overrides the file", () => {
    const f = tmpFile("hsm:\n  poolSize: 8\n  module: /opt/a.so\n");
    expect(loadConfig(Schema, { file: f, env: {} }).hsm).toEqual({ module: "/opt/a.so", poolSize: 8 });
    expect(loadConfig(Schema, { file: f, env: { EDGETRUST_HSM_POOL_SIZE: "2" } }).hsm.poolSize).toBe(2);
  });

  it("refuses unknown keys with file:line:col", () => {
    const f = tmpFile("hsm:\n  modul: /opt/a.so\n");
    expect(() => loadConfig(Schema, { file: f, env: {} })).toThrow(`${f}:2:3: /hsm/modul: unknown key "modul"`);
  });

  it("refuses a bad environment value", () => {
    expect(() => loadConfig(Schema, { env: { EDGETRUST_HSM_POOL_SIZE: "zero" } })).toThrow(/config\/hsm\/poolSize/);
  });

  it("a required file that is missing is an error", () => {
    expect(() => loadConfig(Schema, { file: "/nonexistent.yaml", required: true, env: {} })).toThrow(/does not exist/);
  });

  describe("unix socket paths longer than sun_path (107 bytes)", () => {
    const Sockets = Type.Object({
      dev: Type.Object(
        {
          socket: Type.String({ unixSocket: true, default: "/run/x.sock", description: "a socket" }),
          dir: Type.String({ unixSocketUnder: "/<module>/workload.sock", default: "/run/m", description: "socket dirs" }),
        },
        { additionalProperties: false, default: {}, description: "d" },
      ),
    }, { additionalProperties: false });
    const long = "/run/" + "s".repeat(103); // 108 bytes

    it("refuses a socket path from the file with file:line:col, the path and the limit", () => {
      const f = tmpFile(`dev:\n  socket: ${long}\n`);
      expect(() => loadConfig(Sockets, { file: f, env: {} })).toThrow(`${f}:2:11: /dev/socket: unix socket path "${long}" is 108 bytes; the kernel's limit (sun_path) is 107 bytes`);
    });

    it("accepts exactly 107 bytes", () => {
      const ok = "/run/" + "s".repeat(102);
      expect(loadConfig(Sockets, { env: { EDGETRUST_DEV_SOCKET: ok } }).dev.socket).toBe(ok);
    });

    it("refuses a socket directory whose shortest socket cannot fit, naming the environment variable", () => {
      const dir = "/run/" + "d".repeat(90); // 95 + "/m/workload.sock" (16) = 111 bytes
      expect(() => loadConfig(Sockets, { env: { EDGETRUST_DEV_DIR: dir } })).toThrow(
        `config/dev/dir (EDGETRUST_DEV_DIR): sockets under this directory (<dir>/<module>/workload.sock) cannot fit even with a one-character name: unix socket path "${dir}/m/workload.sock" is 111 bytes; the kernel's limit (sun_path) is 107 bytes`,
      );
    });
  });

  it("renders defaults with descriptions and env names", () => {
    expect(renderDefaults(Schema)).toBe(
      [
        "# the hsm",
        "hsm:",
        "  # module path",
        "  # env: EDGETRUST_HSM_MODULE",
        "  module: /usr/lib/softhsm/libsofthsm2.so",
        "  # sessions",
        "  # env: EDGETRUST_HSM_POOL_SIZE",
        "  poolSize: 4",
        "",
      ].join("\n"),
    );
  });
});
