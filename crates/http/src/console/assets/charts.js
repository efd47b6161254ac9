// Charts as inline SVG, drawn here: no library, nothing loaded from elsewhere. Each chart is a
// figure with a caption, a text summary for screen readers and its numbers in a table.
import { h, s, table, fmtNum } from "./dom.js";

const W = 640;
const H = 220;
const PAD = { left: 48, right: 12, top: 12, bottom: 28 };

function niceMax(v) {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) {
    if (m * p >= v) return m * p;
  }
  return 10 * p;
}

/**
 * A line chart of several series over the same buckets.
 * series: [{ key, label, values: [number] }]; labels: one per bucket (shown at a few ticks).
 */
export function lineChart({ id, title, labels, series, summary }) {
  const n = labels.length;
  const max = niceMax(Math.max(0, ...series.flatMap((x) => x.values)));
  const x = (i) => PAD.left + (n <= 1 ? 0 : (i * (W - PAD.left - PAD.right)) / (n - 1));
  const y = (v) => H - PAD.bottom - (v / max) * (H - PAD.top - PAD.bottom);
  const titleId = `${id}-title`;
  const descId = `${id}-desc`;
  const svg = s("svg", {
    viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": `${titleId} ${descId}`,
    id, "data-points": String(n),
  },
    s("title", { id: titleId }, title),
    s("desc", { id: descId }, summary));
  for (const frac of [0, 0.5, 1]) {
    const v = max * frac;
    svg.append(
      s("line", { class: frac === 0 ? "axis" : "grid", x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v) }),
      s("text", { x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end" }, fmtNum(v)));
  }
  const ticks = n > 1 ? [0, Math.floor((n - 1) / 2), n - 1] : [0];
  for (const i of ticks) {
    svg.append(s("text", { x: x(i), y: H - 8, "text-anchor": i === 0 ? "start" : i === n - 1 ? "end" : "middle" }, labels[i] ?? ""));
  }
  for (const line of series) {
    const points = line.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    svg.append(s("polyline", { class: `series ${line.key}`, points, "data-series": line.key }));
  }
  const legend = h("ul", { class: "legend", "aria-hidden": "true" },
    series.map((line) => h("li", { class: line.key }, h("span", {}, line.label))));
  const data = h("details", { class: "data" },
    h("summary", {}, "Show the numbers"),
    table(title, [{ label: "Time" }, ...series.map((l) => ({ label: l.label, num: true }))],
      labels.map((label, i) => [label, ...series.map((l) => fmtNum(l.values[i]))])));
  return h("figure", { class: "chart" }, h("figcaption", {}, title), svg, legend, data);
}

/** Horizontal bars, one per row: [{ label, value, text }]. */
export function barChart({ id, title, rows, summary }) {
  const rowH = 26;
  const height = Math.max(rowH, rows.length * rowH) + 8;
  const labelW = 210;
  const max = niceMax(Math.max(0, ...rows.map((r) => r.value)));
  const svg = s("svg", {
    viewBox: `0 0 ${W} ${height}`, role: "img", "aria-labelledby": `${id}-title ${id}-desc`, id,
  },
    s("title", { id: `${id}-title` }, title),
    s("desc", { id: `${id}-desc` }, summary));
  rows.forEach((r, i) => {
    const y = 4 + i * rowH;
    const w = ((W - labelW - 90) * r.value) / max;
    svg.append(
      s("text", { x: 0, y: y + 16 }, r.label.length > 32 ? `${r.label.slice(0, 31)}…` : r.label),
      s("rect", { class: "bar", x: labelW, y: y + 4, width: Math.max(1, w).toFixed(1), height: 16, rx: 3 }),
      s("text", { x: labelW + Math.max(1, w) + 6, y: y + 16 }, r.text));
  });
  return h("figure", { class: "chart" }, h("figcaption", {}, title), svg);
}
