// The console's entry: sign-in, tabs, one poll a second of what the visible view needs (a tick
// is skipped while the last poll is still in flight, so polls never pile up), and the views
// that watch: cluster, traffic, policy, evidence & claims. Each view has `poll()`, which fetches
// what it shows and draws it; runs and rollouts, which act, are in actions.js.
"use strict";

import {
  $, ApiError, api, badge, bytes, clock, dash, digest, draw, el, empty, fixed, forget,
  histogram, lineChart, ms, pct, quantile, refresh, row, session,
} from "./ui.js";
import { rollouts, runs } from "./actions.js";

function tiers(engine) {
  if (!engine || !engine.tiers.length) return "—";
  return el("ul", { class: "tiers" }, engine.tiers.map((t) => el("li", {},
    `${t.tier}: ${pct(t.hit_rate)} hit (${fixed(t.hits)}/${fixed(t.hits + t.misses)}), `
    + `${fixed(t.evictions)} evicted, ${bytes(t.stored_bytes)}`)));
}

function workerRow(w) {
  const e = w.engine;
  const blocks = e ? el("span", {}, `${fixed(e.device_blocks_used)} / ${fixed(e.device_blocks)}`,
    el("meter", { min: 0, max: e.device_blocks, value: e.device_blocks_used })) : "—";
  return row({ testid: "worker-row", "data-worker-id": w.worker_id, "data-role": w.role }, [
    w.worker_id, w.role, w.placement, [dash(w.pid), "num"],
    badge(w.alive ? "alive" : "down", w.alive ? "ok" : "bad"),
    [fixed(w.load.running), "num"], [fixed(w.load.queued_requests), "num"],
    [fixed(w.load.queued_prefill_tokens), "num"],
    [e ? `${fixed(e.running)} / ${fixed(e.waiting)}` : "—", "num"], [blocks, "num"],
    [pct(e?.kv_usage), "num"], [pct(e?.prefix_hit_rate), "num"],
    [e ? fixed(e.rank_restarts) : "—", "num"], tiers(e)]);
}

const cluster = {
  async poll() {
    const c = await api("/v1/console/cluster");
    draw($("cluster-summary"), c, () => [
      el("div", {}, el("b", {}, "Model "), c.model), el("div", {}, el("b", {}, "Revision "),
        digest(c.revision)), el("div", {}, el("b", {}, "Router "), dash(c.router_policy)),
      el("div", {}, el("b", {}, "Workers "), String(c.workers.length))]);
    const workers = [...c.workers].sort((a, b) => a.role.localeCompare(b.role)
      || a.worker_id.localeCompare(b.worker_id));
    draw($("workers-body"), workers, (ws) => ws.length ? ws.map(workerRow)
      : empty(13, "no workers"));
    draw($("routes-body"), c.routes, (rs) => rs.length ? [...rs].reverse().map((r) => row(
      { testid: "route-row", "data-request-id": r.request_id }, [clock(r.at), r.request_id,
        r.worker, [fixed(r.predicted_cached_tokens), "num"],
        [dash(r.cached_tokens_used, fixed), "num"], [fixed(r.attempts), "num"]]))
      : empty(6, "no requests routed yet"));
  },
};

// The traffic window, kept here across polls: each poll asks for what ended since a little
// before the last one (a request may be recorded just after the server's `now`), by id.
const seen = new Map();
const OVERLAP_S = 5;
let since = 0;
const METRICS = [["ttft_s", "Time to first token"], ["tpot_s", "Time per output token"],
  ["e2e_s", "End to end"]];

function options(select, values, all) {
  const want = [all, ...[...values].sort()];
  const have = [...select.options].map((o) => o.value || all);
  if (want.join("\n") === have.join("\n")) return;
  const chosen = select.value;
  select.replaceChildren(...want.map((v, i) => el("option", { value: i ? v : "" }, v)));
  select.value = want.includes(chosen) ? chosen : "";
}

function drawCharts(shown) {
  draw($("traffic-charts"), shown.map((r) => [r.at, r.ttft_s, r.tpot_s, r.e2e_s]), () =>
    METRICS.map(([key, title]) => {
      const points = shown.filter((r) => r[key] !== null).map((r) => ({ x: r.at, y: r[key] }));
      const values = points.map((p) => p.y);
      return el("div", { class: "card chart-card", testid: `metric-${key}` },
        el("h3", {}, title), el("p", { class: "stats" },
          `n ${values.length} · p50 ${ms(quantile(values, 0.5))} · `
          + `p95 ${ms(quantile(values, 0.95))} · max ${ms(quantile(values, 1))}`),
        lineChart(`chart-${key}-line`, points, ms), histogram(`chart-${key}-hist`, values, ms));
    }));
}

const traffic = {
  reset() {
    seen.clear();
    since = 0;
  },
  setup() {
    for (const id of ["filter-model", "filter-tenant"]) {
      $(id).addEventListener("change", () => this.render());
    }
  },
  async poll() {
    const t = await api(`/v1/console/traffic?since=${Math.max(0, since - OVERLAP_S)}`);
    since = t.now;
    for (const r of t.requests) seen.set(r.request_id, r);
    for (const old of [...seen.keys()].slice(0, Math.max(0, seen.size - 2000))) seen.delete(old);
    draw($("live-body"), t.live, (live) => live.length ? live.map((r) => row(
      { testid: "live-row", "data-request-id": r.request_id }, [r.request_id, r.model,
        r.tenant, [`${fixed(r.age_s, 1)} s`, "num"], [fixed(r.tokens), "num"]]))
      : empty(5, "nothing running now"));
    this.render();
  },
  render() {
    const all = [...seen.values()];
    options($("filter-model"), new Set(all.map((r) => r.model)), "all models");
    options($("filter-tenant"), new Set(all.map((r) => r.tenant)), "all tenants");
    const model = $("filter-model").value, tenant = $("filter-tenant").value;
    const shown = all.filter((r) => (!model || r.model === model)
      && (!tenant || r.tenant === tenant)).sort((a, b) => a.at - b.at);
    drawCharts(shown);
    draw($("requests-body"), shown.slice(-50).reverse(), (rs) => rs.length ? rs.map((r) => row(
      { testid: "traffic-request-row", "data-request-id": r.request_id,
        "data-response-id": r.response_id, "data-tenant": r.tenant },
      [clock(r.at), r.request_id, r.model, r.tenant, r.finish_reason, [fixed(r.tokens), "num"],
        [ms(r.ttft_s), "num"], [ms(r.tpot_s), "num"], [ms(r.e2e_s), "num"]]))
      : empty(9, "no requests in the window"));
  },
};

// the console's own reads (decided `via` "console"): one a second while it is open, which
// would hide the rest

const policy = {
  setup() {
    for (const id of ["denials-only", "hide-console"]) $(id).addEventListener("change", refresh);
  },
  async poll() {
    const p = await api("/v1/console/policy");
    draw($("policy-summary"), [p.version, p.signature, p.mode], () => [
      el("div", { testid: "policy-version" }, el("b", {}, "Version "), digest(p.version, true)),
      el("div", {}, el("b", {}, "Signature "), digest(p.signature)),
      el("div", {}, el("b", {}, "Mode "), badge(p.mode, p.mode === "enforce" ? "ok" : "warn"))]);
    const rules = Object.entries(p.denials_by_rule).sort((a, b) => b[1] - a[1]);
    draw($("denials-body"), rules, () => rules.length ? rules.map(([rule, n]) => row(
      { testid: "denial-row", "data-rule": rule }, [rule, [fixed(n), "num"]]))
      : empty(2, "no denials"));
    const only = $("denials-only").checked, polls = $("hide-console").checked;
    const shown = p.decisions.filter((d) => (!only || d.decision !== "allow")
      && !(polls && d.via === "console" && d.decision === "allow"));
    draw($("decisions-body"), shown.reverse().slice(0, 50), (ds) => ds.length ? ds.map((d) => row(
      { testid: "decision-row", "data-decision": d.decision }, [clock(d.at), d.principal,
        d.tenant, d.via, d.action, el("code", {}, d.resource),
        badge(d.decision, d.decision === "allow" ? "ok" : "bad"), d.enforced ? "yes" : "no",
        (d.reasons || []).join(", ")]))
      : empty(9, "no decisions yet"));
  },
};

function verified(kind, label, v) {
  const result = $(`verify-${kind}-result`);
  result.hidden = false;
  result.replaceChildren(el("h3", {}, label, " ", badge(v.ok ? "verified" : "failed",
    v.ok ? "ok" : "bad")), el("div", {}, `${fixed(v.records)} records`,
    v.signed === undefined ? "" : `, ${fixed(v.signed)} signed`),
  v.head ? el("div", {}, "head ", digest(v.head, true)) : "",
  v.errors?.length ? el("ul", { class: "errors" }, v.errors.map((e) => el("li", {}, e))) : "");
  result.dataset.ok = String(v.ok);
}

async function verify(kind, label, call) {
  try {
    verified(kind, label, await call());
  } catch (err) {
    verified(kind, label, { ok: false, records: 0, errors: [err.message] });
  }
}

const evidence = {
  setup() {
    for (const log of ["requests", "decisions"]) {
      $(`verify-${log}`).addEventListener("click", () => verify(log, `The ${log} log`,
        () => api("/v1/console/verify", { log })));
    }
    $("verify-run-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const id = $("verify-run-id").value.trim();
      if (id) verify("run", `Run ${id}`, () => api(`/v1/runs/${encodeURIComponent(id)}/verify`));
    });
  },
  async poll() {
    const c = await api("/v1/console/claims");
    const error = $("claims-error");
    error.hidden = !c.error;
    error.textContent = c.error || "";
    draw($("claims-body"), c.claims, (cs) => cs.length ? cs.map((k) => row(
      { testid: "claim-row", "data-claim-id": k.id }, [el("code", {}, k.id), k.statement,
        badge(k.status, k.status === "active" ? "ok" : "warn"), k.metric,
        [`${dash(k.value)} ${k.unit || ""}`, "num"], dash(k.review_by, (v) => v.slice(0, 10))]))
      : empty(6, "no claims"));
    draw($("due-body"), c.due, (ds) => ds.length ? ds.map((d) => row(
      { testid: "due-row", "data-claim-id": d.id }, [el("code", {}, d.id), d.why]))
      : empty(2, "nothing due for review"));
  },
};

const VIEWS = { cluster, traffic, runs, rollouts, policy, evidence };

const POLL_MS = 1000;
let current = null;
let inFlight = false;
let signedIn = false;

function refusal(err) {
  if (err instanceof ApiError) {
    const verdict = err.status === 401 || err.status === 403 ? "Refused" : "Failed";
    return `${verdict} (${err.status}${err.code ? ` ${err.code}` : ""}): ${err.message}`;
  }
  return `Failed: ${err.message}`;
}

function show(signed) {
  signedIn = signed;
  $("login").hidden = signed;
  $("app").hidden = !signed;
  $("tabs").hidden = !signed;
  $("logout").hidden = !signed;
  if (!signed) $("whoami").textContent = "";
}

async function signIn(key) {
  session.signIn(key);
  try {
    const me = await api("/v1/console/me");
    $("login-error").hidden = true;
    $("whoami").textContent = `${me.principal} · ${me.tenant} · ${me.roles.join(", ")}`;
    show(true);
    open(current || location.hash.slice(1));
  } catch (err) {
    signOut(refusal(err));
  }
}

function signOut(message) {
  session.signOut();
  show(false);
  forget();
  for (const view of Object.values(VIEWS)) view.reset?.();
  const error = $("login-error");
  error.textContent = message || "";
  error.hidden = !message;
}

function open(name) {
  current = name in VIEWS ? name : "cluster";
  if (location.hash !== `#${current}`) history.replaceState(null, "", `#${current}`);
  for (const button of document.querySelectorAll("[data-view-tab]")) {
    button.setAttribute("aria-selected", String(button.dataset.viewTab === current));
  }
  for (const section of document.querySelectorAll("[data-view]")) {
    section.hidden = section.dataset.view !== current;
  }
  poll();
}

async function poll() {
  if (inFlight || !signedIn) return;
  inFlight = true;
  const status = $("poll-status");
  try {
    await VIEWS[current].poll();
    status.textContent = `Live · updated ${clock(Date.now() / 1000)}`;
    status.classList.remove("bad");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) signOut(refusal(err));
    status.textContent = refusal(err);
    status.classList.add("bad");
  } finally {
    inFlight = false;
  }
}

function start() {
  for (const view of Object.values(VIEWS)) view.setup?.();
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("login-key").value.trim());
  });
  $("logout").addEventListener("click", () => signOut(""));
  for (const button of document.querySelectorAll("[data-view-tab]")) {
    button.addEventListener("click", () => open(button.dataset.viewTab));
  }
  document.addEventListener("console:refresh", () => poll());
  setInterval(poll, POLL_MS);
  const key = session.key();
  if (key === null) show(false);
  else signIn(key);
}

start();
