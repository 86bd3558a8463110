import { html, type Html } from "./html.js";
import type { DayCount } from "../ca-service/index.js";

/** Colours per series key; the stylesheet cannot reach SVG presentation attributes under our CSP-friendly markup. */
const COLOURS: Record<string, string> = {
  affirming: "#2e7d32", warning: "#f9a825", contraindicated: "#c62828",
  "device-identity": "#1565c0", "edge-ca": "#6a1b9a", "edge-hub-server": "#00838f", "leaf-device": "#8d6e63", "ca-server": "#9e9e9e",
};
const FALLBACK = ["#455a64", "#7cb342", "#d81b60", "#5e35b1"];

/**
 * A stacked bar chart per day as inline SVG, rendered on the server (no script, nothing fetched). Every value in it
 * goes through `html`, so series names from the database are escaped like everything else.
 */
export function stackedBars(title: string, days: DayCount[], order: string[]): Html {
  const keys = [...new Set([...order, ...days.flatMap((d) => Object.keys(d.counts))])].filter((k) => days.some((d) => (d.counts[k] ?? 0) > 0) || order.includes(k));
  const colour = (k: string, i: number): string => COLOURS[k] ?? FALLBACK[i % FALLBACK.length] ?? "#455a64";
  const W = 560, H = 150, left = 34, bottom = 22, top = 8;
  const max = Math.max(1, ...days.map((d) => Object.values(d.counts).reduce((a, b) => a + b, 0)));
  const bw = (W - left - 4) / Math.max(1, days.length);
  const y = (v: number): number => top + (H - top - bottom) * (1 - v / max);
  const bars = days.map((d, i) => {
    let acc = 0;
    const x = left + i * bw + 2;
    const parts = keys.map((k, ki) => {
      const v = d.counts[k] ?? 0;
      if (v === 0) return html``;
      const y1 = y(acc + v), y0 = y(acc);
      acc += v;
      return html`<rect x="${x.toFixed(1)}" y="${y1.toFixed(1)}" width="${(bw - 4).toFixed(1)}" height="${Math.max(0.5, y0 - y1).toFixed(1)}" fill="${colour(k, ki)}"><title>${d.day} ${k}: ${v}</title></rect>`;
    });
    const label = i % Math.ceil(days.length / 7) === 0 ? html`<text x="${(x + (bw - 4) / 2).toFixed(1)}" y="${H - 6}" text-anchor="middle" font-size="10" fill="#555">${d.day.slice(5)}</text>` : html``;
    return html`${parts}${label}`;
  });
  const total = days.reduce((a, d) => a + Object.values(d.counts).reduce((x, y2) => x + y2, 0), 0);
  return html`<figure class="chart">
<figcaption>${title} <small>(${total} in ${days.length} days)</small></figcaption>
<svg viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${title}">
<line x1="${left}" y1="${y(0)}" x2="${W}" y2="${y(0)}" stroke="#999" stroke-width="1"/>
<text x="${left - 4}" y="${y(max) + 4}" text-anchor="end" font-size="10" fill="#555">${max}</text>
<text x="${left - 4}" y="${y(0)}" text-anchor="end" font-size="10" fill="#555">0</text>
${bars}
</svg>
<ul class="legend">${keys.map((k, i) => html`<li><svg width="10" height="10" aria-hidden="true"><rect width="10" height="10" fill="${colour(k, i)}"/></svg> ${k}</li>`)}</ul>
</figure>`;
}
