import { html, type Html } from "../html.js";
import { page } from "../layout.js";
import { explainPolicy, loadPolicy } from "../../policy/index.js";
import { referencesFromConfig } from "../../ca-service/index.js";
import type { PageContext } from "../context.js";
import { policyFileOf } from "../deployment-check.js";

/** `policy explain` of the policy the CA appraises attestation against, and the reference values it resolves to. */
export async function policyPage(ctx: PageContext): Promise<Html> {
  const { session, deps } = ctx;
  const file = policyFileOf(deps.caConfig);
  let body: Html;
  if (!file) {
    body = html`<p class="muted">No policy file is configured (<code>ca.attestation.policyFile</code>); every attestation claim is only a warning.</p>`;
  } else {
    try {
      const { policy } = loadPolicy(file);
      const refs = referencesFromConfig(deps.caConfig.attestation);
      const rules = Object.entries(refs.rules ?? {});
      body = html`<p>Source: <code>${file}</code> · the CA re-reads it for every appraisal. This is <code>edgetrust policy explain ${file}</code>:</p>
<pre class="explain">${explainPolicy(policy)}</pre>
<h2>Attestation reference values in force</h2>
${rules.length ? html`<table><thead><tr><th>Claim</th><th>Rule</th><th>Reference values</th><th>A mismatch is</th></tr></thead><tbody>
${rules.map(([claim, rule]) => {
    const values = (refs as unknown as Record<string, unknown>)[claim];
    const shown = Array.isArray(values) ? values.join(", ") : values && typeof values === "object" ? JSON.stringify(values) : claim === "modules" && refs.modulesFromManifest ? "the digests the attested manifest pins" : "";
    return html`<tr><td>${claim}</td><td><code>${rule}</code></td><td><code class="details">${shown}</code></td><td>${refs.mismatch?.[claim as keyof NonNullable<typeof refs.mismatch>] ?? "contraindicated"}</td></tr>`;
  })}
</tbody></table>` : html`<p class="muted">The policy has no <code>attestation:</code> section: every claim is only a warning.</p>`}`;
    } catch (e) {
      body = html`<p class="error">The policy does not load: ${(e as Error).message}</p>`;
    }
  }
  return page("Policy", session, "/console/policy", body);
}
