// Screenshots of the console for the README, taken against a running `fluxcb demo`:
//
//   node screenshot.mjs <base-url> <api-key> <out-dir>
//
// scripts/screenshot-console.sh starts the demo, waits while it sends traffic, and runs this.
// It logs in with the key, waits for the overview's charts and tables to be drawn with data,
// and saves (1280x800, the browser's viewport):
//   console-overview.png   the overview: traffic charts, figures, dead letters, failing hosts
//   console-callback.png   a billing callback delivered on a retry: its attempt timeline
// Chromium is Debian's (/usr/bin/chromium, or CHROMIUM), headless, on a fresh profile.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const [base, key, out] = process.argv.slice(2);
if (!base || !key || !out) {
  console.error("usage: node screenshot.mjs <base-url> <api-key> <out-dir>");
  process.exit(2);
}
fs.mkdirSync(out, { recursive: true });

/** The API with the demo's key, to pick a callback worth showing. */
async function api(pathAndQuery) {
  const r = await fetch(`${base}${pathAndQuery}`, { headers: { authorization: `Bearer ${key}` } });
  if (!r.ok) throw new Error(`GET ${pathAndQuery}: ${r.status}`);
  return r.json();
}

const profile = fs.mkdtempSync(path.join(os.tmpdir(), "fluxcb-shot-profile-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  timeout: 60_000,
  viewport: { width: 1280, height: 800 },
  deviceScaleFactor: 1,
  // Root in a container: the sandbox needs user namespaces it may not get. The rest keeps a
  // fresh profile from reaching out to Google's services.
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
let failed = false;
try {
  context.setDefaultTimeout(20_000);
  const page = context.pages()[0] || (await context.newPage());

  await page.goto(`${base}/console/`);
  await page.waitForURL(/\/console\/login/);
  await page.fill("#key", key);
  await Promise.all([page.waitForURL(/\/console\/(#.*)?$/), page.click("#login-submit")]);
  await page.waitForSelector("#who:not(:empty)");

  await page.goto(`${base}/console/#/overview`);
  await page.waitForSelector("#chart-hour polyline");
  await page.waitForSelector("#chart-day polyline");
  await page.waitForSelector("#failing tbody tr");
  const dead = Number((await page.textContent("#stat-dead")).replace(/\D/g, ""));
  if (!(dead > 0)) throw new Error(`no dead letters on the overview (${dead})`);
  await page.screenshot({ path: path.join(out, "console-overview.png") });
  console.log(`saved ${path.join(out, "console-overview.png")} (${dead} dead letters shown)`);

  // A billing callback that took the most attempts to deliver (the flaky receiver's story).
  const list = await api("/v1/callbacks?status=delivered&metadata=receiver%3Dbilling&limit=200");
  const retried = list.data
    .filter((c) => c.attempts_made > 1)
    .sort((a, b) => b.attempts_made - a.attempts_made)[0];
  if (!retried) throw new Error("no billing callback delivered on a retry yet");
  await page.goto(`${base}/console/#/callbacks/${retried.id}`);
  await page.waitForSelector("#attempts > li");
  // The attempt timeline at the top of the picture, the summary above it scrolled away.
  await page.locator("#h-attempts").evaluate((h) => h.scrollIntoView({ block: "start" }));
  await page.screenshot({ path: path.join(out, "console-callback.png") });
  console.log(`saved ${path.join(out, "console-callback.png")} (${retried.id}, ${retried.attempts_made} attempts)`);
} catch (e) {
  failed = true;
  console.error(`screenshot failed: ${e && e.stack ? e.stack : e}`);
} finally {
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
