import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { signManifest, type JwsSigner, type Manifest } from "../policy/index.js";
import { makeSigners, makeTrustRoot } from "../policy/fixtures.js";
import { buildBusyboxImage, DOCKER_SOCKET, REGISTRY, type BuiltImage } from "../test/fixtures/images.js";
import { startTestDevice, type TestDevice } from "../test/fixtures/device.js";
import { runCli } from "../test/fixtures/cli.js";
import { DockerClient } from "../engine/index.js";

const tag = `${process.pid}`;
const DEVICE = `cli-dev-${tag}`;
const MODULE = `climod${tag}`;
const docker = new DockerClient({ socketPath: DOCKER_SOCKET });

describe("edgetrust agent run (the real CLI, real dockerd)", () => {
  const dir = mkdtempSync(join(tmpdir(), "et-agent-cli-"));
  let device: TestDevice;
  let image: BuiltImage;
  let signers: JwsSigner[];
  let config: string;

  const manifest = (version: number): Manifest => ({
    schemaVersion: 1, deploymentId: "cli", version, targets: [DEVICE],
    issuedAt: new Date(Date.now() - 60_000).toISOString(), expiresAt: new Date(Date.now() + 86_400_000).toISOString(),
    modules: { [MODULE]: { image: image.ref, options: { user: "1000:1000" }, restartPolicy: "always", startupOrder: 0 } },
  });

  beforeAll(async () => {
    image = buildBusyboxImage(MODULE, `${MODULE}-${Date.now()}`);
    signers = await makeSigners();
    const root = await makeTrustRoot(signers, { threshold: 2, expires: new Date(Date.now() + 365 * 86_400_000).toISOString() });
    writeFileSync(join(dir, "trust-root.json"), root.text);
    writeFileSync(join(dir, "policy.yaml"), `version: 1\nmode: enforce\ntrust:\n  trustRoot: trust-root.json\nimages:\n  registries: ["${REGISTRY}"]\nmodules:\n  allow: ["*"]\n  defaults:\n    users: ["1000:1000"]\n`);
    const good = await signManifest(await signManifest(manifest(1), signers[0] as JwsSigner), signers[1] as JwsSigner);
    writeFileSync(join(dir, "good.jws"), JSON.stringify(good));
    writeFileSync(join(dir, "tampered.jws"), JSON.stringify({ ...good, payload: Buffer.from(JSON.stringify(manifest(7))).toString("base64url") }));
    device = await startTestDevice(docker, DEVICE);
    config = join(dir, "edgetrust.yaml");
    writeFileSync(config, [
      "agent:",
      `  deviceId: ${DEVICE}`,
      `  policyFile: ${join(dir, "policy.yaml")}`,
      `  stateDir: ${join(dir, "state")}`,
      `  dockerSocket: ${DOCKER_SOCKET}`,
      `  managementSocket: ${device.mgmtSocket}`,
      `  workloadSocketsDir: ${device.socketsDir}`,
      "",
    ].join("\n"));
  });

  afterAll(async () => {
    await docker.removeContainer(`edgetrust-${MODULE}`);
    await device?.close();
  });

  it("--help explains the command", async () => {
    const r = await runCli(["agent", "run", "--help"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("--manifest <file>");
  });

  it("applies a signed manifest and prints the module states as JSON", async () => {
    const r = await runCli(["agent", "run", "--config", config, "--manifest", join(dir, "good.jws"), "--once", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ applied: true, version: 1, modules: [{ name: MODULE, state: "running" }] });
  });

  it("a tampered manifest: exit 1, the reason on one line, the running deployment untouched", async () => {
    const before = (await docker.inspectContainer(`edgetrust-${MODULE}`))?.Id;
    const r = await runCli(["agent", "run", "--config", config, "--manifest", join(dir, "tampered.jws"), "--once"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^manifest rejected: signature: /m);
    expect(r.stdout).toContain("deployment version 1");
    expect((await docker.inspectContainer(`edgetrust-${MODULE}`))?.Id).toBe(before);
  });

  it("restarting with the same manifest file re-applies nothing new and succeeds", async () => {
    const r = await runCli(["agent", "run", "--config", config, "--manifest", join(dir, "good.jws"), "--once", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ applied: true, rejected: false, version: 1 });
  });

  it("a config with an unknown key fails with file:line:col", async () => {
    const bad = join(dir, "bad.yaml");
    writeFileSync(bad, "agent:\n  deviceID: x\n");
    const r = await runCli(["agent", "run", "--config", bad, "--once"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${bad}:2:3: /agent/deviceID: unknown key "deviceID"`);
  });
});
