// Callbacks: a filterable list (status, destination host, creation time, metadata tag, id,
// legacy external_id, tenant for admins) over the cursor-paginated /v1/callbacks.
import { call, query } from "./api.js";
import { h, table, field, badge, fmtTime, message } from "./dom.js";

const STATUSES = ["", "scheduled", "pending", "delivering", "delivered", "failed", "cancelled"];
const FILTERS = ["status", "host", "created_after", "created_before", "metadata", "id", "external_id", "tenant"];

/** Cursors of the pages before this one, for "Newer". */
let trail = [];
let trailKey = "";

function localValue(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function input(id, value, attrs = {}) {
  return h("input", { id, name: id, value: value || "", ...attrs });
}

export function filterForm(params, me, onSubmit, { statuses = true, idFields = true } = {}) {
  const status = h("select", { id: "f-status", name: "status" },
    STATUSES.map((s) => h("option", { value: s, selected: params.get("status") === s }, s || "any")));
  const fields = [
    statuses ? field("Status", status) : null,
    field("Destination host", input("f-host", params.get("host"), { placeholder: "example.com", autocomplete: "off" })),
    field("Created after", input("f-created_after", localValue(params.get("created_after")), { type: "datetime-local" })),
    field("Created before", input("f-created_before", localValue(params.get("created_before")), { type: "datetime-local" })),
    field("Metadata tag", input("f-metadata", params.get("metadata"), { placeholder: "key=value", autocomplete: "off" })),
    idFields ? field("Callback id", input("f-id", params.get("id"), { placeholder: "cb_…", autocomplete: "off", spellcheck: "false" })) : null,
    idFields ? field("External id (legacy)", input("f-external_id", params.get("external_id"), { autocomplete: "off" })) : null,
    me.role === "admin" ? field("Tenant", input("f-tenant", params.get("tenant"), { autocomplete: "off" })) : null,
  ];
  const form = h("form", { class: "card filters", id: "filters", role: "search", "aria-label": "Filter callbacks" },
    fields,
    h("div", { class: "actions" },
      h("button", { type: "submit" }, "Apply"),
      h("button", { type: "reset", class: "secondary" }, "Clear")));
  const read = () => {
    const out = {};
    for (const name of FILTERS) {
      const el = form.querySelector(`#f-${name}`);
      if (!el || !el.value.trim()) continue;
      out[name] = name.startsWith("created_") ? new Date(el.value).toISOString() : el.value.trim();
    }
    return out;
  };
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    onSubmit(read());
  });
  form.addEventListener("reset", (e) => {
    e.preventDefault();
    onSubmit({});
  });
  return form;
}

export function callbackRow(cb) {
  return [
    h("a", { href: `#/callbacks/${encodeURIComponent(cb.id)}`, class: "mono" }, cb.id),
    badge(cb.status),
    cb.url,
    `${cb.attempts_made} / ${cb.max_attempts}`,
    fmtTime(cb.created_at),
    cb.last_error || "",
  ];
}

export const CALLBACK_HEADERS = [
  "Id", "Status", { label: "URL", cls: "url" }, { label: "Attempts", num: true }, "Created", "Last error",
];

export async function callbacks(main, ctx) {
  const params = ctx.params;
  const filters = {};
  for (const name of FILTERS) if (params.get(name)) filters[name] = params.get(name);
  const key = JSON.stringify(filters);
  if (key !== trailKey) {
    trail = [];
    trailKey = key;
  }
  const cursor = params.get("cursor") || "";
  main.append(
    h("h1", {}, "Callbacks"),
    filterForm(params, ctx.me, (f) => {
      trail = [];
      ctx.go(`#/callbacks${query(f)}`);
    }),
  );
  const status = h("p", { class: "muted", id: "result-count", role: "status" }, "Loading…");
  main.append(status);
  let page;
  try {
    page = await call(`/v1/callbacks${query({ ...filters, cursor, limit: 50 })}`);
  } catch (e) {
    status.remove();
    main.append(message(e.message, "error"));
    return;
  }
  if (!ctx.isCurrent()) return;
  status.textContent = page.data.length
    ? `${page.data.length} callback${page.data.length === 1 ? "" : "s"} on this page, newest first.`
    : "No callbacks match.";
  main.append(table("Callbacks, newest first", CALLBACK_HEADERS, page.data.map(callbackRow),
    { empty: "No callbacks match these filters.", id: "callbacks-table" }));
  const pager = h("div", { class: "pager" });
  if (cursor) {
    const newer = h("button", { type: "button", class: "secondary" }, "Newer");
    newer.addEventListener("click", () => {
      const previous = trail.pop() || "";
      ctx.go(`#/callbacks${query({ ...filters, cursor: previous })}`);
    });
    pager.append(newer);
  }
  if (page.next_cursor) {
    const older = h("button", { type: "button", id: "older" }, "Older");
    older.addEventListener("click", () => {
      trail.push(cursor);
      ctx.go(`#/callbacks${query({ ...filters, cursor: page.next_cursor })}`);
    });
    pager.append(older);
  }
  main.append(pager);
}
