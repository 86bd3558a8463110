/**
 * The IoT Hub MQTT topic dialect (what unmodified Azure device SDK clients speak):
 *   devices/{d}/messages/events/{bag}                 device (leaf) telemetry
 *   devices/{d}/modules/{m}/messages/events/{bag}     module telemetry; with `$.on=<output>` in the bag, a module output
 *   devices/{d}/modules/{m}/inputs/{input}/{bag}      what the hub delivers to a module input
 *   $iothub/twin/GET/?$rid={rid}                      twin read  → $iothub/twin/res/200/?$rid={rid}
 *   $iothub/twin/PATCH/properties/reported/?$rid={rid} reported patch → $iothub/twin/res/204/?$rid={rid}&$version={v}
 *   $iothub/twin/PATCH/properties/desired/?$version={v} desired patch pushed to the client
 *   $iothub/methods/POST/{method}/?$rid={rid}          method request pushed to the client
 *   $iothub/methods/res/{status}/?$rid={rid}           the client's method response
 * `{bag}` is a URL-encoded property bag (`a=1&$.ct=application%2Fjson`); `$.`-prefixed keys are system properties.
 */

interface PropertyBag {
  /** Application properties. */
  app: Record<string, string>;
  /** System properties without the `$.` prefix (ct, ce, mid, cid, on, to, ...). */
  system: Record<string, string>;
}

type ParsedTopic =
  | { kind: "telemetry"; deviceId: string; moduleId?: string; bag: PropertyBag }
  | { kind: "twin-get"; rid: string }
  | { kind: "twin-reported"; rid: string }
  | { kind: "method-response"; status: number; rid: string }
  | { kind: "iothub-other" }
  | { kind: "other" };

const MAX_BAG = 8192;

export function parsePropertyBag(s: string): PropertyBag {
  const bag: PropertyBag = { app: {}, system: {} };
  if (!s) return bag;
  if (s.length > MAX_BAG) throw new Error("property bag too long");
  for (const part of s.split("&")) {
    if (!part) continue;
    const eq = part.indexOf("=");
    const k = decodeURIComponent(eq < 0 ? part : part.slice(0, eq));
    const v = eq < 0 ? "" : decodeURIComponent(part.slice(eq + 1));
    if (k.startsWith("$.")) bag.system[k.slice(2)] = v;
    else bag.app[k] = v;
  }
  return bag;
}

function formatPropertyBag(bag: PropertyBag): string {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(bag.app)) parts.push(`${encodeURIComponent(k)}=${encodeURIComponent(v)}`);
  for (const [k, v] of Object.entries(bag.system)) parts.push(`$.${encodeURIComponent(k)}=${encodeURIComponent(v)}`);
  return parts.join("&");
}

function query(s: string): URLSearchParams {
  const q = s.startsWith("?") ? s.slice(1) : s;
  return new URLSearchParams(q);
}

export function parseTopic(topic: string): ParsedTopic {
  const lv = topic.split("/");
  // The Azure SDKs end an output's topic with a `/` after the property bag (`.../events/$.on=out&k=v/`): one empty
  // level more than the grammar, dropped here so outputs route like any telemetry.
  if (lv[0] === "devices" && (lv.length === 6 || lv.length === 8) && lv[lv.length - 1] === "" && lv[lv.length - 2] !== "") lv.pop();
  if (lv[0] === "devices" && lv.length >= 4) {
    try {
      if (lv.length === 5 && lv[2] === "messages" && lv[3] === "events") {
        return { kind: "telemetry", deviceId: lv[1] ?? "", bag: parsePropertyBag(lv[4] ?? "") };
      }
      if (lv.length === 7 && lv[2] === "modules" && lv[4] === "messages" && lv[5] === "events") {
        return { kind: "telemetry", deviceId: lv[1] ?? "", moduleId: lv[3] ?? "", bag: parsePropertyBag(lv[6] ?? "") };
      }
    } catch {
      return { kind: "other" };
    }
    return { kind: "other" };
  }
  if (lv[0] !== "$iothub") return { kind: "other" };
  const last = lv[lv.length - 1] ?? "";
  const rid = last.startsWith("?") ? query(last).get("$rid") : null;
  if (lv[1] === "twin" && lv[2] === "GET" && lv.length === 4 && rid) return { kind: "twin-get", rid };
  if (lv[1] === "twin" && lv[2] === "PATCH" && lv[3] === "properties" && lv[4] === "reported" && lv.length === 6 && rid) return { kind: "twin-reported", rid };
  if (lv[1] === "methods" && lv[2] === "res" && lv.length === 5 && rid) {
    const status = Number(lv[3]);
    if (Number.isInteger(status)) return { kind: "method-response", status, rid };
  }
  return { kind: "iothub-other" };
}

/** `$iothub/...` filters a client may subscribe to: each only ever receives what the hub writes to that connection. */
export const IOTHUB_SUBSCRIPTIONS = ["$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#", "$iothub/methods/POST/#"];

export const telemetryTopic = (deviceId: string, moduleId: string | undefined, bag: PropertyBag): string =>
  moduleId === undefined ? `devices/${deviceId}/messages/events/${formatPropertyBag(bag)}` : `devices/${deviceId}/modules/${moduleId}/messages/events/${formatPropertyBag(bag)}`;

export const inputTopic = (deviceId: string, moduleId: string, input: string, bag: PropertyBag): string =>
  `devices/${deviceId}/modules/${moduleId}/inputs/${input}/${formatPropertyBag(bag)}`;

export const twinResponseTopic = (status: number, rid: string, version?: number): string =>
  `$iothub/twin/res/${status}/?$rid=${encodeURIComponent(rid)}${version === undefined ? "" : `&$version=${version}`}`;

export const desiredPatchTopic = (version: number): string => `$iothub/twin/PATCH/properties/desired/?$version=${version}`;

export const methodRequestTopic = (method: string, rid: string): string => `$iothub/methods/POST/${encodeURIComponent(method)}/?$rid=${encodeURIComponent(rid)}`;

/**
 * Cloud → device traffic on the upstream broker. One upstream connection (the device identity) carries it for every
 * identity behind the hub, so the IoT Hub topics are prefixed with the identity they are for:
 *   devices/{d}[/modules/{m}]/$iothub/methods/POST/{method}/?$rid={rid}            a direct method call
 *   devices/{d}[/modules/{m}]/$iothub/methods/res/{status}/?$rid={rid}             the hub's answer (upstream)
 *   devices/{d}[/modules/{m}]/$iothub/twin/PATCH/properties/desired/?$version={v}  a desired-properties patch
 */
type CloudTopic =
  | { kind: "method"; deviceId: string; moduleId?: string; method: string; rid: string }
  | { kind: "desired"; deviceId: string; moduleId?: string; version?: number };

export function parseCloudTopic(topic: string): CloudTopic | undefined {
  const lv = topic.split("/");
  if (lv[0] !== "devices" || !lv[1]) return undefined;
  const deviceId = lv[1];
  let i = 2;
  let moduleId: string | undefined;
  if (lv[2] === "modules") {
    if (!lv[3]) return undefined;
    moduleId = lv[3];
    i = 4;
  }
  const rest = lv.slice(i);
  const who = moduleId === undefined ? { deviceId } : { deviceId, moduleId };
  const last = rest[rest.length - 1] ?? "";
  const q = last.startsWith("?") ? query(last) : undefined;
  if (rest.length === 5 && rest[0] === "$iothub" && rest[1] === "methods" && rest[2] === "POST" && rest[3]) {
    const rid = q?.get("$rid");
    let method: string;
    try {
      method = decodeURIComponent(rest[3]);
    } catch {
      return undefined;
    }
    return rid ? { kind: "method", ...who, method, rid } : undefined;
  }
  if (rest.length === 6 && rest.slice(0, 5).join("/") === "$iothub/twin/PATCH/properties/desired" && (q || last === "")) {
    const v = q?.get("$version");
    const version = v !== null && v !== undefined && /^[0-9]{1,15}$/.test(v) ? Number(v) : undefined;
    return version === undefined ? { kind: "desired", ...who } : { kind: "desired", ...who, version };
  }
  return undefined;
}

/** Where the cloud listens for the answer to a relayed method call. */
export const cloudMethodResponseTopic = (deviceId: string, moduleId: string | undefined, status: number, rid: string): string =>
  `devices/${deviceId}${moduleId === undefined ? "" : `/modules/${moduleId}`}/$iothub/methods/res/${status}/?$rid=${encodeURIComponent(rid)}`;

/** The filters the hub subscribes to upstream for one identity (`+` as moduleId = every module of the device). */
export const cloudFilters = (deviceId: string, moduleId?: string): string[] => {
  const base = `devices/${deviceId}${moduleId === undefined ? "" : `/modules/${moduleId}`}/$iothub`;
  return [`${base}/methods/POST/#`, `${base}/twin/PATCH/properties/desired/#`];
};
