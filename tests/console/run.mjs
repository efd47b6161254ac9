// End-to-end test of the fluxcb console in a real headless chromium (Debian's), driven by
// playwright-core, with axe-core checking accessibility on every page.
//
//   node run.mjs <base-url> <admin-key> <tenant-key> <screenshot-dir>
//
// crates/cli/tests/console.rs starts the app and a receiver, makes the traffic this expects and
// runs it; the ids it needs come in the environment:
//   FLUXCB_E2E_FLAKY_ID  a dead letter tagged case=redrive whose receiver now succeeds
//   FLUXCB_E2E_XSS_ID    a callback whose URL, headers and body carry script payloads
//   FLUXCB_E2E_OTHER_ID  another tenant's callback, which the tenant key must not see
// Exits 0 when every check passed; prints each check and, on failure, why.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const require = createRequire(import.meta.url);
const axeSource = fs.readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const [base, adminKey, tenantKey, shots] = process.argv.slice(2);
if (!base || !adminKey || !tenantKey || !shots) {
  console.error("usage: node run.mjs <base-url> <admin-key> <tenant-key> <screenshot-dir>");
  process.exit(2);
}
const flakyId = process.env.FLUXCB_E2E_FLAKY_ID;
const xssId = process.env.FLUXCB_E2E_XSS_ID;
const otherId = process.env.FLUXCB_E2E_OTHER_ID;
fs.mkdirSync(shots, { recursive: true });

const failures = [];
let passed = 0;

async function check(name, fn) {
  const started = Date.now();
  try {
    await fn();
    passed += 1;
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    failures.push(name);
    console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
  }
}

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}

/** axe-core in the page (evaluated over the DevTools protocol, which the page's CSP does not
 * govern); serious or critical violations fail the check. */
async function accessible(page, label) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(async () =>
    // eslint-disable-next-line no-undef
    axe.run(document, { resultTypes: ["violations"] }));
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  for (const v of result.violations) {
    const where = v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", ");
    console.log(`     axe ${label}: ${v.impact} ${v.id}: ${v.help} (${where})`);
  }
  assert(bad.length === 0, `${label}: ${bad.length} serious/critical accessibility violations`);
}

function watch(page, label) {
  const problems = [];
  page.on("console", (m) => {
    const text = m.text();
    // Expected: the wrong-key login answers 401, and the tenant's look at another tenant's
    // callback answers 404; the browser logs both as failed resources.
    if (m.type() === "error" && !/status of (401|404)/.test(text)) problems.push(`${label}: console error: ${text}`);
    if (/Content Security Policy|Refused to/i.test(text)) problems.push(`${label}: CSP: ${text}`);
  });
  page.on("pageerror", (e) => problems.push(`${label}: page error: ${e.message}`));
  page.on("dialog", async (d) => {
    problems.push(`${label}: a dialog opened: ${d.message()}`);
    await d.dismiss();
  });
  return problems;
}

async function login(page, key) {
  await page.goto(`${base}/console/`);
  await page.waitForURL(/\/console\/login/);
  await page.fill("#key", key);
  await Promise.all([page.waitForURL(/\/console\/(#.*)?$/), page.click("#login-submit")]);
  await page.waitForSelector("#who:not(:empty)");
}

console.log(`chromium: ${process.env.CHROMIUM || "/usr/bin/chromium"}, base ${base}`);
const browser = await chromium.launch({
  timeout: 60_000,
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // Root in a container: chromium's sandbox needs user namespaces it may not get.
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const problems = [];

try {
  const admin = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  admin.setDefaultTimeout(15_000);
  const page = await admin.newPage();
  problems.push(watch(page, "admin"));

  await check("login: a wrong key gets a clear message", async () => {
    await page.goto(`${base}/console/`);
    await page.waitForURL(/\/console\/login/);
    await accessible(page, "login");
    await page.fill("#key", "fcb_not_a_real_key_000000000000000");
    const [response] = await Promise.all([
      page.waitForResponse((r) => r.url().endsWith("/console/login") && r.request().method() === "POST"),
      page.click("#login-submit"),
    ]);
    assert(response.status() === 401, `wrong key answered ${response.status()}`);
    const text = await page.textContent("#login-message");
    assert(/not accepted/.test(text), `message: ${text}`);
    await shot(page, "01-login-wrong-key");
  });

  await check("login: the admin key opens the console", async () => {
    await page.fill("#key", adminKey);
    await Promise.all([page.waitForURL(/\/console\/(#.*)?$/), page.click("#login-submit")]);
    await page.waitForSelector("#who:not(:empty)");
    const who = await page.textContent("#who");
    assert(/admin/.test(who), `who: ${who}`);
    const cookies = await admin.cookies();
    const c = cookies.find((x) => x.name === "fluxcb_session");
    assert(c && c.httpOnly && c.sameSite === "Strict", `session cookie: ${JSON.stringify(c)}`);
  });

  await check("keyboard: the first Tab reaches the skip link, which moves focus to the content", async () => {
    await page.keyboard.press("Tab");
    const first = await page.evaluate(() => document.activeElement?.id);
    assert(first === "skip", `first focus: ${first}`);
    await page.keyboard.press("Enter");
    const focused = await page.evaluate(() => document.activeElement?.id);
    assert(focused === "main", `after the skip link: ${focused}`);
  });

  await check("overview: charts drawn with data, figures shown", async () => {
    await page.goto(`${base}/console/#/overview`);
    await page.waitForSelector("#chart-day polyline");
    const lines = await page.$$eval("#chart-hour polyline", (ls) => ls.map((l) => l.getAttribute("points").split(" ").length));
    assert(lines.length === 3 && lines.every((n) => n === 60), `hour chart lines: ${lines}`);
    const peak = await page.$$eval("#chart-hour polyline", (ls) => {
      // A point above the baseline: some bucket is not zero.
      const ys = ls.flatMap((l) => l.getAttribute("points").split(" ").map((p) => Number(p.split(",")[1])));
      return Math.min(...ys) < Math.max(...ys);
    });
    assert(peak, "every point of the hour chart is on the baseline");
    const accepted = await page.textContent("#stat-accepted");
    assert(Number(accepted.replace(/\D/g, "")) > 0, `accepted: ${accepted}`);
    const ratio = await page.textContent("#stat-ratio");
    assert(/%/.test(ratio), `success ratio: ${ratio}`);
    const p99 = await page.textContent("#stat-p99");
    assert(/ms|s$/.test(p99), `p99: ${p99}`);
    await page.waitForSelector("#failing tbody tr");
    await shot(page, "02-overview");
    await accessible(page, "overview");
  });

  await check("callbacks: a failed callback found by filter, its attempt timeline opened", async () => {
    await page.click('#nav a[data-page="callbacks"]');
    await page.waitForSelector("#filters");
    await page.selectOption("#f-status", "failed");
    await page.fill("#f-metadata", "case=redrive");
    await page.click('#filters button[type="submit"]');
    await page.waitForURL(/status=failed/);
    // The filtered page has rendered when its count says so (the unfiltered one also had the link).
    await page.waitForFunction(() => /^1 callback on this page/.test(document.getElementById("result-count")?.textContent || ""));
    const link = page.locator(`#callbacks-table a[href="#/callbacks/${flakyId}"]`);
    await link.waitFor();
    const rows = await page.locator("#callbacks-table tbody tr").count();
    assert(rows === 1, `expected the one failed callback, got ${rows} rows`);
    await shot(page, "03-callbacks-filtered");
    await accessible(page, "callbacks");
    await link.click();
    await page.waitForSelector("#attempts li");
    const attempts = await page.locator("#attempts > li").count();
    assert(attempts === 3, `attempts in the timeline: ${attempts}`);
    const first = await page.textContent("#attempts > li:first-child");
    assert(/HTTP 500/.test(first) && /http_status/.test(first), `first attempt: ${first}`);
    assert(await page.isEnabled("#retry"), "retry is offered for a dead letter");
    await shot(page, "04-detail-failed");
    await accessible(page, "callback detail");
  });

  await check("dead letters: grouped, redriven after a confirmation with the count", async () => {
    await page.goto(`${base}/console/#/dead-letters?metadata=case%3Dredrive`);
    await page.waitForSelector("#groups tbody tr");
    await page.waitForSelector("#dead-letters tbody tr");
    await shot(page, "05-dead-letters");
    await accessible(page, "dead letters");
    await page.click("#redrive-filtered");
    await page.waitForSelector("dialog#confirm[open]");
    const text = await page.textContent("#confirm-text");
    assert(/^1 dead letter \(metadata case=redrive\) will move/.test(text), `confirmation: ${text}`);
    await shot(page, "06-redrive-confirm");
    await accessible(page, "redrive confirmation");
    await page.click("#confirm-redrive");
    await page.waitForSelector("#redrive-feedback .message.ok");
    const done = await page.textContent("#redrive-feedback");
    assert(/Moved 1 dead letter/.test(done), `after redrive: ${done}`);
  });

  await check("the redriven callback is delivered (the receiver succeeds now)", async () => {
    const deadline = Date.now() + 20_000;
    let status = "";
    while (Date.now() < deadline) {
      await page.goto(`${base}/console/#/callbacks/${flakyId}?t=${Date.now()}`);
      await page.waitForSelector("#callback-id");
      status = await page.textContent("h1 .badge");
      if (status === "delivered") break;
      await page.waitForTimeout(300);
    }
    assert(status === "delivered", `status: ${status}`);
    const last = await page.textContent("#attempts > li:last-child");
    assert(/HTTP 200/.test(last), `last attempt: ${last}`);
    const events = await page.textContent("#events");
    assert(/redriven/.test(events), "the audit trail shows the redrive");
    await shot(page, "07-detail-delivered");
  });

  await check("escaping: script payloads show as text and never run", async () => {
    await page.goto(`${base}/console/#/callbacks/${xssId}`);
    await page.waitForSelector("#callback-body");
    const headers = await page.textContent("#request-headers");
    assert(headers.includes("<script>window.__xss=1</script>"), `headers: ${headers}`);
    assert(headers.includes('<img src=x onerror="window.__xss=2">'), "the img payload shows as text");
    assert(!headers.includes("hunter2"), "secret header values are masked");
    assert(/masked/.test(headers), "masked values say so");
    const body = await page.textContent("#callback-body");
    assert(body.includes("<script>window.__xss=3</script>"), `body: ${body}`);
    const url = await page.textContent("#callback-url");
    assert(url.includes("%3Cscript%3E") || url.includes("<script>"), `url: ${url}`);
    const excerpt = await page.textContent("#attempts");
    assert(excerpt.includes("<img src=x onerror=window.__xss=4>"), `response excerpt: ${excerpt}`);
    const ran = await page.evaluate(() => window.__xss);
    assert(ran === undefined, `a payload ran: window.__xss = ${ran}`);
    const injected = await page.$$eval("main script, main img", (els) => els.length);
    assert(injected === 0, `${injected} script or img elements inside the page content`);
    await shot(page, "08-escaped-payloads");
  });

  await check("destinations: health per host", async () => {
    await page.goto(`${base}/console/#/destinations`);
    await page.waitForSelector("#destinations tbody tr");
    const text = await page.textContent("#destinations");
    assert(/127\.0\.0\.1/.test(text) && /closed|open/.test(text), `destinations: ${text}`);
    // The registered destination (made by the test before the run): pause, then resume.
    await page.waitForSelector("#registered tbody tr button");
    let registered = await page.textContent("#registered");
    assert(/127\.0\.0\.1/.test(registered) && /active/.test(registered), `registered: ${registered}`);
    await page.click("#registered tbody tr button");
    await page.waitForFunction(() => /paused/.test(document.querySelector("#registered")?.textContent ?? ""));
    await shot(page, "09-destinations");
    await accessible(page, "destinations");
    await page.click("#registered tbody tr button");
    await page.waitForFunction(() => /active/.test(document.querySelector("#registered")?.textContent ?? ""));
    registered = await page.textContent("#registered");
    assert(!/paused/.test(registered), `resumed: ${registered}`);
  });

  await check("migration: mode and cutover changed through the form", async () => {
    await page.goto(`${base}/console/#/migration`);
    await page.waitForSelector("#migration-form");
    await accessible(page, "migration");
    await page.fill("#m-percent", "0");
    await page.selectOption("#m-mode", "off");
    await page.click('#migration-form button[type="submit"]');
    await page.waitForSelector("#migration-feedback .message.ok");
    assert((await page.textContent("#migration-mode")) === "off", "mode saved");
    await shot(page, "10-migration");
  });

  await check("phone: the overview fits a small screen", async () => {
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    await phone.addCookies(await admin.cookies());
    const p = await phone.newPage();
    problems.push(watch(p, "phone"));
    await p.goto(`${base}/console/#/overview`);
    await p.waitForSelector("#chart-hour polyline");
    const overflow = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert(overflow <= 1, `the page scrolls sideways by ${overflow}px`);
    await shot(p, "11-phone-overview");
    await accessible(p, "phone overview");
    await p.goto(`${base}/console/#/callbacks`);
    await p.waitForSelector("#callbacks-table");
    await shot(p, "12-phone-callbacks");
    await phone.close();
  });

  await check("logout ends the session", async () => {
    await page.click("#logout");
    await page.waitForURL(/\/console\/login\?logged-out=1/);
    const r = await page.request.get(`${base}/v1/callbacks?limit=1`);
    assert(r.status() === 401, `after logout /v1 answered ${r.status()}`);
  });

  const tenant = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  tenant.setDefaultTimeout(15_000);
  const tpage = await tenant.newPage();
  problems.push(watch(tpage, "tenant"));
  await check("a tenant key sees only its tenant's callbacks", async () => {
    await login(tpage, tenantKey);
    const who = await tpage.textContent("#who");
    assert(/tenant acme/.test(who), `who: ${who}`);
    assert(await tpage.isHidden("#nav-migration"), "no migration page for a tenant");
    await tpage.goto(`${base}/console/#/callbacks`);
    await tpage.waitForSelector("#callbacks-table tbody tr");
    const listed = await tpage.$$eval("#callbacks-table a", (as) => as.map((a) => a.textContent));
    assert(listed.length > 0, "the tenant sees its own callbacks");
    assert(!listed.includes(otherId), "another tenant's callback is listed");
    assert(!listed.includes(flakyId), "the admin tenant's callback is listed");
    const table = await tpage.textContent("#callbacks-table");
    assert(!table.includes("globex"), "another tenant's URL shows");
    await shot(tpage, "13-tenant-callbacks");
    await tpage.goto(`${base}/console/#/callbacks/${otherId}`);
    await tpage.waitForSelector("main .message.error");
    const error = await tpage.textContent("main .message.error");
    assert(/not found/i.test(error), `opening another tenant's callback: ${error}`);
    await tpage.goto(`${base}/console/#/overview`);
    await tpage.waitForSelector("#chart-hour polyline");
    await accessible(tpage, "tenant overview");
    await shot(tpage, "14-tenant-overview");
  });
  await tenant.close();
  await admin.close();
} finally {
  await browser.close();
}

for (const p of problems.flat()) {
  failures.push(p);
  console.log(`FAIL ${p}`);
}
console.log(`screenshots: ${path.resolve(shots)}`);
console.log(`${passed} passed, ${failures.length} failed`);
process.exit(failures.length ? 1 : 0);
