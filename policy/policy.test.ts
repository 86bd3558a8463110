import { describe, expect, it } from "vitest";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseYamlStrict } from "../common/index.js";
import { decideTopic, loadPolicy, moduleAuth, parsePolicy, resolveTrust } from "./index.js";
import { CaseFileSchema } from "./schema.js";
import { decideImage, decideModuleOptions } from "./decide.js";
import { explainPolicy, runCases } from "./explain.js";
import { policyJsonSchemaText } from "./json-schema.js";
import { filterCovered, pathGlobMatch, topicMatches } from "./match.js";
import { fixturePolicy } from "./fixtures.js";

/** Golden files: set UPDATE_GOLDEN=1 to rewrite them after a deliberate change, then review the diff. */
const UPDATE = process.env.UPDATE_GOLDEN === "1";
const BAD = "policy/testdata/bad";
const GOOD = "policy/testdata/good";

function golden(file: string, actual: string): void {
  if (UPDATE || !existsSync(file)) writeFileSync(file, actual);
  expect(actual).toBe(readFileSync(file, "utf8"));
}

describe("policy validation goldens", () => {
  for (const f of readdirSync(BAD).filter((n) => n.endsWith(".yaml")).sort()) {
    it(`rejects ${f} with file:line:col messages`, () => {
      const path = join(BAD, f);
      let message = "";
      try {
        parsePolicy(readFileSync(path, "utf8"), path);
      } catch (e) {
        message = (e as Error).message;
        expect((e as { code?: string }).code).toBe("POLICY_INVALID");
      }
      expect(message).not.toBe("");
      for (const line of message.split("\n")) expect(line).toMatch(new RegExp(`^${path.replace(/[.]/g, "\\.")}:\\d+:\\d+: `));
      golden(path.replace(/\.yaml$/, ".golden"), message + "\n");
    });
  }
  for (const f of [...readdirSync(GOOD).filter((n) => n.endsWith(".yaml")).map((n) => join(GOOD, n)), "policy/examples/policy.yaml"]) {
    it(`accepts ${f} and resolves its trust`, async () => {
      const { policy, file } = loadPolicy(f);
      const t = await resolveTrust(policy, file);
      expect(t.body.threshold).toBeGreaterThanOrEqual(1);
    });
  }
  it("policy explain output (golden)", () => {
    golden("policy/testdata/explain.golden", explainPolicy(loadPolicy("policy/examples/policy.yaml").policy));
    golden("policy/testdata/explain-minimal.golden", explainPolicy(loadPolicy(join(GOOD, "minimal.yaml")).policy));
  });
  it("the committed JSON Schema equals the one generated from the TypeBox schema", () => {
    expect(readFileSync("policy/policy.schema.json", "utf8")).toBe(policyJsonSchemaText());
  });
});

describe("decisions: deny by default, with the rules that decided", () => {
  const minimal = loadPolicy(join(GOOD, "minimal.yaml")).policy;
  it("a minimal policy refuses everything", () => {
    expect(decideModuleOptions(minimal, "sensor", { user: "1000", readOnlyRootfs: true }).allowed).toBe(false);
    expect(decideImage(minimal, `127.0.0.1:5000/x@sha256:${"a".repeat(64)}`).allowed).toBe(false);
    const t = decideTopic(minimal, { principal: "device", device: "d1" }, "publish", "devices/d1/messages/events/");
    expect(t.allowed).toBe(false);
    expect(t.rules[0]?.reason).toMatch(/no hub.publish rule/);
  });
  it("module decisions list the allowing rules and every denying one", () => {
    const p = fixturePolicy();
    const ok = decideModuleOptions(p, "sensor", { network: "host", user: "1000:1000", readOnlyRootfs: true, devices: ["/dev/ttyUSB0"], capabilities: ["CAP_NET_BIND_SERVICE"] });
    expect(ok.allowed).toBe(true);
    expect(ok.rules.map((r) => r.rule)).toContain("modules.overrides.sensor.devices[0]");
    const bad = decideModuleOptions(p, "mod1", { privileged: true, capabilities: ["CAP_SYS_ADMIN"], devices: ["/dev/mem"], network: "bridge", user: "0", readOnlyRootfs: false });
    expect(bad.allowed).toBe(false);
    expect(bad.rules.filter((r) => r.effect === "deny").map((r) => r.reason)).toEqual([
      "privileged is not allowed",
      "capability CAP_SYS_ADMIN is not in the allow-list",
      "device /dev/mem is not in the allow-list",
      "network bridge is not allowed (allowed: host, none)",
      "user 0 is root; root must be listed literally",
      "read-only root filesystem is required",
    ]);
    expect(decideModuleOptions(p, "mod1", { network: "host", readOnlyRootfs: true }).rules.some((r) => /user is not set/.test(r.reason))).toBe(true);
  });
  it("an omitted readOnlyRootfs means read-only (the agent's default), so `required` allows it", () => {
    const p = fixturePolicy();
    expect(decideModuleOptions(p, "mod1", { network: "host", user: "1000:1000" }).allowed).toBe(true);
    expect(decideModuleOptions(p, "mod1", { network: "host", user: "1000:1000", readOnlyRootfs: false }).allowed).toBe(false);
  });
  it("hub: {device}/{module} bind rules to the caller's own ids; subscriptions cannot widen", () => {
    const p = loadPolicy("policy/examples/policy.yaml").policy;
    const me = { principal: "module" as const, device: "d1", module: "sensor" };
    expect(decideTopic(p, me, "publish", "devices/d1/modules/sensor/messages/events/x").allowed).toBe(true);
    expect(decideTopic(p, me, "publish", "devices/d1/modules/sensor/messages/events/#").allowed).toBe(false);
    expect(decideTopic(p, me, "subscribe", "devices/d1/modules/sensor/inputs/+").allowed).toBe(true);
    expect(decideTopic(p, me, "subscribe", "devices/+/modules/sensor/inputs/#").allowed).toBe(false);
    expect(decideTopic(p, { ...me, module: "a/b" }, "publish", "devices/d1/modules/a/b/messages/events/").allowed).toBe(false);
    expect(decideTopic(p, { ...me, module: "+" }, "subscribe", "devices/d1/modules/+/inputs/#").allowed).toBe(false);
  });
  it("matchers", () => {
    expect(topicMatches("a/#", "a")).toBe(true);
    expect(topicMatches("+/x", "$iothub/x")).toBe(false);
    expect(filterCovered("a/+/c", "a/+/c")).toBe(true);
    expect(filterCovered("a/+/c", "a/#")).toBe(false);
    expect(pathGlobMatch("/data/*", "/data/a/b")).toBe(false);
    expect(pathGlobMatch("/data/**", "/data/a/b")).toBe(true);
  });
  it("audit mode: denied but permitted, and says so", () => {
    const p = { ...fixturePolicy(), mode: "audit" as const };
    const d = decideModuleOptions(p, "mod1", { privileged: true });
    expect(d.allowed).toBe(false);
    expect(d.permitted).toBe(true);
  });
  it("the example case file passes (policy test)", () => {
    const p = loadPolicy("policy/examples/policy.yaml").policy;
    const cases = parseYamlStrict(readFileSync("policy/examples/cases.yaml", "utf8"), CaseFileSchema, "cases.yaml").value;
    const r = runCases(p, cases);
    expect(r.filter((x) => !x.pass).map((x) => x.name)).toEqual([]);
    expect(r.length).toBeGreaterThan(10);
  });
});

describe("module hub authentication (auth)", () => {
  it("is x509 unless the policy grants sas to that module explicitly", () => {
    const p = loadPolicy("policy/examples/policy.yaml").policy;
    expect(moduleAuth(p, "filter")).toBe("sas");
    expect(moduleAuth(p, "sensor")).toBe("x509");
    expect(moduleAuth(p, "edge-x")).toBe("x509");
    const all = { ...p, modules: { ...p.modules, defaults: { ...p.modules.defaults, auth: "sas" as const }, overrides: { sensor: { auth: "x509" as const } } } };
    expect(moduleAuth(all, "edge-x")).toBe("sas");
    expect(moduleAuth(all, "sensor")).toBe("x509");
  });
});
