// What every view shares: the API client (the key from sessionStorage), DOM building (text
// only, never innerHTML: every string shown is the server's), number formats and SVG charts.
"use strict";

const KEY = "aruntime.console.key";
const SVG = "http://www.w3.org/2000/svg";

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || error.type || "";
  }
}

export const session = {
  key: () => sessionStorage.getItem(KEY),
  signIn: (key) => sessionStorage.setItem(KEY, key),
  signOut: () => sessionStorage.removeItem(KEY),
};

export async function api(path, body) {
  const headers = { Accept: "application/json" };
  const key = session.key();
  if (key) headers.Authorization = `Bearer ${key}`;
  const init = { headers, cache: "no-store" };
  if (body !== undefined) {
    init.method = "POST";
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, data.error || {});
  return data;
}

// A view asks for a poll now (after an action) without knowing who polls.
export const refresh = () => document.dispatchEvent(new Event("console:refresh"));

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "testid") node.dataset.testid = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

export const $ = (testid, root = document) => root.querySelector(`[data-testid="${testid}"]`);

// Redraw only what changed: an unchanged poll leaves the DOM (and a button being clicked) alone.
const drawn = new Map();
export function draw(node, data, render) {
  const text = JSON.stringify(data);
  if (drawn.get(node) === text) return;
  drawn.set(node, text);
  node.replaceChildren(...[render(data)].flat().filter(Boolean));
}

// Signed out: nothing drawn for the last principal stays on the page.
export function forget() {
  for (const node of drawn.keys()) node.replaceChildren();
  drawn.clear();
  for (const node of document.querySelectorAll("[data-testid=app] .result")) node.hidden = true;
}

// A table row: cells are text, nodes, or [value, "num"] for a right-aligned number.
export function row(attrs, cells) {
  return el("tr", attrs, cells.map((c) => Array.isArray(c)
    ? el("td", { class: c[1] }, c[0]) : el("td", {}, c)));
}

export const empty = (cols, text) => el("tr", { class: "empty" },
  el("td", { colspan: cols }, text));

export const dash = (v, f = String) => (v === null || v === undefined ? "—" : f(v));
export const fixed = (n, d = 0) => Number(n).toLocaleString(undefined,
  { minimumFractionDigits: d, maximumFractionDigits: d });
export const ms = (s) => dash(s, (v) => `${fixed(v * 1000, 1)} ms`);
export const pct = (f) => dash(f, (v) => `${fixed(v * 100, 1)}%`);
// times in UTC with Z, as everywhere in ARuntime: HH:MM:SSZ today, the date before it otherwise
const utc = (d) => d.toISOString().replace(/\.\d+Z$/, "Z");
export const clock = (unix) => dash(unix, (v) => utc(new Date(v * 1000)).slice(11));
export const stamp = (iso) => dash(iso, (v) => utc(new Date(v)).replace("T", " "));
export function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  for (; n >= 1024 && i < units.length - 1; i++) n /= 1024;
  return `${fixed(n, i ? 1 : 0)} ${units[i]}`;
}
// A digest in short, the whole of it on hover; `full` shows it all (what a person approves).
export const digest = (d, full = false) => dash(d, (v) => el("code",
  { class: full ? "digest full" : "digest", title: v }, full ? v : `${v.slice(0, 15)}…`));
export const badge = (text, kind = text) => el("span", { class: `badge ${kind}` }, text);

export function quantile(values, q) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  node.append(...children);
  return node;
}

const W = 480, H = 170, L = 56, R = 10, T = 10, B = 24;

function frame(testid, yMax, yText, xLeft, xRight) {
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
    "data-testid": testid });
  root.append(
    svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }),
    svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }),
    svg("line", { x1: L, y1: T, x2: W - R, y2: T, class: "grid" }),
    svg("text", { x: L - 4, y: T + 4, "text-anchor": "end" }, yText(yMax)),
    svg("text", { x: L - 4, y: H - B, "text-anchor": "end" }, yText(0)),
    svg("text", { x: L, y: H - 6 }, xLeft),
    svg("text", { x: W - R, y: H - 6, "text-anchor": "end" }, xRight));
  return root;
}

// Points {x: unix seconds, y} over time, scaled to the data's own range.
export function lineChart(testid, points, yText) {
  const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), yMax = Math.max(...ys, 0) * 1.1 || 1;
  const root = frame(testid, yMax, yText, clock(points.length ? x0 : null),
    clock(points.length ? x1 : null));
  root.dataset.points = String(points.length);
  const px = (x) => L + (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5) * (W - L - R);
  const py = (y) => H - B - (y / yMax) * (H - T - B);
  const coords = points.map((p) => `${px(p.x).toFixed(1)},${py(p.y).toFixed(1)}`);
  root.append(svg("polyline", { points: coords.join(" "), class: "line" }));
  if (points.length <= 200) {
    points.forEach((p) => root.append(svg("circle", { cx: px(p.x), cy: py(p.y), r: 2.5,
      class: "dot" }, svg("title", {}, `${clock(p.x)}: ${yText(p.y)}`))));
  }
  return root;
}

// How many values fall in each of `bins` equal ranges from 0 to the largest.
export function histogram(testid, values, xText, bins = 16) {
  const top = Math.max(...values, 0) || 1;
  const counts = new Array(bins).fill(0);
  values.forEach((v) => counts[Math.min(bins - 1, Math.floor((v / top) * bins))]++);
  const most = Math.max(...counts, 1);
  const root = frame(testid, most, (n) => fixed(n), xText(0), xText(top));
  root.dataset.values = String(values.length);
  const w = (W - L - R) / bins;
  counts.forEach((n, i) => {
    const h = (n / most) * (H - T - B);
    root.append(svg("rect", { x: L + i * w + 1, y: H - B - h, width: w - 2, height: h,
      class: "bar", "data-testid": "hist-bar" },
    svg("title", {}, `${xText((i * top) / bins)}–${xText(((i + 1) * top) / bins)}: ${n}`)));
  });
  return root;
}
