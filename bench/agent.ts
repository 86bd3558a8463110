import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createLogger } from "../common/index.js";
import { parsePolicy, signManifest, type JwsSigner, type Manifest } from "../policy/index.js";
import { makeSigners, makeTrustRoot } from "../policy/fixtures.js";
import { DockerClient, ensureImage } from "../engine/index.js";
import { EdgeAgent, ManagementSocketRegistrar, createSpec, listManaged } from "../edge-agent/index.js";
import { buildBusyboxImage, DOCKER_SOCKET, REGISTRY } from "../dev-images/index.js";
// A harness, like a test: it runs from a checkout and may use the test fixtures.
import { startEphemeralIdentity } from "../test/fixtures/ephemeral-identity.js";
import { BUILT_BIN, REPO_ROOT } from "./paths.js";
import { row, type Benchmark, type BenchRow, type Progress } from "./types.js";
import { assertDaemonBundle, peakRssMbOfRun, unitCommand, unitEnv } from "./units.js";

const SOURCE = "issue 7 (edge-agent)";
const MODULES = 10;
const ROUNDS = 3;
/** As deploy/systemd/edgetrust-agent.service runs the agent: its node flags and environment, read from the unit. */
const UNIT = unitCommand("agent");
/** Peak RSS (MB) of `node <flags> bin/edgetrust.js <args>`: that process's own (see peakRssMbOfRun). */
async function agentPeakMb(args: string[], env: Record<string, string>, nodeFlags: string[] = []): Promise<number> {
  return peakRssMbOfRun({ script: BUILT_BIN, args, env, nodeFlags, cwd: REPO_ROOT });
}

/**
 * Attested boot of 10 modules from cached images (verify a 2-of-3 signed manifest, create within policy, register
 * each with device-identity over its socket, start in order) against the same 10 containers created and started
 * through the Docker API with no attestation, in alternating rounds of one run. Plus the agent process's peak RSS.
 */
export const agentBenchmark: Benchmark = {
  id: "agent",
  description: "attested boot of 10 modules vs plain docker create+start; agent RSS",
  async run(progress: Progress): Promise<BenchRow[]> {
    assertDaemonBundle("agent");
    const docker = new DockerClient({ socketPath: DOCKER_SOCKET });
    const deviceId = `bench-${process.pid}`;
    const dir = mkdtempSync(join(tmpdir(), "et-bench-agent-"));
    progress.step("building the module image");
    const built = buildBusyboxImage("bench", `bench-${Date.now()}`);
    const image = await ensureImage(docker, built);
    const names = Array.from({ length: MODULES }, (_, i) => `bench${i}`);
    const signers: JwsSigner[] = await makeSigners();
    const trustRoot = await makeTrustRoot(signers, { threshold: 2, expires: new Date(Date.now() + 86_400_000).toISOString() });
    const policyYaml = `version: 1\nmode: enforce\ntrust:\n  trustRoot: trust-root.json\nimages:\n  registries: ["${REGISTRY}"]\nmodules:\n  allow: ["*"]\n  defaults:\n    users: ["1000:1000"]\n`;
    const policy = parsePolicy(policyYaml, "policy.yaml");
    const identity = await startEphemeralIdentity(docker, deviceId);
    const clean = async () => {
      for (const c of await listManaged(docker, deviceId)) await docker.removeContainer(c.id);
      for (const n of names) await docker.removeContainer(`plain-${deviceId}-${n}`);
    };
    let agentMs = 0;
    let plainMs = 0;
    let rebootMs = 0;
    let startMs = 0;
    try {
      for (let round = 0; round < ROUNDS; round++) {
        progress.step(`round ${round + 1}/${ROUNDS}`);
        const m: Manifest = {
          schemaVersion: 1, deploymentId: "bench", version: 1, targets: [deviceId],
          issuedAt: new Date(Date.now() - 60_000).toISOString(), expiresAt: new Date(Date.now() + 3_600_000).toISOString(),
          modules: Object.fromEntries(names.map((n, i) => [n, { image: built.ref, options: { user: "1000:1000" }, restartPolicy: "always" as const, startupOrder: i }])),
        };
        const jws = JSON.stringify(await signManifest(await signManifest(m, signers[0] as JwsSigner), signers[1] as JwsSigner));

        await clean();
        const agent = new EdgeAgent({
          docker, identity: new ManagementSocketRegistrar(identity.mgmtSocket, identity.socketsDir), policy, trustRoot: trustRoot.root,
          deviceId, stateDir: join(dir, `state-${round}`), log: createLogger("edge-agent", { level: "silent" }),
        });
        let t0 = performance.now();
        const r = await agent.apply(jws);
        agentMs += performance.now() - t0;
        if (!r.applied || r.modules.some((s) => s.state !== "running")) throw new Error(`attested boot failed: ${JSON.stringify(r.verdict.reasons)}`);

        // Reboot: the containers exist, stopped; a new agent re-verifies the last-known-good and starts them.
        const ours = await listManaged(docker, deviceId);
        for (const c of ours) await docker.stopContainer(c.id, 0);
        const rebooted = new EdgeAgent({
          docker, identity: new ManagementSocketRegistrar(identity.mgmtSocket, identity.socketsDir), policy, trustRoot: trustRoot.root,
          deviceId, stateDir: join(dir, `state-${round}`), log: createLogger("edge-agent", { level: "silent" }),
        });
        t0 = performance.now();
        const b = await rebooted.boot();
        rebootMs += performance.now() - t0;
        if (!b?.applied || b.modules.some((s) => s.state !== "running")) throw new Error("attested reboot failed");
        // Plain `docker start` of the same 10 stopped containers.
        for (const c of ours) await docker.stopContainer(c.id, 0);
        t0 = performance.now();
        for (const c of ours) await docker.startContainer(c.id);
        startMs += performance.now() - t0;
        await clean();

        t0 = performance.now();
        for (const n of names) {
          const spec = createSpec({ deviceId: `plain-${deviceId}`, module: n, deploymentId: "bench", manifestVersion: 1, image, user: "1000:1000", capAdd: [], binds: [], devices: [], network: "none", readOnlyRootfs: true, env: {} });
          const id = await docker.createContainer(`plain-${deviceId}-${n}`, spec);
          await docker.startContainer(id);
        }
        plainMs += performance.now() - t0;
        await clean();
      }

      progress.step("agent peak RSS (one agent run --once in its own process)");
      writeFileSync(join(dir, "trust-root.json"), trustRoot.text);
      writeFileSync(join(dir, "policy.yaml"), policyYaml);
      const m: Manifest = {
        schemaVersion: 1, deploymentId: "bench-rss", version: 1, targets: [deviceId],
        issuedAt: new Date(Date.now() - 60_000).toISOString(), expiresAt: new Date(Date.now() + 3_600_000).toISOString(),
        modules: Object.fromEntries(names.map((n, i) => [n, { image: built.ref, options: { user: "1000:1000" }, restartPolicy: "always" as const, startupOrder: i }])),
      };
      writeFileSync(join(dir, "m.jws"), JSON.stringify(await signManifest(await signManifest(m, signers[0] as JwsSigner), signers[1] as JwsSigner)));
      writeFileSync(join(dir, "edgetrust.yaml"), `agent:\n  deviceId: ${deviceId}\n  policyFile: ${join(dir, "policy.yaml")}\n  stateDir: ${join(dir, "rss-state")}\n  dockerSocket: ${DOCKER_SOCKET}\n  managementSocket: ${identity.mgmtSocket}\n  workloadSocketsDir: ${identity.socketsDir}\n`);
      // `agent run --once` from the built bin (the agent's own bundle): apply the 10-module manifest, then exit.
      const runOnce = ["agent", "run", "--once", "--json", "--config", join(dir, "edgetrust.yaml"), "--manifest", join(dir, "m.jws")];
      const agentMb = await agentPeakMb(runOnce, { EDGETRUST_LOG_LEVEL: "error" });
      await clean();
      rmSync(join(dir, "rss-state"), { recursive: true, force: true });
      const unitMb = await agentPeakMb(runOnce, { ...unitEnv(UNIT), EDGETRUST_LOG_LEVEL: "error" }, UNIT.nodeFlags);
      const bareMb = await peakRssMbOfRun({ nodeFlags: UNIT.nodeFlags, env: unitEnv(UNIT), cwd: REPO_ROOT });
      progress.step(`agent peak RSS ${agentMb.toFixed(1)} MB; as the unit runs it ${unitMb.toFixed(1)} MB; a bare node with the unit's flags: ${bareMb.toFixed(1)} MB; load average ${readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ")}`);
      // Self-check: the agent loads a bundle, verifies a manifest and talks to dockerd; a bare node that comes out
      // near it means the figures are not each process's own (as when they were read from ru_maxrss).
      if (bareMb > 0.9 * unitMb) throw new Error(`measurement suspect: bare node ${bareMb.toFixed(1)} MB vs agent ${unitMb.toFixed(1)} MB`);
      await clean();
      return [
        row({ name: "attested reboot, 10 modules (containers exist, stopped)", value: rebootMs / ROUNDS, unit: "ms", reference: { name: "plain docker start, same 10", value: startMs / ROUNDS }, target: 1 / 1.5, higherIsBetter: false, source: SOURCE }),
        row({ name: "attested boot, 10 modules (cached images)", value: agentMs / ROUNDS, unit: "ms", reference: { name: "docker create+start, same 10", value: plainMs / ROUNDS }, target: 1 / 1.5, higherIsBetter: false, source: SOURCE }),
        row({ name: "agent peak RSS (agent run --once, 10 modules), default node flags", value: agentMb, unit: "MB", reference: { name: "target ceiling", value: 60 }, target: 1, higherIsBetter: false, source: SOURCE }),
        row({ name: `agent peak RSS, as edgetrust-agent.service runs it (${UNIT.nodeFlags.join(" ")}, its own bundle)`, value: unitMb, unit: "MB", reference: { name: "target ceiling", value: 60 }, target: 1, higherIsBetter: false, source: SOURCE }),
        row({ name: "(context) agent as the unit runs it (value) vs a bare node with the same flags (reference); ratio = node / agent, target = node / 60 MB", value: unitMb, unit: "MB", reference: { name: `bare node ${UNIT.nodeFlags.join(" ")}, same run`, value: bareMb }, target: bareMb / 60, higherIsBetter: false, source: SOURCE }),
      ];
    } finally {
      await clean().catch(() => undefined);
      await identity.close();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
