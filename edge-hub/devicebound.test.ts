import { describe, expect, it } from "vitest";
import Database from "better-sqlite3";
import { createLogger } from "../common/index.js";
import { DeviceboundRelay, deviceboundFilter, parseDeviceboundTopic } from "./devicebound.js";

const relay = (o: { ttlSeconds?: number; maxMessages?: number } = {}) =>
  new DeviceboundRelay({ db: new Database(":memory:"), deviceId: "gw1", ttlSeconds: o.ttlSeconds ?? 3600, maxMessages: o.maxMessages ?? 100, log: createLogger("edge-hub", { level: "silent" }) });

describe("C2D (devicebound) topics and the hold", () => {
  it("parses leaf and module C2D topics as the cloud sends them (bag, `$.exp`, one trailing `/`), nothing else", () => {
    expect(parseDeviceboundTopic("devices/leaf1/messages/devicebound/%24.mid=1&k=v")).toEqual({ deviceId: "leaf1", local: "devices/leaf1/messages/devicebound/%24.mid=1&k=v" });
    expect(parseDeviceboundTopic("devices/gw1/modules/m1/messages/devicebound/")).toMatchObject({ deviceId: "gw1", moduleId: "m1" });
    expect(parseDeviceboundTopic("devices/leaf1/messages/devicebound/%24.exp=2030-01-01T00%3A00%3A00Z/")?.expiresAt).toBe(Date.parse("2030-01-01T00:00:00Z"));
    for (const bad of ["devices/leaf1/messages/devicebound", "devices/leaf1/messages/events/", "devices//messages/devicebound/", "devices/leaf1/messages/devicebound/a/b", "devices/gw1/modules//messages/devicebound/", "devices/leaf1/messages/devicebound/%E0%A4%A"]) {
      expect(parseDeviceboundTopic(bad), bad).toBeUndefined();
    }
    expect(deviceboundFilter("leaf1")).toBe("devices/leaf1/messages/devicebound/#");
    expect(deviceboundFilter("gw1", "+")).toBe("devices/gw1/modules/+/messages/devicebound/#");
  });

  it("holds only what is for an identity behind this hub: a leaf, or a module of this device — not another device's module, not the device itself", () => {
    const r = relay();
    expect(r.fromCloud("devices/leaf1/messages/devicebound/", Buffer.from("a"))).toBe(true);
    expect(r.fromCloud("devices/gw1/modules/m1/messages/devicebound/", Buffer.from("b"))).toBe(true);
    expect(r.fromCloud("devices/gw2/modules/m1/messages/devicebound/", Buffer.from("c"))).toBe(false);
    expect(r.fromCloud("devices/gw1/messages/devicebound/", Buffer.from("d"))).toBe(false);
    expect(r.fromCloud("devices/leaf1/$iothub/methods/POST/x/?$rid=1", Buffer.from("e"))).toBe(false);
    expect(r.held()).toBe(2);
  });

  it("drops what has expired ($.exp or the hub's TTL) and, at the cap, new messages rather than growing without bound", () => {
    const now = Date.now();
    const r = relay({ ttlSeconds: 60, maxMessages: 2 });
    r.fromCloud(`devices/leaf1/messages/devicebound/%24.exp=${encodeURIComponent(new Date(now - 1000).toISOString())}`, Buffer.from("late"), now);
    expect(r.held(now)).toBe(0);
    r.fromCloud(`devices/leaf1/messages/devicebound/%24.exp=${encodeURIComponent(new Date(now + 10_000).toISOString())}`, Buffer.from("soon"), now);
    r.fromCloud("devices/leaf1/messages/devicebound/", Buffer.from("ttl"), now);
    r.fromCloud("devices/leaf1/messages/devicebound/", Buffer.from("over the cap"), now);
    expect(r.held(now)).toBe(2);
    expect(r.held(now + 11_000)).toBe(1);
    expect(r.held(now + 61_000)).toBe(0);
  });
});
