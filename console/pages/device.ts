import { html, type Html } from "../html.js";
import { csrfField, expiry, page, statusBadge, when } from "../layout.js";
import { DeploymentStore, EnrollmentStore, REVOCATION_REASONS, type AuditEntry } from "../../ca-service/index.js";
import { isAdmin, type PageContext } from "../context.js";
import { checkSigners, loadTrust, type SignerCheck } from "../deployment-check.js";
import { auditTable } from "./audit.js";

/** Reasons an operator may choose; removeFromCRL only un-holds and is not a revocation. */
export const CONSOLE_REVOCATION_REASONS = REVOCATION_REASONS.filter((r) => r !== "removeFromCRL");

function signerCell(c: SignerCheck | undefined): Html {
  if (!c) return html`<span class="muted">deployment not stored</span>`;
  if (c.unavailable) return html`<span class="muted">not checked: ${c.unavailable}</span>`;
  return html`${c.signers.length ? c.signers.join(", ") : "none"} <small>(${c.signers.length} of ${c.threshold ?? "?"})</small> ${c.met ? statusBadge("threshold-met") : statusBadge("threshold-not-met")}${c.problems.map((p) => html`<br><small class="reason">${p}</small>`)}`;
}

export async function devicePage(ctx: PageContext, deviceId: string, notice?: Html): Promise<Html | undefined> {
  const { queries, session, deps, now } = ctx;
  const dev = await queries.device(deviceId);
  if (!dev) return undefined;
  const [certs, attestations, rollout, enrollment] = await Promise.all([
    queries.certificates(deviceId), queries.attestations(deviceId, 10), queries.rolloutOfDevice(deviceId), new EnrollmentStore(deps.store).getIndividual(deviceId),
  ]);
  const audit: AuditEntry[] = await queries.auditAbout([deviceId, ...certs.map((c) => c.serial)], 100);
  const latest = attestations[0];
  const deployments = await new DeploymentStore(deps.store).list();
  const trust = rollout.length ? await loadTrust(deps.caConfig) : { error: "" };
  const checks = new Map<string, SignerCheck>();
  for (const r of rollout) {
    const key = `${r.deploymentId}@${r.version}`;
    const rec = deployments.find((d) => d.deploymentId === r.deploymentId && d.version === r.version);
    if (rec && !checks.has(key)) checks.set(key, await checkSigners(rec, trust));
  }
  const good = certs.filter((c) => c.status === "good");
  const issuers = new Map(deps.ca.issuers().map((i) => [i.record.id, i]));
  const roots = deps.ca.rootCertificates();
  const chainOf = (issuerId: string): Html => {
    const i = issuers.get(issuerId);
    if (!i) return html`<span class="muted">issuer ${issuerId} not loaded</span>`;
    const root = roots.find((r) => r.subject === i.cert.issuer);
    return html`<ol class="chain"><li>${i.cert.subject} <small>(issuing CA, until ${i.cert.notAfter.toISOString().slice(0, 10)})</small></li><li>${root ? root.subject : i.cert.issuer} <small>(root)</small></li></ol>`;
  };
  const body = html`
${notice ?? ""}
<section class="summary">
<dl>
  <dt>Device</dt><dd id="device-id">${dev.deviceId}</dd>
  <dt>Common name</dt><dd>${dev.commonName}</dd>
  <dt>Kind</dt><dd>${dev.kind} · record ${dev.recordStatus}</dd>
  <dt>Labels</dt><dd class="labels-cell">${Object.entries(dev.labels).map(([k, v]) => html`<span class="label"><span class="k">${k}</span>=<span class="v">${v}</span></span> `)}</dd>
  <dt>Enrollment</dt><dd>${enrollment ? html`${enrollment.attestation} · ${enrollment.profile}${enrollment.lineId ? html` · line <a href="/console/lines#line-${enrollment.lineId}">${enrollment.lineId}</a>` : " · by an admin"}` : html`<span class="muted">no individual enrollment</span>`}</dd>
  <dt>Attestation</dt><dd>${statusBadge(dev.attestation?.status ?? "unknown")} ${when(dev.attestation?.at)}</dd>
  <dt>Identity cert expiry</dt><dd>${expiry(dev.certNotAfter, now)}</dd>
  <dt>Deployment applied</dt><dd>${dev.deployment ? `${dev.deployment.id} v${dev.deployment.version}` : "none"}</dd>
</dl>
</section>

<h2>Latest attestation result</h2>
${latest ? html`<p>${statusBadge(latest.status)} at ${when(latest.at)} · reference values: <code>${latest.reference}</code></p>
<table class="claims-table"><thead><tr><th>Claim</th><th>Status</th><th>Reason</th><th>Measured</th><th>Deciding rule</th></tr></thead><tbody>
${Object.entries(latest.claims).map(([name, c]) => html`<tr class="st-${c.status}"><td>${name}</td><td>${statusBadge(c.status)}</td><td>${c.reason}</td><td><code>${c.measured ?? ""}</code></td><td>${c.reference ?? html`<span class="muted">none</span>`}</td></tr>`)}
</tbody></table>
${attestations.length > 1 ? html`<p class="history">Earlier: ${attestations.slice(1).map((a) => html`${statusBadge(a.status)} ${when(a.at)} `)}</p>` : ""}` : html`<p class="muted">This device has never sent attestation evidence.</p>`}

<h2>Certificates</h2>
<table class="certs"><thead><tr><th>Serial</th><th>Profile</th><th>Subject · SANs</th><th>Valid</th><th>Status</th><th>Chain</th></tr></thead><tbody>
${certs.map((c) => html`<tr data-serial="${c.serial}"><td><code>${c.serial}</code></td><td>${c.profile}</td><td>${c.subject}<br><small>${c.sans.join(", ")}</small></td>
<td>${c.notBefore.slice(0, 10)} → ${expiry(c.notAfter, now)}</td>
<td>${c.status === "revoked" ? html`${statusBadge("revoked")} <small>${c.revocationReason} ${when(c.revokedAt)}</small>` : statusBadge("good")}</td>
<td>${chainOf(c.issuerId)}<details><summary>PEM</summary><pre>${c.certPem}</pre></details></td></tr>`)}
</tbody></table>

${isAdmin(session) && good.length > 0 ? html`<section class="danger" id="revoke">
<h2>Revoke</h2>
<form method="post" action="/console/devices/${encodeURIComponent(dev.deviceId)}/revoke" class="revoke-form">
  ${csrfField(session)}
  <label>Certificates <select name="serial">
    <option value="all">all ${good.length} current certificates of this device</option>
    ${good.map((c) => html`<option value="${c.serial}">${c.profile} ${c.serial}</option>`)}
  </select></label>
  <label>RFC 5280 reason <select name="reason" required>
    ${CONSOLE_REVOCATION_REASONS.map((r) => html`<option value="${r}"${r === "keyCompromise" ? html` selected` : ""}>${r}</option>`)}
  </select></label>
  <label>Type the device id to confirm <input name="confirm" autocomplete="off" required data-must-equal="${dev.deviceId}"></label>
  <button type="submit" class="danger">Revoke</button>
  <p class="muted">The CRL is re-signed and OCSP answers <code>revoked</code> as soon as this returns; the revocation is audited under your name.</p>
</form></section>` : ""}

<h2>Deployment history</h2>
${rollout.length ? html`<table><thead><tr><th>Deployment</th><th>Outcome</th><th>Reasons</th><th>Signers that met the threshold</th><th>At</th></tr></thead><tbody>
${rollout.map((r) => html`<tr><td><a href="/console/deployments/${encodeURIComponent(r.deploymentId)}/${r.version}">${r.deploymentId} v${r.version}</a></td><td>${statusBadge(r.outcome)}</td><td>${r.reasons.map((x) => html`<div class="reason">${x}</div>`)}</td><td>${signerCell(checks.get(`${r.deploymentId}@${r.version}`))}</td><td>${when(r.at)}</td></tr>`)}
</tbody></table>` : html`<p class="muted">No deployment report from this device.</p>`}

<h2>Audit entries about this device</h2>
${auditTable(audit)}`;
  return page(`Device ${dev.deviceId}`, session, "/console/fleet", body);
}

