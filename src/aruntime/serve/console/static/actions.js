// The views that act: runs (a person's answers to waiting calls) and rollouts (approve, abort,
// promote; what served when). Each action goes through that thing's own API, decided there by
// its own permission; its answer is shown as the server gave it.
"use strict";

import {
  $, api, badge, dash, digest, draw, el, empty, fixed, refresh, row, stamp,
} from "./ui.js";

const enc = encodeURIComponent;

// Run `call` for a clicked button and show its answer (or the error) in `out`.
async function act(button, out, label, call) {
  button.disabled = true;
  out.hidden = false;
  out.className = "result";
  out.textContent = `${label}…`;
  try {
    const answer = await call();
    out.textContent = `${label}: ${describe(answer)}`;
    out.classList.add("ok");
  } catch (err) {
    out.textContent = `${label} refused: ${err.message}`;
    out.classList.add("bad");
  } finally {
    button.disabled = false;
    refresh();
  }
}

function describe(a) {
  const parts = [a.status && `status ${a.status}`, a.waiting, a.error,
    a.result !== undefined && a.result !== null && `result ${JSON.stringify(a.result)}`,
    a.weight !== undefined && `candidate weight ${a.weight}%`];
  return parts.filter(Boolean).join(" · ") || JSON.stringify(a);
}

// What a waiting run waits for, from its journal: a person's approval of a payload (bound to
// its digest), a person's input (fitting a schema), or a tool call awaiting approval.
function pending(run) {
  const calls = [];
  for (const e of run.entries || []) {
    const d = typeof e.detail === "object" && e.detail ? e.detail : {};  // erased: a tombstone
    if (e.kind === "wait" && e.state === "waiting") {
      calls.push({ run, seq: e.seq, what: d.kind, name: e.name, digest: d.approves,
        schema: d.schema, deadline: d.deadline });
    } else if (e.kind === "tool" && e.state === "intent" && d.needs_approval) {
      calls.push({ run, seq: e.seq, what: "tool", name: e.name, digest: e.arg_digest });
    }
  }
  return calls;
}

function answer(c, path, body) {
  return () => api(`/v1/runs/${enc(c.run.run_id)}/calls/${c.seq}/${path}`, body);
}

function buttons(c, out) {
  const label = `Run ${c.run.run_id} call ${c.seq}`;
  const button = (testid, text, call, cls = "") => el("button", { testid, class: cls,
    onclick: (ev) => act(ev.currentTarget, out, `${label}: ${text}`, call) }, text);
  if (c.what === "approval") {
    return [button("approve-button", "Approve", answer(c, "respond",
      { answer: { approved: true }, digest: c.digest }), "primary"),
    button("reject-button", "Reject", answer(c, "respond",
      { answer: { approved: false }, digest: c.digest }), "danger")];
  }
  if (c.what === "tool") {
    return [button("approve-button", "Approve", answer(c, "approve", { digest: c.digest }),
      "primary"), button("reject-button", "Reject", answer(c, "reject",
      { reason: "rejected in the console" }), "danger")];
  }
  const text = el("textarea", { testid: "respond-input", rows: 2, placeholder: "answer (JSON)" });
  return [text, button("respond-button", "Respond", () => {
    let parsed;
    try { parsed = JSON.parse(text.value); } catch (err) {
      return Promise.reject(new Error(`not JSON: ${err.message}`));
    }
    return answer(c, "respond", { answer: parsed })();
  }, "primary")];
}

function pendingCard(c) {
  const what = { approval: "a person's approval", input: "a person's input",
    tool: `approval of tool call ${c.name}` }[c.what] || c.what;
  return el("div", { class: "pending", testid: "pending-call", "data-run-id": c.run.run_id,
    "data-seq": c.seq, "data-what": c.what },
  el("div", {}, el("b", {}, `Run ${c.run.run_id}`), ` (${c.run.flow}) · call ${c.seq} waits for `,
    what, c.deadline ? ` until ${stamp(c.deadline)}` : ""),
  c.digest ? el("div", {}, "approves exactly ", el("span", { testid: "approval-digest" },
    digest(c.digest, true))) : "",
  c.schema ? el("pre", {}, JSON.stringify(c.schema)) : "",
  el("div", { class: "actions" }, buttons(c, $("run-action-result"))));
}

let chosen = null;

function entriesTable(run) {
  return el("table", {}, el("thead", {}, el("tr", {}, ["seq", "kind", "name", "state", "digest",
    "updated"].map((h) => el("th", {}, h)))), el("tbody", {}, run.entries.map((e) => row(
    { testid: "run-entry" }, [[e.seq, "num"], e.kind, e.name, badge(e.state),
      digest(e.arg_digest), stamp(e.updated_at)]))));
}

// A waiting run's journal, fetched again only when the listing says the run changed: every
// read of a run is a decision the server logs, and a waiting run changes only by an answer.
const journals = new Map();
const LISTED = 100;

async function journal(listed) {
  const have = journals.get(listed.run_id);
  if (have && have.updated_at === listed.updated_at && have.status === listed.status) return have;
  const run = await api(`/v1/runs/${enc(listed.run_id)}`);
  journals.set(listed.run_id, run);
  return run;
}

export const runs = {
  reset() {
    journals.clear();
    chosen = null;
  },
  setup() { $("runs-status").addEventListener("change", () => refresh()); },
  async poll() {
    const status = $("runs-status").value;
    const listed = await api(`/v1/runs?limit=${LISTED}${status ? `&status=${enc(status)}` : ""}`);
    // the listing has every waiting run when it has them all; else ask for those
    const whole = status === "waiting" || (!status && listed.data.length < LISTED);
    const waiting = whole ? listed : await api("/v1/runs?status=waiting&limit=20");
    const open = waiting.data.filter((r) => r.status === "waiting").slice(0, 20);
    for (const id of journals.keys()) {
      if (!open.some((r) => r.run_id === id)) journals.delete(id);
    }
    const shown = await Promise.all(open.map(journal));
    if (chosen && !shown.some((r) => r.run_id === chosen)) {
      shown.push(await api(`/v1/runs/${enc(chosen)}`));  // not waiting: it may be moving
    }
    const calls = shown.filter((r) => r.status === "waiting").flatMap(pending);
    draw($("pending-list"), calls.map((c) => [c.run.run_id, c.seq, c.digest]), () =>
      calls.length ? calls.map(pendingCard) : el("p", { class: "muted" }, "Nothing waits."));
    draw($("runs-body"), [listed.data, chosen], () => listed.data.length
      ? listed.data.map((r) => row({ testid: "run-row", "data-run-id": r.run_id,
        "data-status": r.status, class: r.run_id === chosen ? "chosen" : "clickable",
        onclick: () => { chosen = r.run_id; refresh(); } },
      [el("code", {}, r.run_id), r.flow, badge(r.status), stamp(r.created_at),
        stamp(r.updated_at)])) : empty(5, "no runs"));
    const detail = shown.find((r) => r.run_id === chosen);
    draw($("run-detail"), detail || null, (d) => d ? [el("h3", {}, `Run ${d.run_id} `,
      badge(d.status)), el("p", {}, d.flow, d.error ? ` · ${d.error}` : "",
      d.result !== null ? ` · result ${JSON.stringify(d.result)}` : ""), entriesTable(d)]
      : el("p", { class: "muted" }, "Choose a run to see its journal."));
  },
};

const ACTIVE = ["progressing", "paused", "awaiting-approval"];

function weights(traffic) {
  if (!traffic) return "—";
  return el("span", {}, Object.entries(traffic).map(([v, w]) => el("span", { class: "weight" },
    digest(v), ` ${fixed(w)}%`)));
}

function rolloutButtons(r) {
  const out = $("rollout-action-result");
  const label = `Rollout ${r.rollout_id}`;
  const button = (testid, text, path, body, cls) => el("button", { testid, class: cls,
    onclick: (ev) => act(ev.currentTarget, out, `${label}: ${text}`,
      () => api(`/v1/rollouts/${enc(r.rollout_id)}/${path}`, body())) }, text);
  if (!ACTIVE.includes(r.status)) return "—";
  return el("div", { class: "actions" },
    r.status === "awaiting-approval" ? button("rollout-approve", "Approve", "approve",
      () => ({ approves: r.digest }), "primary") : "",
    button("rollout-promote", "Promote", "promote", () => ({}), ""),
    button("rollout-abort", "Abort", "abort",
      () => ({ reason: $("rollout-reason").value || "aborted in the console" }), "danger"));
}

function rolloutRow(r) {
  const steps = el("span", {}, r.steps.map((s, i) => el("span",
    { class: i === r.step && ACTIVE.includes(r.status) ? "step now" : "step" }, `${s}%`)));
  return row({ testid: "rollout-row", "data-rollout-id": r.rollout_id, "data-status": r.status },
    [el("code", {}, r.rollout_id), `${r.name} (${r.kind})`,
      el("span", {}, digest(r.stable), " → ", digest(r.candidate)), steps,
      [`${fixed(r.weight)}%`, "num"], el("span", { testid: "rollout-status" },
        badge(r.status)), (r.reasons || []).join("; ") || "—",
      `${r.created_by} · ${stamp(r.created_at)}`, rolloutButtons(r)]);
}

function measurements(list) {
  const rows = list.flatMap((r) => r.measurements.slice(-20).reverse().map((m) => row(
    { testid: "measurement-row" }, [el("code", {}, r.rollout_id), [m.step ?? "—", "num"],
      m.metric, badge(m.phase), [dash(m.value, (v) => fixed(v, 4)), "num"],
      [dash(m.baseline, (v) => fixed(v, 4)), "num"], m.dry_run ? "dry run" : "",
      m.message])));
  return rows.length ? rows : empty(8, "no measurements yet");
}

// `when`: the datetime-local field, read as UTC (as the page shows every time), or now.
function served(name, when) {
  const at = new Date(when ? `${when}Z` : Date.now()).toISOString();
  return api(`/v1/releases/${enc(name)}/served?at=${enc(at)}`);
}

export const rollouts = {
  setup() {
    $("served-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const out = $("served-result");
      const name = $("served-name").value;
      if (!name) return;
      out.hidden = false;
      served(name, $("served-at").value).then((s) => out.replaceChildren(
        el("div", {}, el("b", {}, `${s.name} at ${stamp(s.at)}: `), weights(s.weights)),
        el("div", { class: "muted" }, `since ${stamp(s.since)} · ${s.cause}`)))
        .catch((err) => { out.textContent = `Refused: ${err.message}`; });
    });
  },
  async poll() {
    const [releases, listed] = await Promise.all([api("/v1/releases"), api("/v1/rollouts")]);
    const names = [...new Set(releases.data.map((r) => r.name))].sort().slice(0, 20);
    const shown = await Promise.all(names.map((n) => api(`/v1/releases/${enc(n)}`)));
    draw($("releases-body"), shown, () => shown.length ? shown.map((s) => row(
      { testid: "release-row", "data-name": s.name }, [s.name, s.versions[0].kind,
        [fixed(s.versions.length), "num"], digest(s.aliases.stable), digest(s.aliases.canary),
        weights(s.traffic)])) : empty(6, "no releases"));
    const select = $("served-name");
    if ([...select.options].map((o) => o.value).join() !== names.join()) {
      const keep = select.value;
      select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
      if (names.includes(keep)) select.value = keep;
    }
    const list = [...listed.data].sort((a, b) => b.created_at.localeCompare(a.created_at));
    draw($("rollouts-body"), list, () => list.length ? list.map(rolloutRow)
      : empty(9, "no rollouts"));
    draw($("measurements-body"), list.slice(0, 5), measurements);
    const active = list.filter((r) => ACTIVE.includes(r.status)).length;
    $("rollouts-active").textContent = `${fixed(active)} active of ${fixed(list.length)}`;
  },
};
