// The operator console: plain DOM, no framework, no build step. It calls the API as any client does, with the key the
// operator pasted. Everything the API returns is rendered as text (Text nodes, textContent, setAttribute), never
// parsed as markup: user ids, descriptions, metadata and webhook URLs are the callers' own. The page's CSP allows
// scripts, styles and connections to this origin only, and no inline script or style.

const KEY_ITEM = "wallet-console-key"; // in sessionStorage: it goes with the tab, and is never a cookie
const PAGE_SIZE = 20;
const HOURS = 24;
const HOUR_MS = 3_600_000;
const FAILURES_SHOWN = 5; // failed delivery attempts listed per webhook endpoint
const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

const state = {
  userId: null,
  cursors: [null], // the cursor of each history page seen, for "newer"; the last one is the page shown
  nextCursor: null,
  transaction: null,
  searchTicket: 0,
};

// --- money and JSON ----------------------------------------------------------------------------------------------

// Amounts are integers in minor units, and balances go past 2^53 (a system account up to 2^61): an integer too large
// for a Number is read as a BigInt from its source text, where the browser hands revivers the source.
function reviver(_key, value, context) {
  if (typeof value === "number" && !Number.isSafeInteger(value) && /^-?\d+$/.test(context?.source ?? "")) {
    return BigInt(context.source);
  }
  return value;
}

const amount = (value) => (value == null ? "—" : BigInt(value).toLocaleString("en-US"));
const signed = (value) => (value > 0n ? "+" : "") + amount(value);
const pretty = (value) => JSON.stringify(value, (_key, v) => (typeof v === "bigint" ? v.toString() : v), 2);
const when = (timestamp) => (timestamp ? `${timestamp.slice(0, 10)} ${timestamp.slice(11, 19)}` : "—");
const hourOf = (ms) => new Date(ms).toISOString().slice(11, 16);

// A fresh Idempotency-Key per confirmed action (randomUUID needs a secure context: 127.0.0.1 is one, a plain-http
// host name is not).
const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
const newKey = () => crypto.randomUUID?.() ?? hex(crypto.getRandomValues(new Uint8Array(16)));

// --- the API -------------------------------------------------------------------------------------------------------

// A failed call: the problem document's title, status, code and detail (RFC 9457), or what is known without one.
class Problem extends Error {
  constructor(status, body) {
    const doc = body && typeof body === "object" ? body : {};
    super(typeof doc.detail === "string" ? doc.detail : `The service answered HTTP ${status}.`);
    this.status = status;
    this.title = typeof doc.title === "string" ? doc.title : "Request failed";
    this.code = typeof doc.code === "string" ? doc.code : "";
  }

  toString() {
    return `${this.title} (${this.status}${this.code ? ` ${this.code}` : ""}): ${this.message}`;
  }
}

async function api(path, { method = "GET", body, idempotencyKey } = {}) {
  const headers = { Accept: "application/json", Authorization: `Bearer ${sessionStorage.getItem(KEY_ITEM) ?? ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
  const init = { method, headers, credentials: "omit", cache: "no-store" };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text, reviver) : null;
  } catch {
    data = null; // not JSON (a proxy's error page): the status says enough
  }
  if (!response.ok) throw new Problem(response.status, data);
  return data;
}

// --- building the DOM ------------------------------------------------------------------------------------------------

// el("td", {class: "num"}, "12"): attributes set one by one, children appended as nodes or as text, never as markup.
function build(node, attributes, children) {
  for (const [name, value] of Object.entries(attributes ?? {})) {
    if (value != null && value !== false) node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child != null && child !== false) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}
const el = (tag, attributes, ...children) => build(document.createElement(tag), attributes, children);
const svg = (tag, attributes, ...children) =>
  build(document.createElementNS("http://www.w3.org/2000/svg", tag), attributes, children);

function button(label, onClick, attributes = {}) {
  const node = el("button", { type: "button", ...attributes }, label);
  node.addEventListener("click", onClick);
  return node;
}

const td = (content, cls) => el("td", { class: cls }, content);
const link = (id) => (id ? button(id, () => openTransaction(id), { class: "link mono" }) : null);
const muted = (text) => el("p", { class: "muted" }, text);
const badge = (text, tone) => el("span", { class: `badge ${tone}` }, text);
const time = (timestamp) => el("time", { datetime: timestamp }, when(timestamp));

function facts(pairs) {
  const shown = pairs.filter(([, value]) => value != null && value !== "");
  return el("dl", { class: "facts" }, shown.map(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]));
}

function table(headings, rows, empty) {
  return el(
    "table",
    { class: "grid" },
    el("thead", {}, el("tr", {}, headings.map(([text, cls]) => el("th", { class: cls }, text)))),
    el("tbody", {}, rows.length ? rows : emptyRow(headings.length, empty)),
  );
}

const emptyRow = (columns, text) => el("tr", {}, el("td", { colspan: columns, class: "muted" }, text));

function showError(box, error) {
  box.textContent = error ? String(error) : "";
  box.hidden = !error;
}

// Runs a section's loader; its failure is shown in the section (`<name>-error`), and the page carries on.
async function section(name, load) {
  const box = $(`${name}-error`);
  showError(box, null);
  try {
    await load();
  } catch (error) {
    showError(box, error);
  }
}

// An action: confirmed first, its form's buttons disabled while it runs (a second click would be a second request).
async function act(form, question, run) {
  if (!window.confirm(question)) return;
  const buttons = form.querySelectorAll("button");
  buttons.forEach((b) => (b.disabled = true));
  try {
    await run();
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
}

// --- signing in ----------------------------------------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const key = $("key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_ITEM, key);
  $("key").value = "";
  showError($("signin-error"), null);
  try {
    await api("/v1/assets"); // the cheapest read: proves the key is known
  } catch (error) {
    showError($("signin-error"), error);
    if (error.status === 401) {
      sessionStorage.removeItem(KEY_ITEM);
      return;
    }
    // Any other failure (403 without the read scope): signed in all the same; each section says what it cannot do.
  }
  start();
}

function start() {
  const key = sessionStorage.getItem(KEY_ITEM) ?? "";
  $("whoami").textContent = `Signed in with key …${key.slice(-4)}`;
  for (const id of ["signin", "intro"]) $(id).hidden = true;
  for (const id of ["session", "app"]) $(id).hidden = false;
  $("search").focus();
  loadOverview();
}

function signOut() {
  sessionStorage.removeItem(KEY_ITEM);
  window.location.reload(); // nothing of the session stays on the page either
}

// --- users ---------------------------------------------------------------------------------------------------------

function search() {
  const prefix = $("search").value.trim();
  const ticket = ++state.searchTicket; // answers may come back out of order: only the last one is shown
  return section("find", async () => {
    if (!prefix) {
      $("matches").replaceChildren();
      return;
    }
    const page = await api(`/v1/users?prefix=${enc(prefix)}&limit=${PAGE_SIZE}`);
    if (ticket !== state.searchTicket) return;
    const items = page.items.map((user) =>
      el(
        "li",
        {},
        button(user.user_id, () => openUser(user.user_id), { class: "link" }),
        user.display_name ? el("span", { class: "muted" }, user.display_name) : null,
        user.status === "frozen" ? badge("frozen", "bad") : null,
      ),
    );
    if (!items.length) items.push(el("li", { class: "muted" }, "No user id starts with that."));
    if (page.next_cursor) items.push(el("li", { class: "muted" }, `More than ${PAGE_SIZE} match: type more.`));
    $("matches").replaceChildren(...items);
  });
}

async function openUser(userId) {
  state.userId = userId;
  state.cursors = [null];
  closeTransaction();
  for (const id of ["balances", "history"]) $(id).replaceChildren(); // nothing of the previous user stays
  $("user-card").hidden = false;
  $("history-card").hidden = false;
  $("user-title").textContent = userId;
  await Promise.all([section("user", loadUser), section("history", loadHistory)]);
}

async function loadUser() {
  const path = `/v1/users/${enc(state.userId)}`;
  const [user, balances] = await Promise.all([api(path), api(`${path}/balances`)]);
  const frozen = user.status === "frozen";
  $("user-title").textContent = user.user_id;
  $("user-status").className = `badge ${frozen ? "bad" : "ok"}`;
  $("user-status").textContent = user.status;
  $("user-facts").textContent = [user.display_name, `created ${when(user.created_at)} UTC`].filter(Boolean).join(" · ");
  $("user-frozen").textContent = frozen ? `Frozen since ${when(user.frozen_at)} UTC: ${user.frozen_reason ?? ""}` : "";
  $("user-frozen").hidden = !frozen;
  $("freeze").hidden = frozen;
  $("unfreeze-row").hidden = !frozen;
  const rows = balances.balances.map((b) => {
    const lots = (b.expiring ?? []).map((lot) => `${amount(lot.amount)} on ${when(lot.expires_at)}`);
    const cells = [td(b.asset), td(amount(b.balance), "num balance"), td(amount(b.held), "num held")];
    cells.push(td(amount(b.available), "num available"), td(lots.join("; ") || "—", "expiring"));
    return el("tr", { "data-asset": b.asset }, cells);
  });
  $("balances").replaceChildren(...rows);
}

function freeze(event) {
  event.preventDefault();
  const reason = $("freeze-reason").value.trim();
  if (!reason) return;
  const question = `Freeze ${state.userId}? Nothing can be taken from them until they are unfrozen.\nReason: ${reason}`;
  return act($("freeze"), question, () =>
    section("user", async () => {
      await api(`/v1/users/${enc(state.userId)}/freeze`, { method: "POST", body: { reason } });
      $("freeze-reason").value = "";
      await loadUser();
    }),
  );
}

function unfreeze() {
  return act($("unfreeze-row"), `Unfreeze ${state.userId}?`, () =>
    section("user", async () => {
      await api(`/v1/users/${enc(state.userId)}/unfreeze`, { method: "POST", body: {} });
      await loadUser();
    }),
  );
}

// --- history -------------------------------------------------------------------------------------------------------

// What a transaction did to this user's balance in its asset: the sum of the user's entries there.
function change(tx, userId) {
  const account = `user:${userId}`;
  return tx.entries
    .filter((entry) => entry.account === account && entry.asset === tx.asset)
    .reduce((sum, entry) => sum + BigInt(entry.amount), 0n);
}

async function loadHistory() {
  const cursor = state.cursors.at(-1);
  const query = `limit=${PAGE_SIZE}${cursor ? `&cursor=${enc(cursor)}` : ""}`;
  const page = await api(`/v1/users/${enc(state.userId)}/transactions?${query}`);
  state.nextCursor = page.next_cursor;
  const rows = page.items.map((tx) => {
    const received = tx.to_user_id === state.userId; // a transfer to this user: the receiver's side
    const row = el(
      "tr",
      { class: "clickable", "data-id": tx.id, "data-type": tx.type },
      td(link(tx.id), "nowrap"),
      td(time(tx.created_at), "nowrap"),
      td(tx.type),
      td(`${signed(change(tx, state.userId))} ${tx.asset}`, "num"),
      td(amount(received ? tx.to_balance_after : tx.balance_after), "num"),
      td(tx.description ?? "", "description"),
    );
    row.addEventListener("click", (event) => {
      if (!event.target.closest("button")) openTransaction(tx.id);
    });
    return row;
  });
  $("history").replaceChildren(...(rows.length ? rows : [emptyRow(6, "No transactions.")]));
  $("page").textContent = `Page ${state.cursors.length}`;
  $("prev").disabled = state.cursors.length === 1;
  $("next").disabled = !page.next_cursor;
}

function older() {
  if (!state.nextCursor) return;
  state.cursors.push(state.nextCursor);
  return section("history", loadHistory);
}

function newer() {
  if (state.cursors.length === 1) return;
  state.cursors.pop();
  return section("history", loadHistory);
}

// --- a transaction, its refunds and its hold -------------------------------------------------------------------------

async function openTransaction(id) {
  state.transaction = { id };
  $("transaction-card").hidden = false;
  $("transaction-title").textContent = `Transaction ${id}`;
  $("transaction").replaceChildren(muted("Loading…"));
  $("refund").hidden = true;
  await section("transaction", loadTransaction);
  $("transaction-card").scrollIntoView({ block: "nearest" });
}

function closeTransaction() {
  state.transaction = null;
  $("transaction-card").hidden = true;
}

async function loadTransaction() {
  const path = `/v1/transactions/${enc(state.transaction.id)}`;
  const tx = await api(path);
  // The refunds and the hold are parts of the page: a failure of one is shown in its place.
  const [refunds, hold] = await Promise.all([
    api(`${path}/refunds`).catch((error) => error),
    tx.hold_id ? api(`/v1/holds/${enc(tx.hold_id)}`).catch((error) => error) : null,
  ]);
  state.transaction = tx;
  const entry = (e) => el("tr", {}, td(e.account, "mono"), td(e.asset), td(signed(BigInt(e.amount)), "num"));
  const parts = [
    facts([
      ["Type", tx.type],
      ["Status", tx.status],
      ["User", tx.user_id],
      ["To user", tx.to_user_id],
      ["Amount", `${amount(tx.amount)} ${tx.asset}`],
      ["Balance after", tx.balance_after == null ? null : amount(tx.balance_after)],
      ["Created", `${when(tx.created_at)} UTC`],
      ["Description", tx.description],
      ["Refund of", link(tx.refund_of)],
      ["Hold", tx.hold_id],
    ]),
    el("h3", {}, "Entries"),
    table([["Account"], ["Asset"], ["Amount", "num"]], tx.entries.map(entry), "No entries."),
  ];
  if (tx.rewards?.length) {
    const reward = (r) => el("tr", {}, td(r.asset), td(amount(r.amount), "num"), td(amount(r.balance_after), "num"));
    const headings = [["Asset"], ["Amount", "num"], ["Balance after", "num"]];
    parts.push(el("h3", {}, "Rewards"), table(headings, tx.rewards.map(reward), ""));
  }
  if (Object.keys(tx.metadata ?? {}).length) parts.push(el("h3", {}, "Metadata"), el("pre", {}, pretty(tx.metadata)));
  parts.push(el("h3", {}, "Refunds"), refundsPart(refunds));
  if (hold) parts.push(el("h3", {}, "Hold"), holdPart(hold));
  $("transaction").replaceChildren(...parts);
  $("refund").hidden = refunds instanceof Error || BigInt(refunds.refundable_amount) <= 0n;
}

function refundsPart(refunds) {
  if (refunds instanceof Error) return el("p", { class: "error" }, String(refunds));
  const row = (r) =>
    el("tr", {}, td(link(r.id)), td(time(r.created_at)), td(amount(r.amount), "num"), td(r.description, "description"));
  const { amount: total, refunded_amount: refunded, refundable_amount: refundable } = refunds;
  const summary = `Refunded ${amount(refunded)} of ${amount(total)}; refundable ${amount(refundable)}.`;
  const headings = [["Refund"], ["Created (UTC)"], ["Amount", "num"], ["Reason"]];
  return el(
    "div",
    {},
    el("p", { id: "refund-summary" }, summary),
    refunds.items.length ? table(headings, refunds.items.map(row), "") : null,
  );
}

function holdPart(hold) {
  if (hold instanceof Error) return el("p", { class: "error" }, String(hold));
  return facts([
    ["Id", hold.id],
    ["Status", hold.status],
    ["Amount", `${amount(hold.amount)} ${hold.asset}`],
    ["Captured", hold.captured_amount == null ? null : amount(hold.captured_amount)],
    ["Created", `${when(hold.created_at)} UTC`],
    ["Expires", `${when(hold.expires_at)} UTC`],
    ["Resolved", hold.resolved_at ? `${when(hold.resolved_at)} UTC` : null],
    ["Description", hold.description],
  ]);
}

function refund(event) {
  event.preventDefault();
  const tx = state.transaction;
  const reason = $("refund-reason").value.trim();
  const given = $("refund-amount").value.trim();
  if (!reason) return;
  const body = { reason };
  if (given) {
    // Sent as a JSON number: it must be a whole number a Number holds exactly (the API's bound, 10^15, is below 2^53).
    if (!/^[1-9]\d*$/.test(given) || !Number.isSafeInteger(Number(given))) {
      showError($("transaction-error"), "The amount is a whole number of minor units, 1 or more.");
      return;
    }
    body.amount = Number(given);
  }
  const what = given ? `${amount(BigInt(given))} ${tx.asset}` : "all that is left";
  const question = `Refund ${what} of ${tx.type} ${tx.id} (user ${tx.user_id ?? "—"})?\nReason: ${reason}`;
  return act($("refund"), question, () =>
    section("transaction", async () => {
      const path = `/v1/transactions/${enc(tx.id)}/refunds`;
      await api(path, { method: "POST", body, idempotencyKey: newKey() });
      $("refund").reset();
      await loadTransaction();
      if (state.userId) await Promise.all([section("user", loadUser), section("history", loadHistory)]);
    }),
  );
}

// --- the overview --------------------------------------------------------------------------------------------------

function loadOverview() {
  return Promise.all([
    section("volume", loadVolume),
    section("system", loadSystemAccounts),
    section("verify", loadVerify),
    section("webhooks", loadWebhooks),
  ]);
}

async function loadSystemAccounts() {
  const { items } = await api("/v1/system-accounts");
  $("system").replaceChildren(
    ...items.map((a) => el("tr", {}, td(a.asset), td(a.account, "mono"), td(amount(a.balance), "num"))),
  );
}

// Rows are (asset, hour, type); the chart of an asset has one bar per hour, the amounts of every type summed.
async function loadVolume() {
  const volume = await api(`/v1/volume?hours=${HOURS}`);
  const start = Date.parse(volume.from);
  const assets = new Map();
  for (const row of volume.items) {
    const hour = Math.round((Date.parse(row.hour) - start) / HOUR_MS);
    if (!(hour >= 0 && hour < HOURS)) continue;
    if (!assets.has(row.asset)) {
      assets.set(row.asset, Array.from({ length: HOURS }, () => ({ amount: 0n, count: 0, types: [] })));
    }
    const bucket = assets.get(row.asset)[hour];
    bucket.amount += BigInt(row.amount);
    bucket.count += row.count;
    bucket.types.push(`${row.type}: ${row.count} for ${amount(row.amount)}`);
  }
  const charts = [...assets.keys()].sort().map((asset) => chart(asset, assets.get(asset), start));
  $("volume").replaceChildren(...(charts.length ? charts : [muted(`No transactions in the last ${HOURS} hours.`)]));
}

const CHART = { width: 480, height: 120, top: 8, bottom: 18, left: 2 };
const SLOT = (CHART.width - CHART.left) / HOURS;

const tick = (x, y, anchor, text) => svg("text", { class: "tick", x, y, "text-anchor": anchor }, text);

function chart(asset, buckets, start) {
  const plotHeight = CHART.height - CHART.top - CHART.bottom;
  const base = CHART.top + plotHeight;
  const bottom = CHART.height - 4;
  const max = buckets.reduce((m, b) => (b.amount > m ? b.amount : m), 0n);
  const total = buckets.reduce((sum, b) => sum + b.amount, 0n);
  const count = buckets.reduce((sum, b) => sum + b.count, 0);
  const plot = svg("svg", {
    class: "chart",
    viewBox: `0 0 ${CHART.width} ${CHART.height}`,
    role: "img",
    "aria-label": `${asset}: volume per hour over the last ${HOURS} hours`,
  });
  buckets.forEach((bucket, i) => {
    const x = CHART.left + i * SLOT;
    // Pixels, not money: a ratio of BigInts to 3 decimals; a bucket with anything in it gets at least 1 px.
    const ratio = max > 0n ? Number((bucket.amount * 1000n) / max) / 1000 : 0;
    const height = bucket.amount > 0n ? Math.max(1, ratio * plotHeight) : 0;
    const from = hourOf(start + i * HOUR_MS);
    const total = `${from} UTC: ${bucket.count} transactions, ${amount(bucket.amount)} ${asset}`;
    const label = [total, ...bucket.types].join("\n");
    plot.append(
      svg(
        "g",
        { class: "bucket" },
        svg("title", {}, label),
        svg("rect", { class: "slot", x, y: CHART.top, width: SLOT, height: plotHeight }),
        svg("rect", { class: "bar", x: x + 1, y: base - height, width: SLOT - 2, height }),
      ),
    );
  });
  plot.append(
    svg("line", { class: "axis", x1: CHART.left, y1: base, x2: CHART.width, y2: base }),
    tick(CHART.left, bottom, "start", hourOf(start)),
    tick(CHART.left + (HOURS / 2) * SLOT, bottom, "middle", hourOf(start + (HOURS / 2) * HOUR_MS)),
    tick(CHART.width, bottom, "end", `${hourOf(start + (HOURS - 1) * HOUR_MS)} UTC`),
    tick(CHART.left + 4, CHART.top + 10, "start", `max ${amount(max)}`),
  );
  const caption = el("figcaption", {}, el("strong", {}, asset), ` ${amount(total)} in ${count} transactions`);
  return el("figure", { class: "volume", "data-asset": asset }, caption, plot);
}

async function loadVerify() {
  const { items } = await api("/v1/verify-reports?limit=1");
  if (!items.length) {
    $("verify").replaceChildren(muted("No report yet: `wallet verify` records one each time it runs."));
    return;
  }
  const report = items[0];
  const verdict = report.ok ? badge("consistent", "ok") : badge(`${report.failed} check(s) failed`, "bad");
  const failed = report.checks.filter((check) => check.violations > 0);
  $("verify").replaceChildren(
    el("p", { class: "verdict" }, verdict, ` finished ${when(report.finished_at)} UTC, ${report.checks.length} checks`),
    facts(Object.entries(report.totals).map(([name, value]) => [name, amount(value)])),
    ...failed.map((check) =>
      el(
        "details",
        { class: "violation" },
        el("summary", {}, `${check.name}: ${check.violations} violation(s)`),
        el("pre", {}, pretty(check.sample)),
      ),
    ),
  );
}

async function loadWebhooks() {
  const { items } = await api("/v1/webhooks");
  const cards = await Promise.all(items.map(webhookCard));
  $("webhooks").replaceChildren(...(cards.length ? cards : [muted("No webhook endpoints.")]));
}

async function webhookCard(hook) {
  const tone = hook.status !== "active" ? "bad" : hook.failing_since ? "warn" : "ok";
  const condition = hook.status !== "active" ? hook.status : hook.failing_since ? "failing" : "healthy";
  const failures = el("ul", { class: "failures" });
  try {
    const { items } = await api(`/v1/webhooks/${enc(hook.id)}/deliveries?limit=${PAGE_SIZE}`);
    const failing = (a) => a.error || !(a.status_code >= 200 && a.status_code < 300);
    const failed = items
      .flatMap((d) => d.attempts.filter(failing).map((a) => [d, a]))
      .sort(([, a], [, b]) => (a.started_at < b.started_at ? 1 : -1))
      .slice(0, FAILURES_SHOWN);
    failures.replaceChildren(
      ...failed.map(([delivery, attempt]) => {
        const outcome = attempt.status_code ? `HTTP ${attempt.status_code}` : (attempt.error ?? "no answer");
        const what = ` ${delivery.event_type}, attempt ${attempt.attempt}: ${outcome}`;
        return el("li", {}, time(attempt.started_at), what);
      }),
    );
    if (!failed.length) failures.append(el("li", { class: "muted" }, "No failed attempt among the latest deliveries."));
  } catch (error) {
    failures.replaceChildren(el("li", { class: "error" }, String(error)));
  }
  return el(
    "div",
    { class: "webhook", "data-id": hook.id },
    el("div", { class: "heading" }, el("span", { class: "mono url" }, hook.url), badge(condition, tone)),
    el("p", { class: "muted" }, hook.types.join(", "), hook.description ? ` · ${hook.description}` : ""),
    hook.failing_since ? el("p", { class: "warn-text" }, `Failing since ${when(hook.failing_since)} UTC`) : null,
    hook.disabled_at ? el("p", { class: "error" }, `Disabled ${when(hook.disabled_at)} UTC`) : null,
    failures,
  );
}

// --- wiring --------------------------------------------------------------------------------------------------------

let searchTimer = 0;
$("signin").addEventListener("submit", signIn);
$("signout").addEventListener("click", signOut);
$("search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(search, 200);
});
$("find").addEventListener("submit", (event) => {
  event.preventDefault();
  const userId = $("search").value.trim();
  if (userId) openUser(userId);
});
$("freeze").addEventListener("submit", freeze);
$("unfreeze").addEventListener("click", unfreeze);
$("prev").addEventListener("click", newer);
$("next").addEventListener("click", older);
$("transaction-close").addEventListener("click", closeTransaction);
$("refund").addEventListener("submit", refund);
$("refresh").addEventListener("click", loadOverview);
if (sessionStorage.getItem(KEY_ITEM)) start();
