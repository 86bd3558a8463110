import { describe, expect, it } from "vitest";
import { parseTopic } from "./dialect.js";

describe("IoT Hub topic dialect", () => {
  it("parses a module output exactly as azure-iot-device-mqtt publishes it (`$.on` percent-encoded, trailing `/`)", () => {
    // Mqtt._getEventTopicFromMessage + sendOutputEvent: querystring-encoded system properties, then the app
    // properties, then a `/` — the topic the SDK's sendOutputEvent("out", msg) sends.
    const t = parseTopic("devices/d1/modules/sender/messages/events/%24.on=out&kind=reading/");
    expect(t).toEqual({ kind: "telemetry", deviceId: "d1", moduleId: "sender", bag: { app: { kind: "reading" }, system: { on: "out" } } });
  });

  it("parses module and device telemetry with and without a property bag", () => {
    expect(parseTopic("devices/d1/modules/m/messages/events/")).toMatchObject({ kind: "telemetry", moduleId: "m", bag: { app: {}, system: {} } });
    expect(parseTopic("devices/d1/messages/events/a=1&%24.ct=application%2Fjson")).toEqual({
      kind: "telemetry", deviceId: "d1", bag: { app: { a: "1" }, system: { ct: "application/json" } },
    });
    expect(parseTopic("devices/d1/messages/events/a=1/")).toMatchObject({ kind: "telemetry", deviceId: "d1", bag: { app: { a: "1" } } });
  });

  it("does not stretch the grammar beyond one trailing `/`", () => {
    expect(parseTopic("devices/d1/modules/m/messages/events/a=1/x")).toEqual({ kind: "other" });
    expect(parseTopic("devices/d1/modules/m/messages/events/a=1//")).toEqual({ kind: "other" });
    expect(parseTopic("devices/d1/modules/m/messages/events//")).toEqual({ kind: "other" });
  });
});
