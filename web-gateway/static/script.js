// Concord UI: plain DOM, no build step, no external code. Talks to the gateway's JSON API
// and follows /api/events (server-sent events) for the cluster view and the ledger.
"use strict";

const CLASS_NAMES = ["setosa", "versicolor", "virginica"];
const NEXT_STATUSES = {
  pending: ["paid", "cancelled"],
  paid: ["shipped", "cancelled"],
  shipped: ["delivered"],
};
const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];
const MAX_LEDGER_ROWS = 50;

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    // Through the CSSOM, not a style attribute: the CSP forbids inline style attributes.
    else if (key === "style") Object.assign(node.style, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// ------------------------------------------------------------------ API + messages

class ApiError extends Error {
  constructor(status, code, message) {
    super(`${message} (${code}, HTTP ${status})`);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body, headers = {}) {
  const init = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "network", `gateway unreachable: ${err.message}`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    const code = data && data.code ? data.code : "http_error";
    const message = data && data.message ? data.message : text || response.statusText;
    throw new ApiError(response.status, code, message);
  }
  return data;
}

function bearer(inputId) {
  const token = $(inputId).value.trim();
  return token ? { authorization: `Bearer ${token}` } : {};
}

function showMessage(id, text) {
  const node = $(id);
  node.textContent = text;
  node.hidden = !text;
}

function showError(id, err) {
  showMessage(id, err ? (err.message || String(err)) : "");
}

function money(minor, currency) {
  return `${(minor / 100).toFixed(2)} ${currency || ""}`.trim();
}

// ------------------------------------------------------------------ account
//
// The session lives in an HttpOnly cookie this script cannot read: it only learns who is
// signed in from /api/account and the sign-in replies. Cart and order calls use the
// account's own paths (/api/carts/me, /api/orders) and the browser sends the cookie.

let account = null;

function renderAccount() {
  const signedIn = account !== null;
  $("account-name").textContent = signedIn ? account.username : "not signed in";
  $("account-name").dataset.userId = signedIn ? account.user_id : "";
  for (const id of ["username", "password", "sign-in", "sign-up"]) $(id).hidden = signedIn;
  $("sign-out").hidden = !signedIn;
}

async function loadAccount() {
  try {
    account = await api("GET", "/api/account");
  } catch (_) {
    account = null; // 401: not signed in (or the session expired)
  }
  renderAccount();
  refreshUser();
}

async function signIn(kind) {
  const body = { username: $("username").value.trim(), password: $("password").value };
  try {
    const reply = await api("POST", kind === "up" ? "/api/signup" : "/api/signin", body);
    account = reply.account;
    $("password").value = "";
    showError("account-error", null);
  } catch (err) {
    showError("account-error", err);
  }
  renderAccount();
  refreshUser();
}

async function signOut() {
  try {
    await api("POST", "/api/signout");
  } catch (err) {
    showError("account-error", err);
  }
  account = null;
  renderAccount();
  refreshUser();
}

function needAccount(errorId) {
  if (account) return true;
  showError(errorId, new Error("Sign in or sign up first."));
  return false;
}

function newIdempotencyKey() {
  if (window.crypto && typeof window.crypto.randomUUID === "function") {
    return window.crypto.randomUUID();
  }
  return `k-${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

// ------------------------------------------------------------------ products

async function loadProducts() {
  try {
    const query = encodeURIComponent($("product-search").value.trim());
    const page = await api("GET", `/api/products?page_size=100&name_contains=${query}`);
    renderProducts(page.products);
    showError("shop-error", null);
  } catch (err) {
    showError("shop-error", err);
  }
}

function renderProducts(products) {
  const body = $("product-list");
  body.replaceChildren();
  for (const p of products) {
    const inStock = p.stock > 0;
    const qty = el("input", { type: "number", min: "1", max: String(Math.max(1, p.stock)), value: "1", size: "3", "data-testid": "product-qty" });
    qty.disabled = !inStock;
    // Nothing to add when nothing is left: say so instead of offering a doomed button.
    const add = inStock
      ? el("button", { "data-testid": "add-to-cart", onclick: () => addToCart(p.id, Number(qty.value)) }, "Add to cart")
      : el("span", { class: "muted", "data-testid": "out-of-stock" }, "Out of stock");
    const row = el("tr", { "data-testid": "product-row", dataset: { productId: p.id } },
      el("td", { "data-testid": "product-name", title: p.description || "" }, p.name,
        el("span", { class: "muted" }, ` ${p.id}`)),
      el("td", {}, money(p.price_minor, p.currency)),
      el("td", { "data-testid": "product-stock" }, p.stock),
      el("td", {}, qty),
      el("td", {}, add));
    row.addEventListener("dblclick", () => fillProductForm(p));
    body.append(row);
  }
  if (products.length === 0) {
    body.append(el("tr", {}, el("td", { colspan: "5", class: "muted" }, "No products.")));
  }
}

// ------------------------------------------------------------------ cart

async function loadCart() {
  if (!account) {
    renderCart({ lines: [], total_minor: 0, currency: "" });
    return;
  }
  try {
    renderCart(await api("GET", "/api/carts/me"));
    showError("cart-error", null);
  } catch (err) {
    showError("cart-error", err);
  }
}

function renderCart(cart) {
  const body = $("cart-lines");
  body.replaceChildren();
  for (const line of cart.lines) {
    const qty = el("input", { type: "number", min: "1", value: String(line.quantity), size: "3", "data-testid": "cart-qty" });
    qty.addEventListener("change", () => cartWrite("PUT",
      `/items/${encodeURIComponent(line.product_id)}`, { quantity: Number(qty.value) }));
    body.append(el("tr", { "data-testid": "cart-line", dataset: { productId: line.product_id } },
      el("td", {}, line.name),
      el("td", {}, qty),
      el("td", {}, money(line.line_total_minor, cart.currency)),
      el("td", {}, el("button", {
        class: "secondary", "data-testid": "cart-remove",
        onclick: () => cartWrite("DELETE", `/items/${encodeURIComponent(line.product_id)}`),
      }, "Remove"))));
  }
  if (cart.lines.length === 0) {
    body.append(el("tr", {}, el("td", { colspan: "4", class: "muted" }, "Cart is empty.")));
  }
  $("cart-total").textContent = money(cart.total_minor, cart.currency);
}

async function cartWrite(method, suffix, body) {
  if (!needAccount("cart-error")) return;
  try {
    const reply = await api(method, `/api/carts/me${suffix}`, body);
    if (reply.cart) renderCart(reply.cart);
    showError("cart-error", null);
  } catch (err) {
    showError("cart-error", err);
  }
}

function addToCart(productId, quantity) {
  return cartWrite("POST", "/items", { product_id: productId, quantity });
}

// The key of a checkout that has not been confirmed yet: clicking again after a failure
// reuses it, so the order can never be placed twice.
let pendingCheckoutKey = null;

async function checkout() {
  showMessage("checkout-result", "");
  if (!needAccount("cart-error")) return;
  pendingCheckoutKey = pendingCheckoutKey || newIdempotencyKey();
  try {
    const reply = await api("POST", "/api/orders", {},
      { "idempotency-key": pendingCheckoutKey });
    pendingCheckoutKey = null;
    const order = reply.order || {};
    showMessage("checkout-result",
      `Order ${order.id} placed: ${money(order.total_minor, order.currency)}${reply.replayed ? " (replayed)" : ""}.`);
    showError("cart-error", null);
    await Promise.all([loadCart(), loadOrders(), loadProducts()]);
  } catch (err) {
    // A definite refusal will not change on retry with the same key; anything else might
    // have been placed, so keep the key.
    if (err.status >= 400 && err.status < 500) pendingCheckoutKey = null;
    showError("cart-error", err);
  }
}

// ------------------------------------------------------------------ orders

async function loadOrders() {
  if (!account) {
    renderOrders([]);
    return;
  }
  try {
    const page = await api("GET", "/api/orders?page_size=50");
    renderOrders(page.orders);
    showError("orders-error", null);
  } catch (err) {
    showError("orders-error", err);
  }
}

function renderOrders(orders) {
  const body = $("order-list");
  body.replaceChildren();
  for (const order of orders) {
    const actions = el("td", {});
    for (const next of NEXT_STATUSES[order.status] || []) {
      actions.append(el("button", {
        class: next === "cancelled" ? "danger" : "secondary",
        "data-testid": "order-action",
        dataset: { status: next },
        onclick: () => setOrderStatus(order.id, next),
      }, next === "cancelled" ? "cancel" : `mark ${next}`));
    }
    const items = order.lines.map((l) => `${l.quantity}× ${l.name}`).join(", ");
    body.append(el("tr", { "data-testid": "order-row", dataset: { orderId: order.id } },
      el("td", { title: items }, order.id, el("div", { class: "muted" }, items)),
      el("td", {}, money(order.total_minor, order.currency)),
      el("td", { "data-testid": "order-status" }, order.status),
      actions));
  }
  if (orders.length === 0) {
    body.append(el("tr", {}, el("td", { colspan: "4", class: "muted" }, "No orders yet.")));
  }
}

async function setOrderStatus(orderId, status) {
  try {
    // Changing an order's status is an admin action, like product administration.
    await api("PUT", `/api/orders/${encodeURIComponent(orderId)}/status`, { status },
      bearer("admin-token"));
    showError("orders-error", null);
    await Promise.all([loadOrders(), loadProducts()]);
  } catch (err) {
    showError("orders-error", err);
  }
}

// ------------------------------------------------------------------ admin

function fillProductForm(p) {
  $("pf-id").value = p.id;
  $("pf-name").value = p.name;
  $("pf-description").value = p.description;
  $("pf-price").value = p.price_minor;
  $("pf-currency").value = p.currency;
  $("pf-stock").value = p.stock;
}

function productFormFields(partial) {
  const fields = {};
  const text = (id, key) => {
    const v = $(id).value.trim();
    if (v || !partial) fields[key] = v;
  };
  const num = (id, key) => {
    const v = $(id).value.trim();
    if (v !== "") fields[key] = Number(v);
    else if (!partial) fields[key] = 0;
  };
  text("pf-name", "name");
  text("pf-description", "description");
  num("pf-price", "price_minor");
  text("pf-currency", "currency");
  num("pf-stock", "stock");
  return fields;
}

async function adminAction(kind) {
  showError("admin-error", null);
  showMessage("admin-result", "");
  const id = $("pf-id").value.trim();
  try {
    let reply;
    if (kind === "create") {
      reply = await api("POST", "/api/products", productFormFields(false), bearer("admin-token"));
      $("pf-id").value = reply.product ? reply.product.id : "";
      showMessage("admin-result", `Created ${reply.product ? reply.product.id : "product"}.`);
    } else {
      if (!id) throw new Error("Enter the product id to " + kind + ".");
      const path = `/api/products/${encodeURIComponent(id)}`;
      if (kind === "update") {
        reply = await api("PATCH", path, productFormFields(true), bearer("admin-token"));
        showMessage("admin-result", `Updated ${id}.`);
      } else {
        reply = await api("DELETE", path, undefined, bearer("admin-token"));
        showMessage("admin-result", `Deleted ${id}.`);
      }
    }
    await loadProducts();
  } catch (err) {
    showError("admin-error", err);
  }
}

// ------------------------------------------------------------------ prediction + outcomes

let lastRequestId = null;

async function predict(event) {
  event.preventDefault();
  showMessage("outcome-result", "");
  const body = {
    sepal_length: Number($("sepal-length").value),
    sepal_width: Number($("sepal-width").value),
    petal_length: Number($("petal-length").value),
    petal_width: Number($("petal-width").value),
    policy: $("policy").value,
  };
  try {
    const p = await api("POST", "/api/predict", body);
    lastRequestId = p.request_id;
    renderPrediction(p);
    showError("predict-error", null);
  } catch (err) {
    showError("predict-error", err);
  }
}

function renderPrediction(p) {
  $("prediction").hidden = false;
  $("consensus-class").textContent = p.class_name;
  $("consensus-probs").textContent = p.probabilities
    .map((v, i) => `${CLASS_NAMES[i] || i} ${(v * 100).toFixed(0)}%`).join(", ");
  $("consensus-answered").textContent = `${p.answered}/${p.asked} nodes answered, policy ${p.policy}`;
  $("request-id").textContent = p.request_id;
  const body = $("votes");
  body.replaceChildren();
  for (const v of p.votes) {
    const vote = v.status === "answered" ? (CLASS_NAMES[v.label] || v.label) : "—";
    body.append(el("tr", { "data-testid": "vote-row", dataset: { nodeId: v.node_id }, class: v.status },
      el("td", { title: v.address }, v.node_id),
      el("td", { title: v.error || "" }, v.status),
      el("td", { "data-testid": "vote-label" }, vote),
      el("td", {}, v.trust.toFixed(3)),
      el("td", {}, v.stake),
      el("td", { "data-testid": "vote-weight" }, v.weight.toFixed(3)),
      el("td", {}, `${v.latency_ms.toFixed(1)} ms`)));
  }
}

async function reportOutcome(label) {
  if (!lastRequestId) {
    showError("predict-error", new Error("Make a prediction first."));
    return;
  }
  try {
    const r = await api("POST", "/api/outcomes", { request_id: lastRequestId, true_label: label },
      bearer("oracle-token"));
    const scored = r.scores.map((s) =>
      `${s.node_id} ${s.correct ? "right" : "wrong"} (${s.stake_delta >= 0 ? "+" : ""}${s.stake_delta}${s.ejected ? ", ejected" : ""})`).join("; ");
    showMessage("outcome-result", r.already_reported
      ? "Already reported: nothing changed."
      : `Consensus was ${r.consensus_correct ? "right" : "wrong"}. ${scored}`);
    showError("predict-error", null);
    loadStakes();
  } catch (err) {
    showError("predict-error", err);
  }
}

// ------------------------------------------------------------------ stakes, ledger, chart

// node id -> [{seq, at, stake, trust}] in seq order, built from the ledger event stream.
const history = new Map();
let lastSeq = 0;

async function loadStakes() {
  try {
    const s = await api("GET", "/api/stakes");
    const body = $("accounts");
    body.replaceChildren();
    for (const a of s.accounts) {
      body.append(el("tr", { "data-testid": "account-row", dataset: { nodeId: a.node_id } },
        el("td", {}, a.node_id),
        el("td", { "data-testid": "account-stake" }, a.stake),
        el("td", { "data-testid": "account-trust" }, a.trust.toFixed(3)),
        el("td", {}, a.correct),
        el("td", {}, a.wrong),
        el("td", {}, a.ejected ? "ejected" : "active")));
    }
    recordAccuracy(s.accounts);
    const t = s.totals;
    $("totals").textContent =
      `staked ${t.staked} · minted ${t.minted} · burned ${t.burned} · deposited ${t.deposited} · withdrawn ${t.withdrawn} · ${t.events} events`;
    showError("stakes-error", null);
  } catch (err) {
    showError("stakes-error", err);
  }
}

let stakesTimer = null;
function loadStakesSoon() {
  clearTimeout(stakesTimer);
  stakesTimer = setTimeout(loadStakes, 300);
}

function onLedgerEvent(e) {
  if (e.seq <= lastSeq) return;
  lastSeq = e.seq;
  if (!history.has(e.node_id)) history.set(e.node_id, []);
  history.get(e.node_id).push({ seq: e.seq, at: e.at_unix_ms, stake: e.stake_after, trust: e.trust_after });
  const body = $("ledger-events");
  body.prepend(el("tr", { "data-testid": "ledger-row", dataset: { seq: String(e.seq) }, class: e.kind },
    el("td", {}, e.seq),
    el("td", {}, e.node_id),
    el("td", {}, e.kind),
    el("td", {}, e.amount),
    el("td", {}, e.stake_after),
    el("td", {}, e.trust_after.toFixed(3))));
  while (body.children.length > MAX_LEDGER_ROWS) body.lastChild.remove();
  scheduleChart();
  loadStakesSoon();
}

let chartPending = false;
function scheduleChart() {
  if (chartPending) return;
  chartPending = true;
  requestAnimationFrame(() => {
    chartPending = false;
    drawChart();
  });
}

// ------------------------------------------------------------------ SVG charts

const SVG_NS = "http://www.w3.org/2000/svg";
const PAGE_START = Date.now();
// Samples kept per time series (about five minutes at one sample a second).
const MAX_POINTS = 300;

function svgEl(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

// Axis ticks at a round step (1, 2 or 5 × 10^k, at least 1 for integers) covering
// [min, max]: every label differs from its neighbours, however narrow the range.
function niceScale(min, max, count, integer) {
  if (!(max > min)) max = min + (integer ? 1 : 0.1);
  let step = (max - min) / count;
  const magnitude = 10 ** Math.floor(Math.log10(step));
  const norm = step / magnitude;
  step = (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * magnitude;
  if (integer) step = Math.max(1, Math.round(step));
  const lo = Math.floor(min / step) * step;
  const hi = Math.max(lo + step, Math.ceil(max / step) * step);
  const decimals = integer ? 0 : Math.max(0, -Math.floor(Math.log10(step)));
  const ticks = [];
  for (let i = 0; lo + i * step <= hi + step / 1e6; i++) ticks.push(lo + i * step);
  return { lo, hi, ticks, label: (v) => v.toFixed(decimals) };
}

// Draws `series` ([{name, color, points: [{x, y}]}]) as lines on `svg`. Options: yMin /
// yMax (fixed range, else the data's), integer (whole-number axis), step (a value holds
// until the next point), caption(xMin, xMax) under the plot.
function drawLineChart(svg, series, opts = {}) {
  const box = svg.viewBox.baseVal;
  const W = box.width;
  const H = box.height;
  const pad = { left: 50, right: 10, top: 8, bottom: 20 };
  const xs = series.flatMap((s) => s.points.map((p) => p.x));
  const ys = series.flatMap((s) => s.points.map((p) => p.y));
  const xMin = xs.length ? Math.min(...xs) : 0;
  const xMax = xs.length ? Math.max(...xs, xMin + 1) : 1;
  const scale = niceScale(opts.yMin ?? (ys.length ? Math.min(...ys) : 0),
    opts.yMax ?? (ys.length ? Math.max(...ys) : 1), 4, opts.integer);
  const x = (v) => pad.left + ((v - xMin) / (xMax - xMin)) * (W - pad.left - pad.right);
  const y = (v) => pad.top + (1 - (v - scale.lo) / (scale.hi - scale.lo)) * (H - pad.top - pad.bottom);
  const parts = [];
  for (const t of scale.ticks) {
    parts.push(svgEl("line", { x1: pad.left, x2: W - pad.right, y1: y(t), y2: y(t), class: "grid" }));
    parts.push(svgEl("text", { x: pad.left - 6, y: y(t) + 4, "text-anchor": "end", class: "tick" }, scale.label(t)));
  }
  for (const s of series) {
    if (!s.points.length) continue;
    const coords = [];
    s.points.forEach((p, i) => {
      if (opts.step && i > 0) coords.push(`${x(p.x)},${y(s.points[i - 1].y)}`);
      coords.push(`${x(p.x)},${y(p.y)}`);
    });
    const last = s.points[s.points.length - 1];
    if (opts.step && last.x < xMax) coords.push(`${x(xMax)},${y(last.y)}`);
    parts.push(svgEl("polyline", { points: coords.join(" "), stroke: s.color, class: "series", "data-name": s.name }));
  }
  if (opts.caption) {
    parts.push(svgEl("text", { x: pad.left, y: H - 4, class: "tick" }, opts.caption(xMin, xMax)));
  }
  svg.replaceChildren(...parts);
}

// One colour per node, stable across the charts and the legend.
function nodeColor(node) {
  const nodes = [...new Set([...history.keys(), ...accuracy.keys()])].sort();
  return PALETTE[Math.max(0, nodes.indexOf(node)) % PALETTE.length];
}

function seconds(ms) {
  return (ms - PAGE_START) / 1000;
}

function timeCaption(xMin, xMax) {
  return `seconds since the page opened: ${Math.round(xMin)}…${Math.round(xMax)}`;
}

// node id -> [{x: seconds, y: share right}], from /api/stakes polls.
const accuracy = new Map();

function recordAccuracy(accounts) {
  const t = seconds(Date.now());
  for (const a of accounts) {
    const scored = a.correct + a.wrong;
    if (!scored) continue;
    if (!accuracy.has(a.node_id)) accuracy.set(a.node_id, []);
    const points = accuracy.get(a.node_id);
    points.push({ x: t, y: a.correct / scored });
    if (points.length > MAX_POINTS) points.shift();
  }
  scheduleChart();
}

// Stake and trust by ledger sequence (from the event stream), accuracy over time.
function drawChart() {
  const nodes = [...new Set([...history.keys(), ...accuracy.keys()])].sort();
  const bySeq = (value) => [...history.entries()].map(([node, points]) => ({
    name: node,
    color: nodeColor(node),
    points: points.map((p) => ({ x: p.seq, y: value(p) })),
  }));
  const seqCaption = (lo, hi) => `ledger sequence ${Math.round(lo)}…${Math.max(Math.round(hi), lastSeq)}`;
  drawLineChart($("stake-chart"), bySeq((p) => p.stake), { integer: true, step: true, caption: seqCaption });
  drawLineChart($("trust-chart"), bySeq((p) => p.trust), { yMin: 0, yMax: 1, step: true, caption: seqCaption });
  drawLineChart($("accuracy-chart"), [...accuracy.entries()].map(([node, points]) => ({
    name: node, color: nodeColor(node), points,
  })), { yMin: 0, yMax: 1, caption: timeCaption });
  $("chart-legend").replaceChildren(...nodes.map((node) =>
    el("span", { "data-testid": "legend-node", dataset: { nodeId: node } },
      el("i", { style: { background: nodeColor(node) } }), node)));
}

// Shop address -> [{x: seconds, y: lag entries}], and the term, from the cluster events.
const lagHistory = new Map();
const termHistory = [];
const shopRoles = new Map();

function recordFailover(c) {
  const t = seconds(Date.now());
  termHistory.push({ x: t, y: c.term });
  if (termHistory.length > MAX_POINTS) termHistory.shift();
  for (const s of c.shops) {
    if (!s.replication) continue;
    if (!lagHistory.has(s.address)) lagHistory.set(s.address, []);
    const points = lagHistory.get(s.address);
    points.push({ x: t, y: s.replication.lag_entries });
    if (points.length > MAX_POINTS) points.shift();
    shopRoles.set(s.address, s.replication.role);
  }
  const addresses = [...lagHistory.keys()].sort();
  const color = (a) => PALETTE[addresses.indexOf(a) % PALETTE.length];
  drawLineChart($("lag-chart"), addresses.map((a) => ({ name: a, color: color(a), points: lagHistory.get(a) })),
    { yMin: 0, integer: true, caption: timeCaption });
  drawLineChart($("term-chart"), [{ name: "term", color: "#111827", points: termHistory }],
    { integer: true, step: true, caption: timeCaption });
  $("failover-legend").replaceChildren(...addresses.map((a) =>
    el("span", { "data-testid": "failover-legend-shop", dataset: { address: a } },
      el("i", { style: { background: color(a) } }), `${a} (${shopRoles.get(a) || "?"})`),
  ), el("span", {}, el("i", { style: { background: "#111827" } }), "term"));
}

async function verifyLedger() {
  try {
    const v = await api("GET", "/api/ledger/verify");
    $("ledger-verify-result").textContent = v.ok
      ? `OK: ${v.events_checked} events, head ${v.head_hash.slice(0, 12)}…`
      : `BROKEN at #${v.first_bad_seq}: ${v.problem}`;
    $("ledger-verify-result").className = v.ok ? "ok" : "error";
    showError("ledger-error", null);
  } catch (err) {
    showError("ledger-error", err);
  }
}

// ------------------------------------------------------------------ cluster

// "service address" -> instance, for every instance ever seen, so dead ones show as down.
const seenInstances = new Map();

function renderCluster(c) {
  $("registry-address").textContent = c.registry.address;
  const reg = $("registry-status");
  reg.textContent = c.registry.up ? "up" : `down: ${c.registry.error || "unreachable"}`;
  reg.className = `pill ${c.registry.up ? "up" : "down"}`;
  $("cluster-primary").textContent = c.primary || "none";
  $("cluster-term").textContent = String(c.term);
  lastCluster = c;

  const live = new Set();
  for (const i of c.instances) {
    const key = `${i.service} ${i.address}`;
    live.add(key);
    seenInstances.set(key, i);
  }
  const body = $("cluster-instances");
  body.replaceChildren();
  const keys = [...seenInstances.keys()].sort();
  for (const key of keys) {
    const i = seenInstances.get(key);
    const up = live.has(key);
    const labels = Object.entries(i.metadata || {}).sort().map(([k, v]) => `${k}=${v}`).join(" ");
    const primary = i.service === "shop" && i.address === c.primary;
    body.append(el("tr", {
      "data-testid": "instance-row",
      dataset: { service: i.service, address: i.address, state: up ? "up" : "down" },
      class: up ? (primary ? "primary" : "") : "gone",
    },
      el("td", {}, i.service),
      el("td", {}, i.address),
      el("td", { "data-testid": "instance-state" }, up ? (primary ? "up · primary" : "up") : "down"),
      // One chip per label, wrapping anywhere: long values (addresses, ids) stay readable.
      el("td", { class: "muted labels", title: labels },
        ...Object.entries(i.metadata || {}).sort().map(([k, v]) => el("span", { class: "label" }, `${k}=${v}`)))));
  }

  const shops = $("shop-status");
  shops.replaceChildren();
  for (const s of c.shops) {
    const r = s.replication;
    // Prefer what the process says about itself; fall back to what it registered.
    const role = r ? r.role : s.registered_role || "?";
    const term = String(r ? r.term : s.registered_term);
    shops.append(el("tr", {
      "data-testid": "shop-row",
      dataset: { address: s.address, role, term },
      class: role === "primary" ? "primary" : "",
    },
      el("td", {}, s.address),
      el("td", { "data-testid": "shop-role" }, role),
      el("td", { "data-testid": "shop-term" }, term),
      el("td", {}, r ? r.mode : "—"),
      el("td", {}, r ? r.last_lsn : "—"),
      el("td", { "data-testid": "shop-lag" }, shopLag(r)),
      el("td", { title: s.error || "" }, r ? (r.peer_connected ? "connected" : "disconnected") : `unreachable: ${s.error || ""}`)));
  }
  if (c.shops.length === 0) {
    shops.append(el("tr", {}, el("td", { colspan: "7", class: "muted" }, "No shop registered.")));
  }
  recordFailover(c);
  renderChildren();
}

// What the lag column says: a primary with no replica connected has nothing to lag
// behind, so its unacknowledged entries are shown as waiting for a replica instead.
function shopLag(r) {
  if (!r) return "—";
  if (r.mode === "none") return "no replica";
  if (r.role === "primary" && !r.peer_connected) {
    return r.lag_entries > 0 ? `no replica connected (${r.lag_entries} entries waiting)` : "no replica connected";
  }
  return `${r.lag_entries} entries / ${r.lag_ms} ms`;
}

// ------------------------------------------------------------------ live controls
//
// `concord up`'s supervisor, through the gateway (/api/admin/cluster, admin token):
// kill, freeze/thaw, stop/start a process, turn a node liar and back.

let lastCluster = null;
let children = [];
let childrenShown = "";

async function loadChildren() {
  if (!$("admin-token").value.trim()) return;
  try {
    const reply = await api("GET", "/api/admin/cluster", undefined, bearer("admin-token"));
    children = reply.children;
    renderChildren();
    showError("control-error", null);
  } catch (err) {
    showError("control-error", err);
  }
}

function primaryChild() {
  const primary = lastCluster && lastCluster.primary;
  return children.find((c) => c.role === "shop" && c.addr === primary);
}

function renderChildren() {
  const primary = primaryChild();
  // Re-render only on a change: a button being clicked must not be replaced under the pointer.
  const shown = JSON.stringify([children, primary && primary.name]);
  if (shown === childrenShown) return;
  childrenShown = shown;
  const body = $("children");
  body.replaceChildren();
  for (const c of children) {
    const actions = el("td", { class: "actions" });
    const button = (action, label, cls, bodyJson) => actions.append(el("button", {
      class: cls, type: "button", "data-testid": "child-action", dataset: { action },
      onclick: () => control(c.name, action, bodyJson),
    }, label));
    const alive = c.state === "running" || c.state === "starting";
    if (alive || c.state === "frozen") button("kill", "kill", "danger");
    if (alive) button("freeze", "freeze", "secondary");
    if (c.state === "frozen") button("thaw", "thaw", "secondary");
    if (c.state === "stopped" || c.state === "errored") button("start", "start", "secondary");
    else button("stop", "stop", "secondary");
    if (c.role === "node") {
      if (c.behaviour === "honest") button("liar", "make liar", "danger", { behaviour: "inverted" });
      else button("honest", "make honest", "secondary", { behaviour: "honest" });
    }
    const isPrimary = primary && primary.name === c.name;
    body.append(el("tr", {
      "data-testid": "child-row",
      dataset: { name: c.name, role: c.role, state: c.state, behaviour: c.behaviour || "", restarts: String(c.restarts) },
      class: `${c.state}${isPrimary ? " primary" : ""}`,
    },
      el("td", { title: c.addr || "" }, c.name, el("span", { class: "muted" }, ` ${c.role}${isPrimary ? " · primary" : ""}`)),
      el("td", { "data-testid": "child-state" }, c.state),
      el("td", {}, c.pid ?? "—"),
      el("td", { "data-testid": "child-restarts" }, c.restarts),
      el("td", { "data-testid": "child-behaviour" }, c.behaviour || ""),
      actions));
  }
}

async function control(name, action, body) {
  showMessage("control-result", "");
  const verb = body ? "behaviour" : action;
  try {
    const c = await api("POST", `/api/admin/cluster/${encodeURIComponent(name)}/${verb}`, body,
      bearer("admin-token"));
    showMessage("control-result", `${name}: ${body ? `behaviour ${c.behaviour}` : action} done (now ${c.state}).`);
    showError("control-error", null);
  } catch (err) {
    showError("control-error", err);
  }
  loadChildren();
}

function controlPrimary(action) {
  const primary = primaryChild();
  if (!primary) {
    showError("control-error", new Error(children.length
      ? "No shop primary is known right now (failover in progress?)."
      : "Enter the admin token first: the process list comes from the supervisor."));
    return;
  }
  control(primary.name, action);
}

// Known iris samples and their true classes, for scored traffic.
const SAMPLES = [
  [[5.1, 3.5, 1.4, 0.2], 0],
  [[7.0, 3.2, 4.7, 1.4], 1],
  [[6.3, 3.3, 6.0, 2.5], 2],
  [[4.9, 3.0, 1.4, 0.2], 0],
  [[6.4, 3.2, 4.5, 1.5], 1],
  [[5.8, 2.7, 5.1, 1.9], 2],
];
let trafficTimer = null;
let trafficStats = { sent: 0, scored: 0, failed: 0 };

async function trafficTick() {
  const [features, label] = SAMPLES[trafficStats.sent % SAMPLES.length];
  trafficStats.sent += 1;
  try {
    const [sepal_length, sepal_width, petal_length, petal_width] = features;
    const p = await api("POST", "/api/predict",
      { sepal_length, sepal_width, petal_length, petal_width, policy: "stake" });
    await api("POST", "/api/outcomes", { request_id: p.request_id, true_label: label },
      bearer("oracle-token"));
    trafficStats.scored += 1;
  } catch (err) {
    trafficStats.failed += 1;
    $("traffic-status").title = err.message;
  }
  const s = trafficStats;
  $("traffic-status").textContent = `${s.scored} scored, ${s.failed} failed`;
}

function toggleTraffic() {
  clearInterval(trafficTimer);
  trafficTimer = $("traffic").checked ? setInterval(trafficTick, 1000) : null;
}

// ------------------------------------------------------------------ live events

function connectEvents() {
  const status = $("live-status");
  const source = new EventSource(`/api/events?after_seq=${lastSeq}`);
  source.addEventListener("open", () => {
    status.textContent = "live";
    status.className = "pill up";
  });
  source.addEventListener("error", () => {
    status.textContent = "reconnecting…";
    status.className = "pill down";
  });
  source.addEventListener("cluster", (e) => {
    try {
      renderCluster(JSON.parse(e.data));
    } catch (err) {
      console.warn("bad cluster event", err);
    }
  });
  source.addEventListener("ledger", (e) => {
    try {
      onLedgerEvent(JSON.parse(e.data));
    } catch (err) {
      console.warn("bad ledger event", err);
    }
  });
}

// ------------------------------------------------------------------ wiring

function refreshUser() {
  loadCart();
  loadOrders();
}

document.addEventListener("DOMContentLoaded", () => {
  $("product-search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    loadProducts();
  });
  $("account-form").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn("in");
  });
  $("sign-up").addEventListener("click", () => signIn("up"));
  $("sign-out").addEventListener("click", signOut);
  $("checkout").addEventListener("click", checkout);
  $("cart-clear").addEventListener("click", () => cartWrite("DELETE", ""));
  $("pf-create").addEventListener("click", () => adminAction("create"));
  $("pf-update").addEventListener("click", () => adminAction("update"));
  $("pf-delete").addEventListener("click", () => adminAction("delete"));
  $("predict-form").addEventListener("submit", predict);
  for (const button of document.querySelectorAll("[data-testid=report-label]")) {
    button.addEventListener("click", () => reportOutcome(Number(button.dataset.label)));
  }
  $("ledger-verify").addEventListener("click", verifyLedger);
  $("kill-primary").addEventListener("click", () => controlPrimary("kill"));
  $("freeze-primary").addEventListener("click", () => controlPrimary("freeze"));
  $("traffic").addEventListener("change", toggleTraffic);
  $("admin-token").addEventListener("change", loadChildren);
  setInterval(loadChildren, 1000);
  setInterval(loadStakes, 2000);
  loadProducts();
  loadAccount();
  loadStakes();
  drawChart();
  connectEvents();
});
