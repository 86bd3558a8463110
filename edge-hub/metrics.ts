import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Counter, Gauge, Registry, collectDefaultMetrics } from "prom-client";

/** The hub's Prometheus metrics, on a registry of its own (several hubs can live in one process in tests). */
export class HubMetrics {
  readonly registry = new Registry();
  readonly connections = new Counter({ name: "edgehub_connections_total", help: "MQTT connections by result", labelNames: ["result", "principal"], registers: [this.registry] });
  readonly connected = new Gauge({ name: "edgehub_connected_clients", help: "Clients connected now", registers: [this.registry] });
  readonly messagesIn = new Counter({ name: "edgehub_messages_in_total", help: "Messages accepted from clients", labelNames: ["principal"], registers: [this.registry] });
  readonly messagesOut = new Counter({ name: "edgehub_messages_out_total", help: "Messages sent on, by destination", labelNames: ["destination"], registers: [this.registry] });
  readonly rejections = new Counter({ name: "edgehub_rejections_total", help: "Refused connections, publishes and subscriptions by reason", labelNames: ["reason"], registers: [this.registry] });
  readonly queueDepth: Gauge;
  readonly upstreamUp = new Gauge({ name: "edgehub_upstream_connected", help: "1 when the upstream link is up", registers: [this.registry] });

  constructor(depth: () => number, defaults = false) {
    this.queueDepth = new Gauge({
      name: "edgehub_outbox_depth", help: "Messages waiting in the outbox", registers: [this.registry],
      collect() { this.set(depth()); },
    });
    if (defaults) collectDefaultMetrics({ register: this.registry });
  }

  reject(reason: string): void {
    this.rejections.inc({ reason });
  }

  /** Current value of a counter with labels (tests, status). */
  async value(name: string, labels: Record<string, string> = {}): Promise<number> {
    const m = await this.registry.getSingleMetric(name)?.get();
    if (!m) return 0;
    return m.values.filter((v) => Object.entries(labels).every(([k, l]) => String(v.labels[k]) === l)).reduce((n, v) => n + v.value, 0);
  }
}

/** `/metrics` on a loopback HTTP port. */
export async function serveMetrics(metrics: HubMetrics, host: string, port: number): Promise<{ server: Server; port: number }> {
  if (host !== "127.0.0.1" && host !== "::1" && host !== "localhost") throw new Error(`metrics listen on loopback only, not ${host}`);
  const server = createServer((req, res) => {
    if (req.method === "GET" && req.url === "/metrics") {
      metrics.registry.metrics().then(
        (text) => { res.writeHead(200, { "content-type": metrics.registry.contentType }); res.end(text); },
        () => { res.writeHead(500); res.end(); },
      );
      return;
    }
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found\n");
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  return { server, port: (server.address() as AddressInfo).port };
}
