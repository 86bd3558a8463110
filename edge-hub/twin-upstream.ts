import type { HubStore } from "./store.js";

/**
 * Reported properties go to the cloud: a client's reported patch (`$iothub/twin/PATCH/properties/reported/`) is
 * merged into the hub's twin and, in the same SQLite transaction, queued in the outbox as
 *   devices/{d}[/modules/{m}]/$iothub/twin/PATCH/properties/reported/?$version={v}
 * (with `upstreamTopicPrefix`), so it leaves with the durable outbox: at-least-once, in order with the identity's
 * other traffic of the same priority, kept across a hub restart or an upstream outage. The cloud tells a duplicate
 * from a new patch by `$version`. An outbox at its cap refuses the patch (HUB_OUTBOX_FULL): nothing is applied, the
 * client gets an error status and may retry — the twin never holds a state the cloud will not hear of.
 */
const REPORTED_ROUTE = "$twin-reported";

const cloudReportedTopic = (deviceId: string, moduleId: string | undefined, version: number): string =>
  `devices/${deviceId}${moduleId === undefined ? "" : `/modules/${moduleId}`}/$iothub/twin/PATCH/properties/reported/?$version=${version}`;

export function patchReportedAndForward(
  store: HubStore,
  who: { key: string; deviceId: string; moduleId?: string },
  patch: Record<string, unknown>,
  upstream: { prefix: string; priority: number; ttlSeconds: number } | undefined,
): number {
  return store.db.transaction(() => {
    const v = store.patchReported(who.key, patch);
    if (upstream) {
      store.enqueue([{
        route: REPORTED_ROUTE, priority: upstream.priority, ttlSeconds: upstream.ttlSeconds,
        topic: upstream.prefix + cloudReportedTopic(who.deviceId, who.moduleId, v), payload: Buffer.from(JSON.stringify(patch)),
      }]);
    }
    return v;
  })();
}
