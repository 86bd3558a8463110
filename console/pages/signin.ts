import { html, type Html } from "../html.js";
import { page } from "../layout.js";

export function signinPage(opts: { message?: string; certificate?: string | undefined; expired?: boolean }): Html {
  return page("Sign in", undefined, "", html`
${opts.expired ? html`<p class="notice" role="status">Your session has expired. Sign in again.</p>` : ""}
${opts.message ? html`<p class="error" role="alert">${opts.message}</p>` : ""}
<section class="signin">
<form method="post" action="/console/signin" class="token-form">
  <label>Admin or auditor API token <input type="password" name="token" autocomplete="off" required minlength="16" maxlength="256"></label>
  <button type="submit">Sign in</button>
  <p class="muted">The token is exchanged for a session cookie; it is never stored in the browser.</p>
</form>
<form method="post" action="/console/signin/certificate" class="cert-form">
  <p>${opts.certificate ? html`Your browser presented <code>${opts.certificate}</code>.` : html`<span class="muted">Your browser presented no client certificate.</span>`}</p>
  <button type="submit"${opts.certificate ? "" : html` disabled`}>Sign in with my client certificate</button>
</form>
</section>`);
}

