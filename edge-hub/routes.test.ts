import { describe, expect, it } from "vitest";
import { isEdgeTrustError } from "../common/index.js";
import { matchRoutes, parseRoute, parseRoutes } from "./routes.js";
import { Redactor } from "./privacy.js";

const msg = (o: Partial<Parameters<typeof matchRoutes>[1]> = {}) => ({ deviceId: "d1", moduleId: "a", output: "x", properties: {}, body: Buffer.from("{}"), ...o });

describe("routes", () => {
  it("parses the IoT Edge forms and matches sources", () => {
    const rs = parseRoutes({
      all: "FROM /messages/* INTO $upstream",
      mods: "FROM /messages/modules/* INTO $upstream",
      ax: 'FROM /messages/modules/a/outputs/x INTO BrokeredEndpoint("/modules/b/inputs/y")',
      aany: "from /messages/modules/a/outputs/* into $upstream",
      c: "FROM /messages/modules/c/* INTO $upstream",
    });
    expect(rs.find((r) => r.name === "ax")?.sink).toEqual({ kind: "module", module: "b", input: "y" });
    expect(matchRoutes(rs, msg()).map((r) => r.name)).toEqual(["all", "mods", "ax", "aany"]);
    expect(matchRoutes(rs, msg({ moduleId: undefined, output: undefined })).map((r) => r.name)).toEqual(["all"]);
    expect(matchRoutes(rs, msg({ output: undefined })).map((r) => r.name)).toEqual(["all", "mods"]);
  });

  it("evaluates WHERE conditions on properties, connection ids and JSON bodies", () => {
    const r = [parseRoute("w", "FROM /messages/* WHERE (level = 'high' OR $body.temp > 30) AND NOT $connectionModuleId = 'z' AND IS_DEFINED(level) INTO $upstream")];
    expect(matchRoutes(r, msg({ properties: { level: "high" } }))).toHaveLength(1);
    expect(matchRoutes(r, msg({ properties: { level: "low" }, body: Buffer.from('{"temp":31}') }))).toHaveLength(1);
    expect(matchRoutes(r, msg({ properties: { level: "low" }, body: Buffer.from('{"temp":29}') }))).toHaveLength(0);
    expect(matchRoutes(r, msg({ moduleId: "z", properties: { level: "high" } }))).toHaveLength(0);
    expect(matchRoutes(r, msg({ body: Buffer.from('{"temp":99}') }))).toHaveLength(0);
  });

  it("defined/undefined checks on system properties: IS NULL, IS NOT NULL, NOT IS_DEFINED", () => {
    const rs = parseRoutes({
      leaf: "FROM /messages/* WHERE $connectionModuleId IS NULL INTO $upstream",
      leaf2: "FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId) INTO $upstream",
      mod: "FROM /messages/* WHERE $connectionModuleId IS NOT NULL AND $messageId IS NOT NULL INTO $upstream",
      corr: "FROM /messages/* WHERE $correlationId = 'c-1' OR $contentEncoding = 'utf-8' INTO $upstream",
    });
    const names = (m: Parameters<typeof matchRoutes>[1]) => matchRoutes(rs, m).map((r) => r.name);
    expect(names(msg({ moduleId: undefined, output: undefined }))).toEqual(["leaf", "leaf2"]);
    expect(names(msg({ system: { mid: "m-1" } }))).toEqual(["mod"]);
    expect(names(msg({}))).toEqual([]);
    expect(names(msg({ moduleId: undefined, system: { cid: "c-1" } }))).toEqual(["leaf", "leaf2", "corr"]);
    expect(names(msg({ system: { ce: "utf-8", mid: "x" } }))).toEqual(["mod", "corr"]);
    for (const bad of ["FROM /messages/* WHERE $connectionModuleId IS 'x' INTO $upstream", "FROM /messages/* WHERE 'a' IS NULL INTO $upstream"]) {
      expect(() => parseRoute("b", bad)).toThrow(/column/);
    }
  });

  it("reports every bad route with its column and what was expected", () => {
    let err: unknown;
    try {
      parseRoutes({
        a: "FROM /messages/* INTO somewhere",
        b: "FROM /things/* INTO $upstream",
        c: "FROM /messages/* WHERE level = INTO $upstream",
        d: 'FROM /messages/* INTO BrokeredEndpoint("/modules/b/outputs/y")',
        e: "FROM /messages/* WHERE x = 'unterminated INTO $upstream",
      });
    } catch (e) {
      err = e;
    }
    expect(isEdgeTrustError(err, "HUB_ROUTE_INVALID")).toBe(true);
    const text = (err as Error).message;
    expect(text).toContain("route a: column 23: expected $upstream or BrokeredEndpoint");
    expect(text).toContain("route b: column 6: source must start with /messages");
    expect(text).toContain('route c: column 32: expected a property or a literal, found INTO');
    expect(text).toContain("route d: column 40: BrokeredEndpoint must be");
    expect(text).toContain("route e: column 28: unterminated string");
  });
});

describe("privacy", () => {
  it("removes and hashes (keyed) the named fields; refuses bodies it cannot inspect", () => {
    const r = new Redactor([{ path: "gps", action: "remove" }, { path: "people.*.name", action: "hash" }, { path: "vin", action: "hash", topics: ["devices/+/messages/events/#"] }], Buffer.alloc(32, 1));
    const out = JSON.parse(r.redact("devices/d/messages/events/", Buffer.from(JSON.stringify({ gps: [1, 2], people: { a: { name: "x" }, b: { name: "y" } }, vin: "V1", t: 1 })))?.toString() ?? "null") as Record<string, unknown>;
    expect(out.gps).toBeUndefined();
    expect(out.t).toBe(1);
    expect(String((out.people as Record<string, { name: string }>).a?.name)).toMatch(/^hmac-sha256:[0-9a-f]{64}$/);
    expect(out.vin).toMatch(/^hmac-sha256:/);
    const other = new Redactor([{ path: "gps", action: "remove" }], Buffer.alloc(32, 2));
    const again = JSON.parse(other.redact("t", Buffer.from('{"gps":1,"k":2}'))?.toString() ?? "null") as Record<string, unknown>;
    expect(again).toEqual({ k: 2 });
    expect(r.redact("devices/d/messages/events/", Buffer.from("not json"))).toBeUndefined();
  });

  it("`remove` with `*` over an array removes every element (no index shift skips one); nested and indexed paths too", () => {
    const r = new Redactor([
      { path: "tags.*", action: "remove" },
      { path: "items.*.secret", action: "remove" },
      { path: "pair.1", action: "remove" },
      { path: "names.*", action: "hash" },
    ], Buffer.alloc(32, 3));
    const body = { tags: ["a", "b", "c", "d", "e"], items: [{ secret: 1, k: 1 }, { secret: 2, k: 2 }, { k: 3 }], pair: ["x", "y", "z"], names: ["p", "q"] };
    const out = JSON.parse(r.redact("t", Buffer.from(JSON.stringify(body)))?.toString() ?? "null") as typeof body;
    expect(out.tags).toEqual([]);
    expect(out.items).toEqual([{ k: 1 }, { k: 2 }, { k: 3 }]);
    expect(out.pair).toEqual(["x", "z"]);
    expect(out.names).toHaveLength(2);
    expect(out.names.every((n) => /^hmac-sha256:[0-9a-f]{64}$/.test(n))).toBe(true);
    // A top-level array body.
    const top = new Redactor([{ path: "*", action: "remove" }], Buffer.alloc(32, 3));
    expect(top.redact("t", Buffer.from("[1,2,3,4]"))?.toString()).toBe("[]");
  });

  it("a rule's `topics` use the policy's MQTT filter matcher (one matcher for ACLs and privacy)", () => {
    const r = new Redactor([{ path: "gps", action: "remove", topics: ["devices/+/modules/+/messages/events/#"] }], Buffer.alloc(32, 4));
    const body = Buffer.from('{"gps":1}');
    expect(r.redact("devices/d1/modules/m/messages/events/", body)?.toString()).toBe("{}");
    expect(r.redact("devices/d1/modules/m/messages/events/a=1", body)?.toString()).toBe("{}");
    expect(r.redact("devices/d1/messages/events/", body)?.toString()).toBe('{"gps":1}');
    const any = new Redactor([{ path: "gps", action: "remove", topics: ["#"] }], Buffer.alloc(32, 4));
    expect(any.redact("$iothub/x", body)?.toString()).toBe('{"gps":1}'); // MQTT: a leading wildcard never matches `$` topics
    expect(any.redact("x/y", body)?.toString()).toBe("{}");
  });
});
