import { html, query, type Html } from "../html.js";
import { page, statusBadge, when } from "../layout.js";
import type { AuditEntry, AuditFilter } from "../../ca-service/index.js";
import type { PageContext } from "../context.js";

interface AuditQuery {
  action?: string;
  actor?: string;
  target?: string;
  before?: number;
}

export function auditTable(entries: AuditEntry[]): Html {
  if (entries.length === 0) return html`<p class="muted">No audit entries.</p>`;
  return html`<table class="audit"><thead><tr><th>#</th><th>At</th><th>Actor</th><th>Action</th><th>Target</th><th>Details</th><th>Hash</th></tr></thead><tbody>
${entries.map((e) => html`<tr data-seq="${e.seq}"><td>${e.seq}</td><td>${when(e.at)}</td><td>${e.actor}</td><td><a href="/console/audit${query({ action: e.action })}">${e.action}</a></td><td><a href="/console/audit${query({ target: e.target })}">${e.target}</a></td><td><code class="details">${JSON.stringify(e.details)}</code></td><td><code title="${e.hash}">${e.hash.slice(0, 12)}…</code></td></tr>`)}
</tbody></table>`;
}

function auditFilter(q: AuditQuery, limit: number): AuditFilter {
  return { action: q.action, actor: q.actor, target: q.target, beforeSeq: q.before, limit };
}

export async function auditPage(ctx: PageContext, q: AuditQuery, verify: boolean): Promise<Html> {
  const { queries, session, deps } = ctx;
  const [list, verdict] = await Promise.all([
    queries.audit(auditFilter(q, deps.console.pageSize)),
    verify ? deps.store.verifyAudit() : Promise.resolve(undefined),
  ]);
  const keep = { action: q.action, actor: q.actor, target: q.target };
  const body = html`
${verdict ? html`<section class="verdict ${verdict.ok ? "ok" : "broken"}" id="verify-result" role="status">
  ${verdict.ok
    ? html`${statusBadge("verified")} The chain verifies: ${verdict.entries} entries, each linked to its predecessor, head at #${verdict.headSeq}.`
    : html`${statusBadge("broken")} The chain is broken at entry #${verdict.problem?.seq ?? "?"}: ${verdict.problem?.reason ?? "unknown"}. ${verdict.entries} entries verified before it.`}
  <small>checked ${new Date().toISOString().slice(0, 19).replace("T", " ")} UTC</small>
</section>` : ""}
<form class="filters" method="get" action="/console/audit">
  <label>Action <input name="action" value="${q.action ?? ""}" placeholder="cert.revoke or cert." maxlength="64"></label>
  <label>Actor contains <input name="actor" value="${q.actor ?? ""}" maxlength="128"></label>
  <label>Target <input name="target" value="${q.target ?? ""}" placeholder="serial, device, line" maxlength="256"></label>
  <button type="submit">Filter</button>
  ${q.action || q.actor || q.target ? html`<a href="/console/audit">clear</a>` : ""}
</form>
<p class="actions">
  <a class="button" href="/console/audit${query({ ...keep, verify: 1 })}">Verify the chain now</a>
  Export ${q.action || q.actor || q.target ? "these entries" : "the log"}: <a href="/console/audit/export${query({ ...keep, format: "jsonl" })}" download>JSON lines</a> · <a href="/console/audit/export${query({ ...keep, format: "csv" })}" download>CSV</a>
</p>
${auditTable(list.entries)}
<nav class="pager">${q.before ? html`<a href="/console/audit${query(keep)}">« newest</a>` : ""}${list.next ? html`<a rel="next" href="/console/audit${query({ ...keep, before: list.next })}">older »</a>` : ""}</nav>`;
  return page("Audit log", session, "/console/audit", body);
}

const csvCell = (v: string): string => {
  // A cell starting with = + - @ would be a formula in a spreadsheet: prefix it with a quote (OWASP CSV injection).
  const t = /^[=+\-@\t\r]/.test(v) ? `'${v}` : v;
  return /[",\n\r]/.test(t) ? `"${t.replace(/"/g, '""')}"` : t;
};

/** Export lines for the filtered log, oldest page last, at most `max` entries. */
export async function* exportAudit(ctx: PageContext, q: AuditQuery, format: "csv" | "jsonl", max = 100_000): AsyncGenerator<string> {
  if (format === "csv") yield "seq,at,actor,action,target,details,prev_hash,hash\n";
  let before = q.before;
  let n = 0;
  for (;;) {
    const page = await ctx.queries.audit({ ...auditFilter({ ...q, ...(before !== undefined ? { before } : {}) }, 1000) });
    for (const e of page.entries) {
      if (n++ >= max) return;
      yield format === "jsonl"
        ? `${JSON.stringify(e)}\n`
        : `${[String(e.seq), e.at, e.actor, e.action, e.target, JSON.stringify(e.details), e.prevHash, e.hash].map(csvCell).join(",")}\n`;
    }
    if (page.next === undefined) return;
    before = page.next;
  }
}
