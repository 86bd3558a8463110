import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sqliteStore, type TestStore } from "../test-helpers.js";
import { RefusalAudit, safeText, type Refusal } from "./refusals.js";
import { csrPem, ecKeys, startEnrollmentCa, type EnrollmentCa } from "./test-fixtures.js";

const refusal = (source: string, target: string): Refusal => ({
  action: "registration.refused", actor: `unauthenticated(${source})`, target, code: "UNAUTHENTICATED", status: 401, reason: "no enrollment accepts this credential", source,
});

async function countActions(ts: TestStore): Promise<Record<string, number>> {
  const rows = await ts.store.db.query("SELECT action, COUNT(*) AS n FROM audit_log GROUP BY action");
  return Object.fromEntries(rows.map((r) => [String(r.action), Number(r.n)]));
}

describe("RefusalAudit: the audit log grows with time, not with a flood", () => {
  let ts: TestStore;
  beforeAll(async () => {
    ts = await sqliteStore();
  });
  afterAll(async () => {
    await ts?.cleanup();
  });

  it("per-source and total budgets per window; the excess becomes one summary entry per window; the chain verifies", async () => {
    let now = Date.parse("2030-01-01T00:00:00Z");
    const ra = new RefusalAudit(ts.store, { perSource: 3, total: 5, windowMs: 60_000, graceMs: 1000, now: () => now });
    const outcomes: string[] = [];
    // One source floods 1,000 refusals, three others send 2 each, in the same window.
    for (let i = 0; i < 1000; i++) outcomes.push(await ra.record(refusal("10.0.0.1", `flood-${i}`)));
    for (const s of ["10.0.0.2", "10.0.0.3", "10.0.0.4"]) for (let i = 0; i < 2; i++) outcomes.push(await ra.record(refusal(s, `dev-${s}-${i}`)));
    expect(outcomes.filter((o) => o === "written")).toHaveLength(5); // 3 for the flooder (its per-source budget), 2 for 10.0.0.2 (then the total budget is spent)
    expect(await countActions(ts)).toEqual({ "registration.refused": 5 });
    // The window ends: the next refusal first writes the summary of the last one.
    now += 61_000;
    expect(await ra.record(refusal("10.0.0.5", "late-1"))).toBe("written");
    const summary = (await ts.store.listAudit()).find((x) => x.action === "refusals.suppressed");
    expect(summary).toMatchObject({
      actor: "ca-service", target: "window:2030-01-01T00:00:00.000Z",
      details: { written: 5, suppressed: 1001, byAction: { "registration.refused": 1001 }, byCode: { UNAUTHENTICATED: 1001 }, sources: 3, topSources: expect.arrayContaining([{ source: "10.0.0.1", count: 997 }]) as unknown },
    });
    // Close flushes the current window (nothing suppressed in it: no summary).
    await ra.close();
    expect(await countActions(ts)).toEqual({ "registration.refused": 6, "refusals.suppressed": 1 });
    expect((await ts.store.verifyAudit()).ok).toBe(true);
  });

  it("targets and reasons are stored as bounded printable ASCII", () => {
    expect(safeText("dev\u0000ice\n")).toBe("dev\\u0000ice\\u000a");
    expect(safeText("x".repeat(500), 140)).toHaveLength(141);
  });
});

describe("refusal flood over HTTPS", () => {
  let e: EnrollmentCa;
  beforeAll(async () => {
    e = await startEnrollmentCa();
  });
  afterAll(async () => {
    await e?.close();
  });

  it("200 unauthenticated registrations from one address: 60 entries (the per-source budget), then one summary at shutdown; nothing issued", async () => {
    const csr = await csrPem(await ecKeys());
    // Budget windows are aligned to the minute (the same windows in every process): stay inside one.
    const msLeft = 60_000 - (Date.now() % 60_000);
    if (msLeft < 20_000) await new Promise((r) => setTimeout(r, msLeft + 100));
    const statuses: number[] = [];
    for (let i = 0; i < 200; i += 10) {
      statuses.push(...await Promise.all(Array.from({ length: 10 }, async (_, j) => (await e.call("PUT", `/v1/registrations/flood-${i + j}`, { headers: { "idempotency-key": `flood-key-${i + j}` }, body: { csr } })).status)));
    }
    expect(new Set(statuses)).toEqual(new Set([401]));
    const refused = await e.ts.store.db.query("SELECT COUNT(*) AS n FROM audit_log WHERE action = 'registration.refused' AND target LIKE 'flood-%'");
    expect(refused).toEqual([{ n: 60 }]);
    expect((await e.ts.store.listCertificates({ limit: 1000 })).filter((c) => (c.deviceId ?? "").startsWith("flood-"))).toEqual([]);
    await e.server.close();
    const summary = await e.ts.store.db.query("SELECT details FROM audit_log WHERE action = 'refusals.suppressed'");
    expect(summary).toHaveLength(1);
    expect(JSON.parse(String(summary[0]?.details))).toMatchObject({ written: 60, suppressed: 140, topSources: [{ source: "127.0.0.1", count: 140 }] });
    expect((await e.ts.store.verifyAudit()).ok).toBe(true);
  });
});
