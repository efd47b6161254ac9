// Destinations: health per host from the last day's attempts, with the delivery engine's live
// view (circuit breaker, deliveries in flight) where this process runs one; then the tenant's
// registered destinations with their settings, live state, and pause and resume.
import { call, query } from "./api.js";
import { h, table, badge, fmtNum, fmtMs, fmtPct, message } from "./dom.js";

function hostOf(destination) {
  // A registration's live state is keyed "<tenant> <origin or prefix>".
  const url = destination.includes(" ") ? destination.split(" ")[1] : destination;
  const rest = (url.includes("://") ? url.split("://")[1] : url).split("/")[0];
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
    call("/v1/destinations/health"),
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
      ["Host", { label: "Attempts (1 day)", num: true }, { label: "Success", num: true }, { label: "Average", num: true }, { label: "Slowest", num: true }, "Circuit", { label: "In flight", num: true }, { label: "Failures in a row", num: true }],
      [...hosts].sort().map((host) => {
        const s = stats.get(host);
        const l = byHost.get(host);
        const circuit = !live.available ? badge("unknown") : l?.circuit_open ? badge("open") : badge("closed");
        return [
          h("a", { href: `#/callbacks${query({ host })}` }, host),
          fmtNum(s?.attempts ?? 0), fmtPct(s?.success_ratio), fmtMs(s?.avg_ms), fmtMs(s?.max_ms),
          circuit, live.available ? fmtNum(l?.in_flight ?? 0) : "—",
          live.available ? fmtNum(l?.consecutive_failures ?? 0) : "—",
        ];
      }),
      { empty: "No destination was attempted in the last day.", id: "destinations" }));
  main.append(h("h2", {}, "Registered destinations"));
  if (!live.pause_supported) {
    main.append(message("Registering, pausing and resuming destinations is not available on this backend yet.", ""));
    return;
  }
  const registered = await call("/v1/destinations");
  if (!ctx.isCurrent()) return;
  const feedback = h("p", { role: "status", id: "destination-feedback" });
  const toggle = async (d, button) => {
    button.disabled = true;
    const verb = d.paused ? "resume" : "pause";
    try {
      await call(`/v1/destinations/${encodeURIComponent(d.id)}/${verb}`, { method: "POST" });
      ctx.go(`#/destinations?t=${Date.now()}`);
    } catch (e) {
      feedback.textContent = `Could not ${verb}: ${e.message}`;
      button.disabled = false;
    }
  };
  main.append(
    h("p", { class: "muted" }, "Callbacks to a paused destination wait, with no attempt counted, until it is resumed."),
    table("Registered destinations",
      ["Match", "Description", "Settings", "State", "Circuit", { label: "In flight", num: true }, "Action"],
      registered.data.map((d) => {
        const m = d.match.origin ?? d.match.url_prefix ?? "every URL (tenant defaults)";
        const set = Object.entries(d.settings).map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(", ") : v}`).join("; ");
        const button = h("button", { type: "button", class: d.paused ? "" : "secondary", "data-destination": d.id },
          d.paused ? "Resume" : "Pause");
        button.setAttribute("aria-label", `${d.paused ? "Resume" : "Pause"} ${m}`);
        button.addEventListener("click", () => toggle(d, button));
        return [
          m, d.description ?? "", set || "defaults",
          d.paused ? badge("paused", "warn") : badge("active"),
          !live.available ? badge("unknown") : d.health?.circuit_open ? badge("open") : badge("closed"),
          live.available ? fmtNum(d.health?.in_flight ?? 0) : "—",
          button,
        ];
      }),
      { empty: "No destination is registered: every callback goes by the installation's settings.", id: "registered" }),
    feedback);
}
