// Migration (admin keys): the migration switch's mode and cutover percentage, and a form to
// change them (PUT /v1/admin/migration; every node applies it within a few seconds).
import { call } from "./api.js";
import { h, field, fmtTime, message, announce } from "./dom.js";

export async function migration(main, ctx) {
  main.append(h("h1", {}, "Migration"));
  const state = await call("/v1/admin/migration");
  if (!ctx.isCurrent()) return;
  const current = h("dl", { class: "props card", id: "migration-current" },
    h("dt", {}, "Mode"), h("dd", { id: "migration-mode" }, state.mode),
    h("dt", {}, "Cutover"), h("dd", { id: "migration-percent" }, `${state.cutover_percent} %`),
    h("dt", {}, "Changed"), h("dd", {}, fmtTime(state.updated_at)));
  const mode = h("select", { id: "m-mode", name: "mode" },
    ["off", "shadow", "split"].map((m) => h("option", { value: m, selected: state.mode === m }, m)));
  const percent = h("input", {
    id: "m-percent", name: "cutover_percent", type: "number", min: 0, max: 100, step: 1,
    value: state.cutover_percent, required: true, inputmode: "numeric",
  });
  const feedback = h("div", { id: "migration-feedback" });
  const form = h("form", { class: "card filters", id: "migration-form", "aria-label": "Change the migration switch" },
    field("Mode", mode, "off: fluxcb alone; shadow: legacy sends, fluxcb records; split: new callbacks divided by the cutover."),
    field("Cutover percent", percent, "0–100: the share of new legacy-API callbacks fluxcb takes in split mode."),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Save")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const saved = await call("/v1/admin/migration", {
        method: "PUT",
        body: { mode: mode.value, cutover_percent: Number(percent.value) },
      });
      document.getElementById("migration-mode").textContent = saved.mode;
      document.getElementById("migration-percent").textContent = `${saved.cutover_percent} %`;
      feedback.replaceChildren(message(`Saved: ${saved.mode}, ${saved.cutover_percent} %. Every node applies it within ${saved.refresh_seconds} s.`, "ok"));
      announce("Migration switch saved");
    } catch (err) {
      feedback.replaceChildren(message(`Not saved: ${err.message}`, "error"));
    }
  });
  main.append(current, form, feedback,
    h("h2", {}, "Comparison report"),
    h("p", {}, "The latest comparison of the legacy table with fluxcb is not kept by the server: run ",
      h("code", {}, "fluxcb migrate compare --legacy-db URL"), " (see docs/migration.md) before moving the cutover."));
}
