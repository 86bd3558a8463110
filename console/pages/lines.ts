import { html, type Html } from "../html.js";
import { csrfField, page, statusBadge, when } from "../layout.js";
import { EnrollmentStore } from "../../ca-service/index.js";
import { isAdmin, type PageContext } from "../context.js";

export async function linesPage(ctx: PageContext, notice?: Html): Promise<Html> {
  const { queries, session, deps, now } = ctx;
  const lines = await new EnrollmentStore(deps.store).listLines();
  const usage = await Promise.all(lines.map((l) => queries.lineUsage(l.id, now)));
  const body = html`
${notice ?? ""}
<p class="muted">A provisioning line is a factory's credential: it may create enrollments up to its quota, at its rate. Refusals come from the refusal audit (<code>enrollment.refused</code>, <code>registration.refused</code>).</p>
<table class="lines"><thead><tr><th>Line</th><th>Usage / quota</th><th>Rate</th><th>Refusals</th><th>Status</th>${isAdmin(session) ? html`<th></th>` : ""}</tr></thead><tbody>
${lines.length === 0 ? html`<tr><td colspan="6" class="muted">no provisioning line</td></tr>` : lines.map((l, i) => {
    const u = usage[i];
    const pct = l.maxEnrollments > 0 ? Math.min(100, Math.round((100 * l.enrollmentsCreated) / l.maxEnrollments)) : 100;
    return html`<tr id="line-${l.id}" data-line="${l.name}">
<td><b>${l.name}</b><br><small><code>${l.id}</code> · ${l.kind} · scopes ${l.scopes.join(", ")} · since ${l.createdAt.slice(0, 10)}</small><br><a href="/console/fleet?line=${encodeURIComponent(l.id)}">its devices</a></td>
<td><meter min="0" max="${l.maxEnrollments}" value="${l.enrollmentsCreated}" high="${Math.floor(l.maxEnrollments * 0.9)}">${pct}%</meter> ${l.enrollmentsCreated} / ${l.maxEnrollments} <small>(${pct}%)</small></td>
<td>${u?.enrolledLastHour ?? 0} in the last hour · ${u?.enrolledLastDay ?? 0} in 24 h<br><small>limit ${l.ratePerMinute} requests/min</small></td>
<td>${u?.refusals ?? 0}${u && u.lastRefusals.length ? html`<ul class="refusals">${u.lastRefusals.map((r) => html`<li>${when(r.at)} <b>${String(r.details.code ?? r.action)}</b> ${r.target}: <span class="reason">${String(r.details.reason ?? "")}</span></li>`)}</ul>` : ""}</td>
<td>${l.revokedAt ? html`${statusBadge("revoked")} ${when(l.revokedAt)}` : statusBadge("active")}</td>
${isAdmin(session) ? html`<td>${l.revokedAt ? "" : html`<form method="post" action="/console/lines/${encodeURIComponent(l.id)}/revoke" class="revoke-form">
  ${csrfField(session)}<label>Type <b>${l.name}</b> to confirm <input name="confirm" autocomplete="off" required data-must-equal="${l.name}"></label>
  <button type="submit" class="danger">Revoke line credential</button></form>`}</td>` : ""}
</tr>`;
  })}
</tbody></table>`;
  return page("Provisioning lines", session, "/console/lines", body);
}
