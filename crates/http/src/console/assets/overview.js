// Overview: the last hour (1-minute buckets) and the last day (hourly), success ratio,
// latency percentiles, dead letters, and the slowest and most failing destinations.
import { call, query } from "./api.js";
import { h, table, fmtNum, fmtMs, fmtPct, message } from "./dom.js";
import { lineChart, barChart } from "./charts.js";

function label(iso, window) {
  const d = new Date(iso);
  return window === "1h"
    ? d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" })
    : d.toLocaleString(undefined, { weekday: "short", hour: "2-digit", minute: "2-digit" });
}

function trafficChart(stats, id, title) {
  const b = stats.buckets;
  const sum = (k) => b.reduce((a, x) => a + x[k], 0);
  return lineChart({
    id,
    title,
    labels: b.map((x) => label(x.start, stats.window)),
    series: [
      { key: "accepted", label: "Accepted callbacks", values: b.map((x) => x.accepted) },
      { key: "delivered", label: "Delivered attempts", values: b.map((x) => x.delivered) },
      { key: "failed", label: "Failed attempts", values: b.map((x) => x.failed) },
    ],
    summary: `${fmtNum(sum("accepted"))} accepted, ${fmtNum(sum("delivered"))} delivered and ${fmtNum(sum("failed"))} failed attempts in ${b.length} buckets of ${stats.bucket_seconds / 60} minutes.`,
  });
}

function stat(label, value, id) {
  return h("div", { class: "stat" }, h("dt", {}, label), h("dd", { id }, value));
}

function hostLink(host) {
  return h("a", { href: `#/callbacks${query({ host })}` }, host);
}

export async function overview(main, ctx) {
  const tenant = ctx.params.get("tenant") || "";
  main.append(h("h1", {}, "Overview"));
  let hour;
  try {
    hour = await call(`/v1/stats${query({ window: "1h", tenant })}`);
  } catch (e) {
    if (e.problem?.type !== "urn:fluxcb:problem:unsupported") throw e;
    main.append(message("This backend does not serve statistics yet (DynamoDB): see the callbacks and dead letters pages.", ""));
    return;
  }
  if (!ctx.isCurrent()) return;
  const t = hour.totals;
  const l = hour.latency_ms;
  main.append(
    h("h2", {}, "Last hour"),
    h("dl", { class: "stats", id: "stats-hour" },
      stat("Accepted", fmtNum(t.accepted), "stat-accepted"),
      stat("Delivered attempts", fmtNum(t.delivered), "stat-delivered"),
      stat("Failed attempts", fmtNum(t.failed), "stat-failed"),
      stat("Success ratio", fmtPct(hour.success_ratio), "stat-ratio"),
      stat("Latency p50", fmtMs(l?.p50_ms), "stat-p50"),
      stat("Latency p90", fmtMs(l?.p90_ms), "stat-p90"),
      stat("Latency p99", fmtMs(l?.p99_ms), "stat-p99"),
      h("div", { class: "stat" }, h("dt", {}, "Dead letters now"),
        h("dd", { id: "stat-dead" }, h("a", { href: "#/dead-letters" }, fmtNum(hour.dead_letters))))),
  );
  const charts = h("div", { class: "charts" }, trafficChart(hour, "chart-hour", "Last hour, per minute"));
  main.append(charts);

  const day = await call(`/v1/stats${query({ window: "1d", tenant })}`);
  if (!ctx.isCurrent()) return;
  charts.append(trafficChart(day, "chart-day", "Last day, per hour"));
  main.append(
    h("p", { class: "muted" },
      `Last day: ${fmtNum(day.totals.accepted)} accepted, ${fmtPct(day.success_ratio)} of ${fmtNum(day.totals.attempts)} attempts delivered, latency p50 ${fmtMs(day.latency_ms?.p50_ms)} / p90 ${fmtMs(day.latency_ms?.p90_ms)} / p99 ${fmtMs(day.latency_ms?.p99_ms)}.`));

  main.append(h("h2", {}, "Slowest destinations (last day)"));
  if (day.slowest_destinations.length) {
    main.append(barChart({
      id: "chart-slowest",
      title: "Average attempt duration by host",
      rows: day.slowest_destinations.map((d) => ({ label: d.host, value: d.avg_ms, text: fmtMs(d.avg_ms) })),
      summary: day.slowest_destinations.map((d) => `${d.host}: ${fmtMs(d.avg_ms)}`).join("; "),
    }));
  }
  main.append(table("Slowest destinations",
    ["Host", { label: "Attempts", num: true }, { label: "Average", num: true }, { label: "Slowest", num: true }, { label: "Success", num: true }],
    day.slowest_destinations.map((d) => [hostLink(d.host), fmtNum(d.attempts), fmtMs(d.avg_ms), fmtMs(d.max_ms), fmtPct(d.success_ratio)]),
    { empty: "No attempts in the last day.", id: "slowest" }));

  main.append(h("h2", {}, "Most failing destinations (last day)"));
  main.append(table("Most failing destinations",
    ["Host", { label: "Failed attempts", num: true }, { label: "Attempts", num: true }, { label: "Success", num: true }],
    day.most_failing_destinations.map((d) => [hostLink(d.host), fmtNum(d.failed), fmtNum(d.attempts), fmtPct(d.success_ratio)]),
    { empty: "No failed attempts in the last day.", id: "failing" }));
}
