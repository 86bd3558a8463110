import { html, query, type Html } from "../html.js";
import { expiry, page, statusBadge, when } from "../layout.js";
import { stackedBars } from "../charts.js";
import { EnrollmentStore, type FleetFilter, type FleetRow, type FleetStatus } from "../../ca-service/index.js";
import type { PageContext } from "../context.js";

interface FleetQuery {
  status?: FleetStatus;
  q?: string;
  expiring?: number;
  line?: string;
  after?: string;
}

function labels(l: Record<string, string>): Html {
  const e = Object.entries(l);
  if (e.length === 0) return html``;
  return html`<ul class="labels">${e.map(([k, v]) => html`<li><span class="k">${k}</span>=<span class="v">${v}</span></li>`)}</ul>`;
}

function failing(r: FleetRow): Html {
  if (!r.attestation || r.attestation.failing.length === 0) return html`<span class="muted">—</span>`;
  return html`<ul class="claims">${r.attestation.failing.map((c) => html`<li class="claim st-${c.status}"><b>${c.claim}</b> ${statusBadge(c.status)} <span class="reason">${c.reason}</span>${c.reference ? html` <span class="rule">rule: ${c.reference}</span>` : ""}</li>`)}</ul>`;
}

export async function fleetPage(ctx: PageContext, q: FleetQuery): Promise<Html> {
  const { queries, session, now } = ctx;
  const filter: FleetFilter = { status: q.status, q: q.q, expiringWithinDays: q.expiring, lineId: q.line, after: q.after, limit: ctx.deps.console.pageSize };
  const [counts, fleet, att, iss, lines] = await Promise.all([
    queries.counts(now), queries.fleet(filter), queries.attestationsPerDay(14, now), queries.issuancePerDay(14, now), new EnrollmentStore(ctx.deps.store).listLines(),
  ]);
  const keep = { status: q.status, q: q.q, expiring: q.expiring, line: q.line };
  const card = (label: string, n: number, params: Record<string, string | number | undefined>, cls = ""): Html =>
    html`<a class="card ${cls}" href="/console/fleet${query(params)}"><span class="n">${n}</span><span class="l">${label}</span></a>`;
  const body = html`
<section class="cards" aria-label="counts">
  ${card("devices", counts.devices, {})}
  ${card("affirming", counts.byStatus.affirming, { status: "affirming" }, "st-affirming")}
  ${card("warning", counts.byStatus.warning, { status: "warning" }, "st-warning")}
  ${card("contraindicated", counts.byStatus.contraindicated, { status: "contraindicated" }, "st-contraindicated")}
  ${card("never attested", counts.byStatus.unknown, { status: "unknown" }, "st-unknown")}
  ${card("identity certs expiring in 7 days", counts.expiringWithin7Days, { expiring: 7 }, "exp-soon")}
</section>
<section class="charts">
  ${stackedBars("Attestation results per day", att, ["affirming", "warning", "contraindicated"])}
  ${stackedBars("Certificates issued per day", iss, ["device-identity", "edge-ca", "edge-hub-server"])}
</section>
<form class="filters" method="get" action="/console/fleet" role="search">
  <label>Search <input type="search" name="q" value="${q.q ?? ""}" placeholder="device id or name" maxlength="128"></label>
  <label>Attestation <select name="status" class="autosubmit">
    <option value="">any</option>
    ${(["affirming", "warning", "contraindicated", "unknown"] as const).map((s) => html`<option value="${s}"${q.status === s ? html` selected` : ""}>${s === "unknown" ? "never attested" : s}</option>`)}
  </select></label>
  <label>Identity cert expires <select name="expiring" class="autosubmit">
    <option value="">any time</option>
    ${[7, 30, 90].map((d) => html`<option value="${d}"${q.expiring === d ? html` selected` : ""}>within ${d} days</option>`)}
  </select></label>
  <label>Line <select name="line" class="autosubmit">
    <option value="">any</option>
    ${lines.map((l) => html`<option value="${l.id}"${q.line === l.id ? html` selected` : ""}>${l.name}</option>`)}
  </select></label>
  <button type="submit">Filter</button>
  ${q.status || q.q || q.expiring || q.line ? html`<a href="/console/fleet">clear</a>` : ""}
</form>
<table class="fleet">
<thead><tr><th>Device</th><th>Attestation</th><th>Failing claims (reason · deciding rule)</th><th>Identity cert expiry</th><th>Deployment applied</th><th>Last report</th></tr></thead>
<tbody>
${fleet.rows.length === 0 ? html`<tr><td colspan="6" class="muted">no device matches</td></tr>` : fleet.rows.map((r) => html`<tr data-device="${r.deviceId}">
  <td><a href="/console/devices/${encodeURIComponent(r.deviceId)}">${r.deviceId}</a>${r.commonName !== r.deviceId ? html` <small>${r.commonName}</small>` : ""}${r.recordStatus === "disabled" ? html` <span class="badge">disabled</span>` : ""}${labels(r.labels)}</td>
  <td>${statusBadge(r.attestation?.status ?? "unknown")}<br>${when(r.attestation?.at)}</td>
  <td>${failing(r)}</td>
  <td>${expiry(r.certNotAfter, now)}</td>
  <td>${r.deployment ? html`<a href="/console/deployments/${encodeURIComponent(r.deployment.id)}/${r.deployment.version}">${r.deployment.id} v${r.deployment.version}</a>` : html`<span class="muted">none</span>`}</td>
  <td>${r.lastReport ? html`${r.lastReport.kind}<br>${when(r.lastReport.at)}` : html`<span class="muted">never</span>`}</td>
</tr>`)}
</tbody>
</table>
<nav class="pager">${q.after ? html`<a href="/console/fleet${query(keep)}">« first page</a>` : ""}${fleet.next ? html`<a rel="next" href="/console/fleet${query({ ...keep, after: fleet.next })}">next page »</a>` : ""}</nav>`;
  return page("Fleet", session, "/console/fleet", body);
}
