import { Counter, Histogram, Registry, collectDefaultMetrics } from "prom-client";

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

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: "edgetrust_ca_" });
  }
}
