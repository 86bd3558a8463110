// edgetrust console: the only script the pages load (CSP script-src 'self'; no inline script anywhere).
// Progressive enhancement only: every page and form works without it.
/* global document */
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Filter selects submit their form at once.
  for (const sel of document.querySelectorAll("select.autosubmit")) {
    sel.addEventListener("change", () => sel.form && sel.form.requestSubmit());
  }
  // A destructive button stays disabled until the confirmation field holds the exact expected text.
  for (const input of document.querySelectorAll("input[data-must-equal]")) {
    const button = input.form && input.form.querySelector("button[type=submit]");
    if (!button) continue;
    const sync = () => { button.disabled = input.value !== input.dataset.mustEqual; };
    input.addEventListener("input", sync);
    sync();
  }
});
