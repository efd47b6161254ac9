// The console's shell: who is logged in, navigation, and one route per page (in the URL's
// fragment, so every view has a link and the back button works).
import { session, logout } from "./api.js";
import { h, clear, message, announce } from "./dom.js";
import { overview } from "./overview.js";
import { callbacks } from "./callbacks.js";
import { detail } from "./detail.js";
import { deadLetters } from "./deadletters.js";
import { destinations } from "./destinations.js";
import { migration } from "./migration.js";

const pages = {
  overview: { title: "Overview", render: overview },
  callbacks: { title: "Callbacks", render: callbacks },
  "dead-letters": { title: "Dead letters", render: deadLetters },
  destinations: { title: "Destinations", render: destinations },
  migration: { title: "Migration", render: migration, admin: true },
};

let me = null;
let generation = 0;

function parseRoute() {
  const hash = window.location.hash || "#/overview";
  const [path, qs] = hash.slice(2).split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(qs || "") };
}

async function route() {
  if (window.location.hash && !window.location.hash.startsWith("#/")) return;
  const mine = ++generation;
  const { parts, params } = parseRoute();
  const name = parts[0] || "overview";
  const main = document.getElementById("main");
  let page = pages[name];
  let render = page?.render;
  let title = page?.title;
  if (name === "callbacks" && parts[1]) {
    render = (el, ctx) => detail(el, ctx, parts[1]);
    title = "Callback";
  }
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.page === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  clear(main);
  if (!render || (page?.admin && me.role !== "admin")) {
    document.title = "Not found · fluxcb console";
    main.append(h("h1", {}, "Not found"), message("There is no such page here.", "error"));
    return;
  }
  document.title = `${title} · fluxcb console`;
  const ctx = {
    me,
    params,
    isCurrent: () => mine === generation,
    go: (hash) => { window.location.hash = hash; },
  };
  try {
    await render(main, ctx);
  } catch (e) {
    if (mine !== generation) return;
    main.append(message(`Could not load this page: ${e.message}`, "error"));
  }
  if (mine === generation) {
    main.setAttribute("aria-busy", "false");
    announce(`${title} loaded`);
  }
}

async function start() {
  try {
    me = await session();
  } catch {
    return;
  }
  document.getElementById("who").textContent =
    `${me.name} · ${me.role === "admin" ? "admin, all tenants" : `tenant ${me.tenant}`}`;
  if (me.role === "admin") document.getElementById("nav-migration").hidden = false;
  document.getElementById("logout").addEventListener("click", () => logout());
  document.getElementById("skip").addEventListener("click", (e) => {
    e.preventDefault();
    document.getElementById("main").focus();
  });
  window.addEventListener("hashchange", () => {
    route().then(() => document.getElementById("main").focus({ preventScroll: true }));
  });
  await route();
}

start();
