import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { run } from "./test-fixtures.js";
import { cliBundleArgs } from "../../test/fixtures/cli-bundle.js";

const CLI = cliBundleArgs();
const ROOT = fileURLToPath(new URL("../..", import.meta.url));
let dir: string;
let cfg: string;

const cli = (args: string[]) => run(process.execPath, [...CLI, "ca", ...args, "-c", cfg], { cwd: ROOT });
const spki = () => generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey.export({ type: "spki", format: "pem" }).toString();

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "et-enroll-cli-"));
  cfg = join(dir, "edgetrust.yaml");
  writeFileSync(cfg, ["log:", "  level: error", "ca:", `  sqlitePath: ${join(dir, "ca.db")}`, ""].join("\n"));
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("edgetrust ca line / ca enroll (CLI)", () => {
  it("line create/list/revoke; enroll add/list/disable; import with progress on stderr, a report, and idempotency", async () => {
    const created = await cli(["line", "create", "--name", "plant 7", "--max-enrollments", "5000", "--rate", "120", "--json"]);
    expect(created.code, created.stderr).toBe(0);
    const line = JSON.parse(created.stdout) as { token: string; line: { id: string; name: string; maxEnrollments: number } };
    expect(line.token).toMatch(/^etl_/);
    expect(line.line).toMatchObject({ name: "plant 7", maxEnrollments: 5000 });
    expect((await cli(["line", "list"])).stdout).toContain("plant 7");

    writeFileSync(join(dir, "k.pem"), spki());
    const add = await cli(["enroll", "add", "cli-dev-1", "--credential", join(dir, "k.pem"), "--label", "site=7", "--json"]);
    expect(add.code, add.stderr).toBe(0);
    expect(JSON.parse(add.stdout)).toMatchObject({ outcome: "inserted", enrollment: { registrationId: "cli-dev-1", labels: { site: "7" } } });
    expect(JSON.parse((await cli(["enroll", "add", "cli-dev-1", "--credential", join(dir, "k.pem"), "--label", "site=7", "--json"])).stdout).outcome).toBe("unchanged");
    const dis = await cli(["enroll", "disable", "cli-dev-1", "--json"]);
    expect(JSON.parse(dis.stdout).status).toBe("disabled");
    const bad = await cli(["enroll", "add", "../etc", "--credential", join(dir, "k.pem")]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/registration id/);

    const key = generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey.export({ type: "spki", format: "der" }).toString("base64");
    const rows = ["registrationId,attestation,credential"];
    for (let i = 0; i < 2500; i++) rows.push(i === 1500 ? "bad id!,publicKey," + key : `imp-${i},publicKey,${key}`);
    writeFileSync(join(dir, "batch.csv"), rows.join("\n") + "\n");
    const imp = await cli(["enroll", "import", join(dir, "batch.csv"), "--line", line.line.id, "--json"]);
    expect(imp.code).toBe(1); // some rows were rejected
    expect(imp.stderr).toMatch(/import batch\.csv: 100% 2500\/2500/);
    const report = JSON.parse(imp.stdout) as { inserted: number; rejected: { row: number; reason: string }[]; batches: { rejected: { index: number }[] } };
    expect(report.inserted).toBe(1500);
    expect(report.rejected).toEqual([{ row: 1502, registrationId: "bad id!", reason: expect.stringMatching(/registration id/) as unknown }]);
    expect(report.batches.rejected.map((b) => b.index)).toEqual([1]);
    const again = await cli(["enroll", "import", join(dir, "batch.csv"), "--line", line.line.id, "--json", "--no-progress"]);
    expect(JSON.parse(again.stdout)).toMatchObject({ inserted: 0, updated: 0, unchanged: 1500 });
    expect(again.stderr).toBe("");
    const list = JSON.parse((await cli(["enroll", "list", "--line", line.line.id, "--limit", "3", "--json"])).stdout) as { enrollments: { registrationId: string }[] };
    expect(list.enrollments.map((e) => e.registrationId)).toEqual(["imp-0", "imp-1", "imp-10"]);

    const rev = await cli(["line", "revoke", line.line.id, "--json"]);
    expect(JSON.parse(rev.stdout).revokedAt).toBeTruthy();
    expect((await cli(["line", "revoke", line.line.id])).code).toBe(1);
  }, 180_000); // a dozen CLI processes, one after another: each takes seconds to start on a loaded machine
});
