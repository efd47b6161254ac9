// One callback: the request as sent (secrets masked), the attempt timeline, the audit trail,
// and the actions its state allows (cancel, retry now).
import { call } from "./api.js";
import { h, table, badge, fmtTime, fmtMs, message, announce, isSecretHeader } from "./dom.js";

const SIGNING = {
  standard_webhooks: ["webhook-id", "webhook-timestamp", "webhook-signature"],
  legacy: ["X-Flux-Callback-Id", "X-Flux-Timestamp", "X-Flux-Signature"],
};

function props(entries) {
  return h("dl", { class: "props" },
    entries.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "—")]));
}

function headerRows(headers) {
  return Object.entries(headers || {}).map(([name, value]) => [
    h("code", {}, name),
    h("code", {}, isSecretHeader(name) ? "•••• (masked)" : value),
  ]);
}

function bodyText(cb) {
  if (cb.payload !== undefined) return JSON.stringify(cb.payload, null, 2);
  if (cb.body !== undefined) return cb.body;
  return "";
}

function attemptItem(a) {
  const ok = !a.error;
  const outcome = ok
    ? `HTTP ${a.status_code}`
    : `${a.error}${a.status_code ? ` (HTTP ${a.status_code})` : ""}`;
  return h("li", { class: ok ? "ok" : "bad" },
    h("h3", {}, `Attempt ${a.number}: `, badge(ok ? "delivered" : "failed", ok ? "delivered" : "failed"), " ", outcome),
    props([
      ["Started", fmtTime(a.started_at)],
      ["Latency", fmtMs(a.duration_ms)],
      ["Error", a.error_detail || (ok ? "none" : a.error)],
    ]),
    Object.keys(a.response_headers || {}).length
      ? h("details", {}, h("summary", {}, "Response headers"),
          table(`Response headers of attempt ${a.number}`, ["Header", "Value"], headerRows(a.response_headers)))
      : null,
    a.response_body
      ? h("details", { open: !ok }, h("summary", {}, "Response excerpt"), h("pre", { class: "response-body" }, a.response_body))
      : h("p", { class: "muted" }, "No response body."));
}

export async function detail(main, ctx, id) {
  const [cb, events] = await Promise.all([
    call(`/v1/callbacks/${encodeURIComponent(id)}`),
    call(`/v1/callbacks/${encodeURIComponent(id)}/events`),
  ]);
  if (!ctx.isCurrent()) return;
  main.append(
    h("p", {}, h("a", { href: "#/callbacks" }, "← All callbacks")),
    h("h1", {}, "Callback ", h("code", { id: "callback-id" }, cb.id), " ", badge(cb.status)),
  );
  const feedback = h("div", { id: "action-feedback" });
  const actions = h("div", { class: "row card", id: "actions" });
  const act = async (verb, label) => {
    for (const b of actions.querySelectorAll("button")) b.disabled = true;
    try {
      const done = await call(`/v1/callbacks/${encodeURIComponent(cb.id)}/${verb}`, { method: "POST" });
      announce(`${label}: the callback is ${done.status} now`);
      ctx.go(`#/callbacks/${encodeURIComponent(cb.id)}?t=${Date.now()}`);
    } catch (e) {
      feedback.replaceChildren(message(`${label} failed: ${e.message}`, "error"));
      for (const b of actions.querySelectorAll("button")) b.disabled = false;
    }
  };
  const cancellable = cb.status === "scheduled" || cb.status === "pending";
  const retryable = cb.status === "failed";
  const cancel = h("button", { type: "button", class: "danger", id: "cancel", disabled: !cancellable }, "Cancel");
  const retry = h("button", { type: "button", id: "retry", disabled: !retryable }, "Retry now");
  cancel.addEventListener("click", () => act("cancel", "Cancel"));
  retry.addEventListener("click", () => act("retry", "Retry"));
  const refresh = h("button", { type: "button", class: "secondary", id: "refresh" }, "Refresh");
  refresh.addEventListener("click", () => ctx.go(`#/callbacks/${encodeURIComponent(cb.id)}?t=${Date.now()}`));
  actions.append(retry, cancel, refresh,
    h("span", { class: "muted" }, retryable ? "Retry sends it again with a fresh set of attempts." :
      cancellable ? "Cancel stops further attempts." : "No action applies in this state."));
  main.append(actions, feedback);

  main.append(h("section", { "aria-labelledby": "h-summary" },
    h("h2", { id: "h-summary" }, "Summary"),
    h("div", { class: "card" }, props([
      ["Status", cb.status],
      ["Tenant", cb.tenant],
      ["Attempts", `${cb.attempts_made} of ${cb.max_attempts}`],
      ["Next attempt", fmtTime(cb.next_attempt_at)],
      ["Created", `${fmtTime(cb.created_at)} by ${cb.created_by}`],
      ["Updated", fmtTime(cb.updated_at)],
      ["Last error", cb.last_error || "none"],
      ["External id", cb.external_id || "—"],
      ["Legacy id", cb.legacy_id ?? "—"],
      ["Metadata", Object.entries(cb.metadata || {}).map(([k, v]) => `${k}=${v}`).join(", ") || "—"],
    ]))));

  const signing = cb.wire_format === "both"
    ? [...SIGNING.standard_webhooks, ...SIGNING.legacy]
    : SIGNING[cb.wire_format] || SIGNING.standard_webhooks;
  main.append(h("section", { "aria-labelledby": "h-request" },
    h("h2", { id: "h-request" }, "Request as sent"),
    h("div", { class: "card" },
      props([
        ["Method", cb.method],
        ["URL", h("code", { id: "callback-url" }, cb.url)],
        ["Content type", cb.content_type || (cb.payload !== undefined ? "application/json" : "—")],
        ["Timeout", fmtMs(cb.timeout_ms)],
        ["Wire format", cb.wire_format],
      ]),
      h("h3", {}, "Headers"),
      table("Request headers", ["Header", "Value"], headerRows(cb.headers), { empty: "No headers of its own.", id: "request-headers" }),
      h("p", { class: "hint" }, `Each attempt also carries ${signing.join(", ")} (signed when sent; not stored).`),
      h("h3", {}, "Body"),
      h("pre", { id: "callback-body" }, bodyText(cb) || "(empty)"))));

  const attempts = cb.attempts || [];
  main.append(h("section", { "aria-labelledby": "h-attempts" },
    h("h2", { id: "h-attempts" }, `Attempts (${attempts.length})`),
    attempts.length
      ? h("ol", { class: "timeline", id: "attempts" }, attempts.map(attemptItem))
      : h("p", { class: "muted" }, "No attempt yet.")));

  main.append(h("section", { "aria-labelledby": "h-events" },
    h("h2", { id: "h-events" }, "Audit trail"),
    table("Audit trail", ["#", "When", "What", "By", "From", "To"],
      events.data.map((e) => [String(e.seq), fmtTime(e.at), e.kind, e.actor || "—", e.from_status || "—", e.to_status || "—"]),
      { id: "events" })));
}
