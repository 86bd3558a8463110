import { html, type Html } from "./html.js";
import type { Session } from "./session.js";

const NAV: Array<[string, string]> = [
  ["/console/fleet", "Fleet"],
  ["/console/lines", "Provisioning lines"],
  ["/console/deployments", "Deployments"],
  ["/console/audit", "Audit"],
  ["/console/policy", "Policy"],
];

/** The page shell: navigation, who is signed in (role, session expiry) and the sign-out form. */
export function page(title: string, session: Session | undefined, current: string, body: Html): Html {
  return html`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${title} · edgetrust console</title>
<link rel="stylesheet" href="/console/static/console.css">
<script src="/console/static/console.js" defer></script>
</head>
<body>
<header class="top">
  <a class="brand" href="/console/fleet">edgetrust <span>security console</span></a>
  ${session ? html`<nav>${NAV.map(([href, label]) => html`<a href="${href}"${current === href ? html` class="current" aria-current="page"` : ""}>${label}</a>`)}</nav>
  <div class="who">
    <span class="principal" data-role="${session.principal.role}">${session.principal.name} · ${session.principal.role}</span>
    <span class="expiry">session until ${session.expiresAt.slice(11, 16)} UTC</span>
    <form method="post" action="/console/signout"><input type="hidden" name="_csrf" value="${session.csrfToken}"><button type="submit" class="link">Sign out</button></form>
  </div>` : ""}
</header>
<main>
<h1>${title}</h1>
${body}
</main>
</body>
</html>`;
}

export function statusBadge(status: string | null | undefined): Html {
  const s = status ?? "unknown";
  return html`<span class="badge ${`st-${s.replace(/[^a-z-]/g, "")}`}">${s}</span>`;
}

export function when(iso: string | null | undefined): Html {
  if (!iso) return html`<span class="muted">—</span>`;
  return html`<time datetime="${iso}">${iso.slice(0, 16).replace("T", " ")}</time>`;
}

/** Expiry with a warning class when within 7 days and an alarm class when past. */
export function expiry(iso: string | null | undefined, now = Date.now()): Html {
  if (!iso) return html`<span class="muted">none</span>`;
  const left = Date.parse(iso) - now;
  const days = Math.floor(left / 86400e3);
  const cls = left < 0 ? "exp-past" : left < 7 * 86400e3 ? "exp-soon" : "exp-ok";
  return html`<span class="${cls}"><time datetime="${iso}">${iso.slice(0, 10)}</time> <small>${left < 0 ? "expired" : `${days} d`}</small></span>`;
}

export function csrfField(session: Session): Html {
  return html`<input type="hidden" name="_csrf" value="${session.csrfToken}">`;
}
