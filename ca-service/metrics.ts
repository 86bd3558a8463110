import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

/** Prometheus metrics of one CA server (own registry, so several servers in one process do not collide). */
export class CaMetrics {
  readonly registry = new Registry();
  readonly httpRequests = new Counter({ name: "edgetrust_ca_http_requests_total", help: "HTTP requests by route and status", labelNames: ["method", "route", "status"], registers: [this.registry] });
  readonly httpDuration = new Histogram({ name: "edgetrust_ca_http_request_duration_seconds", help: "HTTP request duration", labelNames: ["method", "route"], buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5], registers: [this.registry] });
  readonly issued = new Counter({ name: "edgetrust_ca_certificates_issued_total", help: "Certificates issued by profile and kind (issue, renew, rekey)", labelNames: ["profile", "kind"], registers: [this.registry] });
  readonly refused = new Counter({ name: "edgetrust_ca_issuance_refused_total", help: "Issuance requests refused, by error code", labelNames: ["code"], registers: [this.registry] });
  readonly revoked = new Counter({ name: "edgetrust_ca_certificates_revoked_total", help: "Revocations by reason", labelNames: ["reason"], registers: [this.registry] });
  readonly ocsp = new Counter({ name: "edgetrust_ca_ocsp_responses_total", help: "OCSP responses by outcome", labelNames: ["outcome"], registers: [this.registry] });
  readonly authFailures = new Counter({ name: "edgetrust_ca_auth_failures_total", help: "Rejected admin requests by code", labelNames: ["code"], registers: [this.registry] });

  /**
   * The text `GET /metrics` answers. One process: this registry. A `ca serve --workers` worker replaces it with the
   * service's figures, every worker's registry aggregated by the primary (cluster.ts).
   */
  exposition: () => Promise<string> = () => this.registry.metrics();

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: "edgetrust_ca_" });
  }

  /** Group commit of issued certificates (group-commit.ts): transactions, certificates, largest batch, lone retries. */
  watchGroupCommit(stats: { batches: number; records: number; largest: number; retriedAlone: number }): void {
    const registers = [this.registry];
    new Counter({ name: "edgetrust_ca_issuance_commits_total", help: "Transactions that recorded issued certificates (group commit)", registers, collect() { this.reset(); this.inc(stats.batches); } });
    new Counter({ name: "edgetrust_ca_issuance_committed_total", help: "Issued certificates committed through group commit", registers, collect() { this.reset(); this.inc(stats.records); } });
    new Counter({ name: "edgetrust_ca_issuance_retried_alone_total", help: "Certificates retried in their own transaction after their batch failed", registers, collect() { this.reset(); this.inc(stats.retriedAlone); } });
    new Gauge({ name: "edgetrust_ca_issuance_largest_batch", help: "Most certificates committed in one transaction since start", registers, aggregator: "max", collect() { this.set(stats.largest); } });
  }
}
