// Dead letters: grouped by host and error, the newest of them listed, and a bulk redrive of a
// filtered set after a confirmation that says how many will move (a dry run counts them).
import { call, query } from "./api.js";
import { h, table, fmtNum, fmtTime, message, announce } from "./dom.js";
import { filterForm, callbackRow, CALLBACK_HEADERS } from "./callbacks.js";

const REDRIVE_FILTERS = ["host", "created_after", "created_before", "metadata", "tenant"];

function confirmDialog(text) {
  return new Promise((resolve) => {
    const ok = h("button", { type: "button", id: "confirm-redrive" }, "Redrive");
    const no = h("button", { type: "button", class: "secondary", id: "cancel-redrive" }, "Keep them");
    const dialog = h("dialog", { "aria-labelledby": "confirm-title", "aria-describedby": "confirm-text", id: "confirm" },
      h("h2", { id: "confirm-title" }, "Redrive dead letters?"),
      h("p", { id: "confirm-text" }, text),
      h("div", { class: "row" }, ok, no));
    const done = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    ok.addEventListener("click", () => done(true));
    no.addEventListener("click", () => done(false));
    dialog.addEventListener("cancel", () => done(false));
    document.body.append(dialog);
    dialog.showModal();
    no.focus();
  });
}

async function redrive(filters, feedback, ctx) {
  const body = {};
  for (const k of REDRIVE_FILTERS) if (filters[k]) body[k] = filters[k];
  feedback.replaceChildren(message("Counting…"));
  let count;
  try {
    count = (await call("/v1/dead-letters/redrive", { method: "POST", body: { ...body, dry_run: true } })).matched;
  } catch (e) {
    feedback.replaceChildren(message(`Could not count them: ${e.message}`, "error"));
    return;
  }
  feedback.replaceChildren();
  if (!count) {
    feedback.replaceChildren(message("No dead letters match: nothing to redrive.", "ok"));
    return;
  }
  const scope = Object.entries(body).map(([k, v]) => `${k} ${v}`).join(", ");
  const what = `${fmtNum(count)} dead letter${count === 1 ? "" : "s"}${scope ? ` (${scope})` : ""} will move back to pending and be delivered again with a fresh set of attempts.`;
  if (!(await confirmDialog(what))) {
    announce("Redrive cancelled");
    return;
  }
  try {
    const r = await call("/v1/dead-letters/redrive", { method: "POST", body });
    feedback.replaceChildren(message(`Moved ${fmtNum(r.moved)} dead letter${r.moved === 1 ? "" : "s"} back to pending.`, "ok"));
    announce(`Moved ${r.moved} dead letters`);
    setTimeout(() => ctx.isCurrent() && ctx.go(`#/dead-letters${query({ ...filters, t: Date.now() })}`), 1500);
  } catch (e) {
    feedback.replaceChildren(message(`Redrive failed: ${e.message}`, "error"));
  }
}

export async function deadLetters(main, ctx) {
  const filters = {};
  for (const k of REDRIVE_FILTERS) {
    if (ctx.params.get(k)) filters[k] = ctx.params.get(k);
  }
  const feedback = h("div", { id: "redrive-feedback", "aria-live": "polite" });
  const redriveAll = h("button", { type: "button", id: "redrive-filtered" }, "Redrive all matching…");
  redriveAll.addEventListener("click", () => redrive(filters, feedback, ctx));
  main.append(
    h("h1", {}, "Dead letters"),
    h("p", { class: "muted" }, "Callbacks that ran out of attempts, got a 410, or were blocked. A redrive sends them back to pending."),
    // No id fields: a redrive moves what these filters match, and it cannot take an id.
    filterForm(ctx.params, ctx.me, (f) => ctx.go(`#/dead-letters${query(f)}`), { statuses: false, idFields: false }),
    h("div", { class: "row" }, redriveAll),
    feedback,
  );

  const groupsSection = h("section", { "aria-labelledby": "h-groups" }, h("h2", { id: "h-groups" }, "By destination and error"));
  main.append(groupsSection);
  try {
    const groups = await call(`/v1/dead-letters/groups${query(filters)}`);
    if (!ctx.isCurrent()) return;
    groupsSection.append(table("Dead letters by destination and error",
      ["Host", "Error", { label: "Count", num: true }, "Latest", "Actions"],
      groups.data.map((g) => {
        const view = h("a", { href: `#/dead-letters${query({ ...filters, host: g.host })}` }, "View");
        const button = h("button", { type: "button", class: "secondary", "data-host": g.host }, `Redrive ${g.host}…`);
        button.addEventListener("click", () => redrive({ ...filters, host: g.host }, feedback, ctx));
        return [g.host, g.error, fmtNum(g.count), fmtTime(g.latest), h("div", { class: "row" }, view, button)];
      }),
      { empty: "No dead letters.", id: "groups" }));
  } catch (e) {
    groupsSection.append(message(`Grouping is not available: ${e.message}`, "error"));
  }

  const list = await call(`/v1/dead-letters${query({ ...filters, limit: 50 })}`);
  if (!ctx.isCurrent()) return;
  main.append(h("section", { "aria-labelledby": "h-list" },
    h("h2", { id: "h-list" }, "Newest dead letters"),
    table("Newest dead letters", CALLBACK_HEADERS, list.data.map(callbackRow), { empty: "No dead letters match.", id: "dead-letters" }),
    list.next_cursor
      ? h("p", {}, h("a", { href: `#/callbacks${query({ ...filters, status: "failed", cursor: list.next_cursor })}` }, "Older dead letters in the callbacks list"))
      : null));
}
