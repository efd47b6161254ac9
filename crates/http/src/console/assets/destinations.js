// Destinations: health per host from the last day's attempts, with the delivery engine's live
// view (circuit breaker, deliveries in flight) where this process runs one.
import { call, query } from "./api.js";
import { h, table, badge, fmtNum, fmtMs, fmtPct, message } from "./dom.js";

function hostOf(destination) {
  const rest = destination.includes("://") ? destination.split("://")[1] : destination;
  const i = rest.lastIndexOf(":");
  return i > 0 && /^\d+$/.test(rest.slice(i + 1)) ? rest.slice(0, i) : rest;
}

export async function destinations(main, ctx) {
  main.append(h("h1", {}, "Destinations"));
  const [day, live] = await Promise.all([
    // Without statistics (DynamoDB), the live view alone.
    call("/v1/stats?window=1d").catch((e) => {
      if (e.problem?.type !== "urn:fluxcb:problem:unsupported") throw e;
      return { destinations: [] };
    }),
    call("/v1/destinations"),
  ]);
  if (!ctx.isCurrent()) return;
  const byHost = new Map();
  for (const d of live.destinations) {
    const host = hostOf(d.destination);
    const seen = byHost.get(host);
    // One host may be reached on several ports or schemes: report the worst.
    byHost.set(host, seen ? {
      in_flight: seen.in_flight + d.in_flight,
      circuit_open: seen.circuit_open || d.circuit_open,
      consecutive_failures: Math.max(seen.consecutive_failures, d.consecutive_failures),
    } : d);
  }
  const hosts = new Set([...day.destinations.map((d) => d.host), ...byHost.keys()]);
  const stats = new Map(day.destinations.map((d) => [d.host, d]));
  if (!live.available) {
    main.append(message("The live view (circuit breakers, deliveries in flight) is not available from this process: the delivery engine runs elsewhere (AWS Lambda).", ""));
  }
  main.append(
    h("p", { class: "muted" }, "Success ratio and latency over the last day's attempts. Circuit and in-flight figures are this process's live view."),
    table("Destination health",
      ["Host", { label: "Attempts (1 day)", num: true }, { label: "Success", num: true }, { label: "Average", num: true }, { label: "Slowest", num: true }, "Circuit", { label: "In flight", num: true }, { label: "Failures in a row", num: true }, "Pause"],
      [...hosts].sort().map((host) => {
        const s = stats.get(host);
        const l = byHost.get(host);
        const circuit = !live.available ? badge("unknown") : l?.circuit_open ? badge("open") : badge("closed");
        return [
          h("a", { href: `#/callbacks${query({ host })}` }, host),
          fmtNum(s?.attempts ?? 0), fmtPct(s?.success_ratio), fmtMs(s?.avg_ms), fmtMs(s?.max_ms),
          circuit, live.available ? fmtNum(l?.in_flight ?? 0) : "—",
          live.available ? fmtNum(l?.consecutive_failures ?? 0) : "—",
          h("span", { class: "muted" }, "not available"),
        ];
      }),
      { empty: "No destination was attempted in the last day.", id: "destinations" }),
    h("p", { class: "hint" }, "Pausing and resuming a destination is not implemented yet."));
}
