// Building the page. Every piece of text goes in through textContent (or an attribute set with
// setAttribute), never parsed as markup: callback URLs, headers, bodies and receiver responses
// are chosen by whoever sends or answers them, and must show as the text they are.

/** An element: `h("a", { href: "#/x", class: "c" }, "text", child, ...)`. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** The same in the SVG namespace. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (/^on/i.test(name)) throw new Error("event handlers are attached with addEventListener");
    if (name === "href" && !safeHref(String(value))) continue;
    el.setAttribute(name, value === true ? "" : String(value));
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Only links within the console: a callback's URL is shown as text, never followed. */
function safeHref(href) {
  return href.startsWith("#/") || href.startsWith("/console") || href === "#main";
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

/** Tells screen readers what just happened. */
export function announce(text) {
  const live = document.getElementById("live");
  if (!live) return;
  live.textContent = "";
  setTimeout(() => {
    live.textContent = text;
  }, 30);
}

export function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toLocaleString(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

export function fmtNum(n) {
  return n === undefined || n === null ? "—" : Number(n).toLocaleString();
}

export function fmtMs(ms) {
  if (ms === undefined || ms === null) return "—";
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}

export function fmtPct(ratio) {
  if (ratio === undefined || ratio === null) return "—";
  return `${(ratio * 100).toFixed(ratio >= 0.9995 || ratio === 0 ? 0 : 1)} %`;
}

export function badge(text, kind) {
  return h("span", { class: `badge ${kind || text}` }, text);
}

/** A table in a horizontally scrolling wrapper, with a caption for screen readers. */
export function table(caption, headers, rows, opts = {}) {
  const head = h("tr", {}, headers.map((c) =>
    h("th", { scope: "col", class: c.num ? "num" : null }, c.label ?? c)));
  const body = rows.length
    ? rows.map((cells) => h("tr", {}, cells.map((cell, i) =>
        h("td", { class: headers[i]?.num ? "num" : headers[i]?.cls || null }, cell))))
    : [h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, opts.empty || "Nothing here."))];
  // Focusable and named: on a narrow screen the frame scrolls, and keyboards must reach it.
  return h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": `${caption} (table)` },
    h("table", { id: opts.id },
      h("caption", { class: "visually-hidden" }, caption),
      h("thead", {}, head),
      h("tbody", {}, body)));
}

export function field(label, input, hint) {
  const id = input.id;
  const hintEl = hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null;
  if (hintEl) input.setAttribute("aria-describedby", `${id}-hint`);
  return h("div", { class: "field" }, h("label", { for: id }, label), input, hintEl);
}

export function message(text, kind) {
  return h("p", { class: `message ${kind || ""}`, role: kind === "error" ? "alert" : "status" }, text);
}

/** Header names whose values are credentials: shown masked whatever the server sent. */
export function isSecretHeader(name) {
  const n = name.toLowerCase();
  return n === "authorization" || n === "proxy-authorization" || n === "cookie" ||
    n.endsWith("-signature") || n.includes("signature") || n.includes("token") ||
    n.includes("secret") || n.includes("password") || n.includes("api-key") || n.includes("apikey");
}
