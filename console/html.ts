/**
 * Server-side HTML with every interpolated value escaped. `html` returns `Html`; only `Html` values pass through
 * unescaped, so a value from the database (a device label, an audit detail) can never become markup. Arrays of Html
 * are joined. There is no "raw" escape hatch on purpose.
 */
export class Html {
  constructor(readonly text: string) {}
  toString(): string { return this.text; }
}

const ESC: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;", "`": "&#96;" };

function escapeHtml(v: unknown): string {
  return String(v).replace(/[&<>"'`]/g, (c) => ESC[c] ?? c);
}

function render(v: unknown): string {
  if (v instanceof Html) return v.text;
  if (v === null || v === undefined || v === false) return "";
  if (Array.isArray(v)) return v.map(render).join("");
  return escapeHtml(v);
}

export function html(strings: TemplateStringsArray, ...values: unknown[]): Html {
  let out = strings[0] ?? "";
  for (let i = 0; i < values.length; i++) out += render(values[i]) + (strings[i + 1] ?? "");
  return new Html(out);
}

/** A query string from parameters (undefined/empty dropped), for links that keep the current filters. */
export function query(params: Record<string, string | number | undefined | null>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : "";
}
