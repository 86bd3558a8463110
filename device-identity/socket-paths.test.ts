import { describe, it, expect, afterAll } from "vitest";
import { existsSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { runDaemon, tmp as makeTmp } from "./test-helpers.js";

// A socket path longer than sun_path is bound by node cut short, so the daemon used to fail later with a generic
// error (or listen where no client looks). The config refuses it before anything is opened or written.
describe("device run: unix socket paths longer than sun_path (107 bytes)", () => {
  const dirs: string[] = [];
  const tmp = (prefix: string): string => {
    const d = makeTmp(prefix);
    dirs.push(d);
    return d;
  };
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it("refuses a too-long device.managementSocket at config load with file:line:col, the path and the limit; writes nothing", async () => {
    const dir = tmp("et-sock-");
    const stateDir = join(dir, "state");
    const sock = join(dir, "s".repeat(120 - dir.length), "mgmt.sock");
    const cfg = join(dir, "edgetrust.yaml");
    writeFileSync(cfg, `device:\n  deviceId: dev-sock\n  stateDir: ${stateDir}\n  workloadDir: ${join(dir, "modules")}\n  managementSocket: ${sock}\n  hubServerCertFile: ${join(dir, "hub.pem")}\n`);
    const d = runDaemon(cfg, {});
    const { code } = await d.exit;
    expect(code).toBe(1);
    expect(d.stderr().trim()).toBe(
      `edgetrust: ${cfg}:5:21: /device/managementSocket: unix socket path ${JSON.stringify(sock)} is ${Buffer.byteLength(sock)} bytes; the kernel's limit (sun_path) is 107 bytes (INVALID_CONFIG): choose a shorter path`,
    );
    expect(readdirSync(dir)).toEqual(["edgetrust.yaml"]);
    expect(existsSync(stateDir)).toBe(false);
  });

  it("refuses a device.workloadDir (from the environment) where even a one-character module's socket cannot fit", async () => {
    const dir = tmp("et-sock-");
    const workloadDir = join(dir, "w".repeat(100 - dir.length));
    const cfg = join(dir, "edgetrust.yaml");
    writeFileSync(cfg, `device:\n  deviceId: dev-sock\n  stateDir: ${join(dir, "state")}\n  managementSocket: ${join(dir, "mgmt.sock")}\n`);
    const d = runDaemon(cfg, { EDGETRUST_DEVICE_WORKLOAD_DIR: workloadDir });
    expect((await d.exit).code).toBe(1);
    expect(d.stderr()).toContain(`config/device/workloadDir (EDGETRUST_DEVICE_WORKLOAD_DIR): sockets under this directory (<dir>/<module>/workload.sock) cannot fit even with a one-character name: unix socket path ${JSON.stringify(workloadDir + "/m/workload.sock")} is 117 bytes`);
    expect(readdirSync(dir)).toEqual(["edgetrust.yaml"]);
  });
});
