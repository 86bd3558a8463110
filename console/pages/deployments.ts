import { html, query, type Html } from "../html.js";
import { page, statusBadge, when } from "../layout.js";
import { DeploymentStore } from "../../ca-service/index.js";
import type { PageContext } from "../context.js";
import { checkSigners, loadTrust, type SignerCheck } from "../deployment-check.js";

function signers(c: SignerCheck): Html {
  if (c.unavailable) return html`<span class="muted">not checked: ${c.unavailable}</span>`;
  return html`<span class="signers">${c.signers.length ? c.signers.map((s) => html`<code>${s}</code> `) : "none"}</span> <small>${c.signers.length} of ${c.threshold ?? "?"} required</small> ${statusBadge(c.met ? "threshold-met" : "threshold-not-met")}${c.problems.map((p) => html`<div class="reason">${p}</div>`)}`;
}

export async function deploymentsPage(ctx: PageContext): Promise<Html> {
  const { queries, session, deps } = ctx;
  const [list, counts, trust] = await Promise.all([new DeploymentStore(deps.store).list(), queries.rolloutCounts(), loadTrust(deps.caConfig)]);
  const checks = await Promise.all(list.map((d) => checkSigners(d, trust)));
  const body = html`
<p class="muted">Manifests are signed offline by the security team; the CA stores and serves them and cannot sign. Signers are checked here against the trust root of ${"error" in trust ? "the policy (unavailable)" : html`<code>${trust.file}</code>`} the way a device checks them.</p>
<table class="deployments"><thead><tr><th>Deployment</th><th>Targets</th><th>Signers that met the threshold</th><th>Rollout</th><th>Uploaded</th></tr></thead><tbody>
${list.length === 0 ? html`<tr><td colspan="5" class="muted">no deployment uploaded</td></tr>` : list.map((d, i) => {
    const c = counts.find((x) => x.deploymentId === d.deploymentId && x.version === d.version);
    const check = checks[i];
    return html`<tr data-deployment="${d.deploymentId}@${d.version}">
<td><a href="/console/deployments/${encodeURIComponent(d.deploymentId)}/${d.version}"><b>${d.deploymentId}</b> v${d.version}</a><br><small><code>${d.payloadSha256.slice(0, 16)}…</code></small></td>
<td>${d.targets.map((t) => html`<code>${t}</code> `)}</td>
<td>${check ? signers(check) : ""}</td>
<td>${statusBadge("applied")} ${c?.applied ?? 0} · ${statusBadge("refused")} ${c?.refused ?? 0}</td>
<td>${when(d.uploadedAt)}<br><small>${d.uploadedBy}</small></td></tr>`;
  })}
</tbody></table>`;
  return page("Deployments", session, "/console/deployments", body);
}

export async function rolloutPage(ctx: PageContext, deploymentId: string, version: number, after?: string): Promise<Html | undefined> {
  const { queries, session, deps } = ctx;
  const rec = (await new DeploymentStore(deps.store).list()).find((d) => d.deploymentId === deploymentId && d.version === version);
  if (!rec) return undefined;
  const [check, rollout, counts] = await Promise.all([
    loadTrust(deps.caConfig).then((t) => checkSigners(rec, t)),
    queries.rollout(deploymentId, version, { after, limit: deps.console.pageSize }),
    queries.rolloutCounts(),
  ]);
  const c = counts.find((x) => x.deploymentId === deploymentId && x.version === version);
  const body = html`
<dl class="summary">
  <dt>Targets</dt><dd>${rec.targets.map((t) => html`<code>${t}</code> `)}</dd>
  <dt>Payload sha256</dt><dd><code>${rec.payloadSha256}</code></dd>
  <dt>Signers</dt><dd>${signers(check)}</dd>
  <dt>Uploaded</dt><dd>${when(rec.uploadedAt)} by ${rec.uploadedBy}</dd>
  <dt>Rollout</dt><dd>${c?.applied ?? 0} applied · ${c?.refused ?? 0} refused</dd>
</dl>
<h2>Rollout per device</h2>
<table><thead><tr><th>Device</th><th>Outcome</th><th>Reasons</th><th>At</th></tr></thead><tbody>
${rollout.rows.length === 0 ? html`<tr><td colspan="4" class="muted">no device reported on this version yet</td></tr>` : rollout.rows.map((r) => html`<tr><td><a href="/console/devices/${encodeURIComponent(r.deviceId)}">${r.deviceId}</a></td><td>${statusBadge(r.outcome)}</td><td>${r.reasons.map((x) => html`<div class="reason">${x}</div>`)}</td><td>${when(r.at)}</td></tr>`)}
</tbody></table>
<nav class="pager">${after ? html`<a href="/console/deployments/${encodeURIComponent(deploymentId)}/${version}">« first page</a>` : ""}${rollout.next ? html`<a rel="next" href="/console/deployments/${encodeURIComponent(deploymentId)}/${version}${query({ after: rollout.next })}">next page »</a>` : ""}</nav>`;
  return page(`Deployment ${deploymentId} v${version}`, session, "/console/deployments", body);
}
