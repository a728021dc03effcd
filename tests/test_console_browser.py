"""The operator console in a real browser (Debian's chromium, driven by Playwright) against a
real server with two workers, API keys and a policy that keeps the console to operators: every
tab opens with no console error; the cluster view lists both workers; a request sent during the
test appears in the traffic view; an approval clicked in the runs view completes the run; an
abort clicked in the rollouts view puts every request back on stable; a non-operator key is
refused and shown nothing. Each view's screenshot, with the test's data on it, goes to
docs/console/."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from agent_flows import ledger
from console_server import REPO, console_server, make_keys
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, expect, sync_playwright

from aruntime.serve.launch import BackgroundServer

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = REPO / "docs" / "console"
TABS = ("cluster", "traffic", "runs", "rollouts", "policy", "evidence")
GOOD, KIND = "You answer briefly.", "You answer kindly."
expect.set_options(timeout=15_000)  # a poll a second, on a loaded two-core machine


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    data = tmp_path_factory.mktemp("console-browser")
    return data, make_keys(data)


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, keys: tuple[Path, dict[str, str]]
           ) -> Iterator[BackgroundServer]:
    with console_server(tiny_model_dir, keys[0]) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server: BackgroundServer, keys: tuple[Path, dict[str, str]]) -> Iterator[httpx.Client]:
    """The operator's client: what the tests do beside the page, as the operator."""
    with httpx.Client(base_url=server.url, timeout=60,
                      headers={"Authorization": f"Bearer {keys[1]['operator']}"}) as c:
        yield c


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's chromium "
                    "(`make setup` installs it; never `playwright install`)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@dataclass
class Console:
    """A fresh page on the console, with every console error and uncaught exception it had."""

    page: Page
    url: str
    errors: list[str] = field(default_factory=list)

    def sign_in(self, key: str) -> None:
        self.page.goto(f"{self.url}/console")
        self.page.get_by_test_id("login-key").fill(key)
        self.page.get_by_test_id("login-submit").click()

    def open(self, tab: str) -> Locator:
        """Open `tab` and wait for its first poll to be drawn (each view's tables get a row,
        of data or saying there is none)."""
        self.page.get_by_test_id(f"tab-{tab}").click()
        view = self.page.get_by_test_id(f"view-{tab}")
        expect(view).to_be_visible()
        expect(view.locator("tbody tr").first).to_be_visible()
        return view

    def shoot(self, view: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{view}.png"), full_page=True)


@pytest.fixture
def console(browser: Browser, server: BackgroundServer) -> Iterator[Console]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    seen = Console(page, server.url)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            seen.errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: seen.errors.append(f"uncaught: {exc}"))
    yield seen
    context.close()


def operator(console: Console, keys: tuple[Path, dict[str, str]]) -> Page:
    console.sign_in(keys[1]["operator"])
    expect(console.page.get_by_test_id("whoami")).to_have_text("olga · acme · operator")
    return console.page


def complete(key: str, server: BackgroundServer, prompt: str) -> str:
    got = httpx.post(f"{server.url}/v1/completions", timeout=60,
                     headers={"Authorization": f"Bearer {key}"},
                     json={"model": "tiny", "prompt": prompt, "max_tokens": 4,
                           "temperature": 0})
    assert got.status_code == 200, got.text
    request_id: str = got.json()["id"]
    return request_id


def test_every_tab_opens_with_no_console_error(
        console: Console, keys: tuple[Path, dict[str, str]]) -> None:
    page = operator(console, keys)
    for tab in TABS:
        console.open(tab)
        expect(page.get_by_test_id(f"tab-{tab}")).to_have_attribute("aria-selected", "true")
        for other in set(TABS) - {tab}:
            expect(page.get_by_test_id(f"view-{other}")).to_be_hidden()
        expect(page.get_by_test_id("poll-status")).to_contain_text("Live")
    page.reload()  # the key stays in the tab's session, and the view in the address
    expect(page.get_by_test_id("view-evidence")).to_be_visible()
    assert console.errors == []


def test_the_cluster_view_lists_every_worker(
        console: Console, keys: tuple[Path, dict[str, str]], server: BackgroundServer,
        http: httpx.Client) -> None:
    request_id = complete(keys[1]["operator"], server, "route me")
    page = operator(console, keys)
    console.open("cluster")
    rows = page.get_by_test_id("worker-row")
    expect(rows).to_have_count(2)
    workers = http.get("/v1/console/cluster").json()["workers"]
    assert [w["worker_id"] for w in workers] == ["w0", "w1"]
    for i, w in enumerate(workers):
        expect(rows.nth(i)).to_have_attribute("data-worker-id", w["worker_id"])
        expect(rows.nth(i)).to_contain_text(str(w["pid"]))
        expect(rows.nth(i)).to_contain_text(f"/ {w['engine']['device_blocks']}")
    route = page.locator(f'[data-testid="route-row"][data-request-id^="{request_id}"]')
    expect(route).to_have_count(1)
    console.shoot("cluster")
    assert console.errors == []


def test_a_request_sent_now_appears_in_the_traffic_view(
        console: Console, keys: tuple[Path, dict[str, str]], server: BackgroundServer) -> None:
    page = operator(console, keys)
    console.open("traffic")
    for i in range(12):  # enough for the charts to show a shape
        complete(keys[1]["operator" if i % 3 else "guest"], server, f"warm-up {i} " * (i + 1))
    mine = complete(keys[1]["operator"], server, "traffic check")
    theirs = complete(keys[1]["guest"], server, "another tenant")
    row = page.locator(f'[data-testid="traffic-request-row"][data-response-id="{mine}"]')
    other = page.locator(f'[data-testid="traffic-request-row"][data-response-id="{theirs}"]')
    expect(row).to_have_count(1)  # it arrived by polling: the page was not reloaded
    expect(row).to_have_attribute("data-tenant", "acme")
    expect(row).to_contain_text("tiny")
    expect(other).to_have_attribute("data-tenant", "globex")
    page.get_by_test_id("filter-tenant").select_option("acme")
    page.get_by_test_id("filter-model").select_option("tiny")
    expect(other).to_have_count(0)
    expect(row).to_have_count(1)
    for metric in ("ttft_s", "tpot_s", "e2e_s"):
        expect(page.get_by_test_id(f"chart-{metric}-line")).not_to_have_attribute(
            "data-points", "0")
        expect(page.get_by_test_id(f"chart-{metric}-hist")).not_to_have_attribute(
            "data-values", "0")
    console.shoot("traffic")
    assert console.errors == []


def test_an_approval_clicked_in_the_runs_view_completes_the_run(
        console: Console, keys: tuple[Path, dict[str, str]], http: httpx.Client,
        tmp_path: Path) -> None:
    run_id, book = f"console-{uuid.uuid4().hex[:8]}", str(tmp_path / "book.db")
    started = http.post("/v1/runs", json={"flow": "agent_flows:approve_then_pay",
                                          "input": {"ledger": book}, "run_id": run_id})
    assert started.status_code == 200 and started.json()["status"] == "waiting", started.text
    approves = http.get(f"/v1/runs/{run_id}").json()["entries"][1]["detail"]["approves"]
    page = operator(console, keys)
    console.open("runs")
    calls = page.locator(f'[data-testid="pending-call"][data-run-id="{run_id}"]')
    expect(calls).to_have_count(1)
    expect(calls.get_by_test_id("approval-digest")).to_have_text(approves)
    listed = page.locator(f'[data-testid="run-row"][data-run-id="{run_id}"]')
    expect(listed).to_have_attribute("data-status", "waiting")
    listed.click()  # its journal: the step done, the wait for a person
    expect(page.get_by_test_id("run-entry")).to_have_count(2)
    console.shoot("runs")
    calls.get_by_test_id("approve-button").click()
    # the person said yes; now the transfer awaits approval of its own exact arguments
    tool = page.locator(f'[data-testid="pending-call"][data-run-id="{run_id}"]'
                        '[data-what="tool"]')
    expect(tool).to_have_count(1)
    call = http.get(f"/v1/runs/{run_id}").json()["entries"][2]
    expect(tool.get_by_test_id("approval-digest")).to_have_text(call["arg_digest"])
    tool.get_by_test_id("approve-button").click()
    expect(page.get_by_test_id("run-action-result")).to_contain_text("status completed")
    expect(calls).to_have_count(0)
    run = http.get(f"/v1/runs/{run_id}").json()
    assert run["status"] == "completed" and run["result"] == {"paid": 2}
    assert ledger(book).execute("SELECT amount, invocations FROM effects").fetchall() == [(2, 1)]
    assert http.get(f"/v1/runs/{run_id}/verify").json()["ok"]
    assert console.errors == []


def test_an_answer_typed_in_the_runs_view_resumes_the_run(
        console: Console, keys: tuple[Path, dict[str, str]], http: httpx.Client) -> None:
    run_id = f"ask-{uuid.uuid4().hex[:8]}"
    assert http.post("/v1/runs", json={"flow": "agent_flows:ask_name", "run_id": run_id}
                     ).json()["status"] == "waiting"
    page = operator(console, keys)
    console.open("runs")
    call = page.locator(f'[data-testid="pending-call"][data-run-id="{run_id}"]')
    call.get_by_test_id("respond-input").fill("{not json")
    call.get_by_test_id("respond-button").click()
    expect(page.get_by_test_id("run-action-result")).to_contain_text("not JSON")
    call.get_by_test_id("respond-input").fill('{"name": 7}')  # off the wait's schema
    call.get_by_test_id("respond-button").click()
    expect(page.get_by_test_id("run-action-result")).to_contain_text("does not fit")
    call.get_by_test_id("respond-input").fill('{"name": "Ada"}')
    call.get_by_test_id("respond-button").click()
    expect(page.get_by_test_id("run-action-result")).to_contain_text('"hello Ada"')
    expect(call).to_have_count(0)
    assert http.get(f"/v1/runs/{run_id}").json()["result"] == "hello Ada"
    # the browser reports the refused answer's 400 itself; nothing else may be an error
    assert len(console.errors) == 1 and "status of 400" in console.errors[0], console.errors


def release(http: httpx.Client, name: str, text: str) -> str:
    r = http.post("/v1/releases", json={"kind": "prompt", "name": name, "content": text})
    assert r.status_code == 200, r.text
    version: str = r.json()["version"]
    return version


def chat(http: httpx.Client, name: str, session: str) -> dict[str, Any]:
    r = http.post("/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4,
        "temperature": 0, "aruntime": {"prompt": name, "session": session}})
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def served_prompts(server: BackgroundServer, name: str) -> list[str]:
    """The prompt release named in each request's evidence record, oldest first."""
    path = Path(server.app.state.server.data_dir) / "evidence.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [p for r in records if (p := (r.get("releases") or {}).get("prompt", ""))
            .startswith(f"{name}@")]


def test_an_abort_clicked_in_the_rollouts_view_returns_traffic_to_stable(
        console: Console, keys: tuple[Path, dict[str, str]], http: httpx.Client,
        server: BackgroundServer) -> None:
    name = f"support-{uuid.uuid4().hex[:6]}"
    stable, candidate = release(http, name, GOOD), release(http, name, KIND)
    assert http.post(f"/v1/releases/{name}/aliases",
                     json={"version": stable, "alias": "stable"}).status_code == 200
    started = http.post("/v1/rollouts", json={"name": name, "to": candidate, "steps": [50, 100]})
    assert started.status_code == 200, started.text
    rollout_id = started.json()["rollout_id"]
    for i in range(8):
        chat(http, name, f"during-{i}")
    page = operator(console, keys)
    console.open("rollouts")
    row = page.locator(f'[data-testid="rollout-row"][data-rollout-id="{rollout_id}"]')
    expect(row).to_have_attribute("data-status", "progressing")
    expect(row).to_contain_text("50%")
    row.get_by_test_id("rollout-abort").click()
    expect(row).to_have_attribute("data-status", "aborted")
    expect(row.get_by_test_id("rollout-abort")).to_have_count(0)
    status = http.get(f"/v1/rollouts/{rollout_id}").json()
    assert status["status"] == "aborted" and status["weight"] == 0
    assert status["events"][-1]["by"] == "olga"  # the click acted as the signed-in operator
    after = len(served_prompts(server, name))
    for i in range(8):
        chat(http, name, f"after-{i}")
    assert served_prompts(server, name)[after:] == [f"{name}@{stable}"] * 8
    page.get_by_test_id("served-name").select_option(name)
    page.get_by_test_id("served-lookup").click()
    shown = page.get_by_test_id("served-result")
    expect(shown.locator(f'[title="{stable}"]')).to_be_visible()
    expect(shown).to_contain_text("100%")
    expect(shown.locator(f'[title="{candidate}"]')).to_have_count(0)
    console.shoot("rollouts")
    assert console.errors == []


def test_a_promotion_that_needs_approval_is_approved_in_the_rollouts_view(
        console: Console, keys: tuple[Path, dict[str, str]], http: httpx.Client) -> None:
    name = f"greeting-{uuid.uuid4().hex[:6]}"
    stable, candidate = release(http, name, GOOD), release(http, name, KIND)
    http.post(f"/v1/releases/{name}/aliases", json={"version": stable, "alias": "stable"})
    started = http.post("/v1/rollouts", json={"name": name, "to": candidate,
                                              "steps": [10, 100], "require_approval": True})
    rollout_id, digest = started.json()["rollout_id"], started.json()["digest"]
    page = operator(console, keys)
    console.open("rollouts")
    row = page.locator(f'[data-testid="rollout-row"][data-rollout-id="{rollout_id}"]')
    expect(row.get_by_test_id("rollout-approve")).to_have_count(0)  # nothing to approve yet
    row.get_by_test_id("rollout-promote").click()
    expect(row).to_have_attribute("data-status", "awaiting-approval")
    row.get_by_test_id("rollout-approve").click()
    expect(row).to_have_attribute("data-status", "promoted")
    status = http.get(f"/v1/rollouts/{rollout_id}").json()
    assert status["status"] == "promoted" and status["weight"] == 100
    approval = [e for e in status["events"] if e["type"] == "approved"]
    assert [(e["by"], e["approves"]) for e in approval] == [("olga", digest)]
    assert http.get(f"/v1/releases/{name}").json()["aliases"]["stable"] == candidate
    assert console.errors == []


def test_a_non_operator_key_is_refused_and_shown_nothing(
        console: Console, keys: tuple[Path, dict[str, str]], http: httpx.Client) -> None:
    page = console.page
    for key, status, why in ((keys[1]["user"], "403", "policy_denied"),
                             ("sk-not-a-key", "401", "")):
        console.sign_in(key)
        refused = page.get_by_test_id("login-error")
        expect(refused).to_be_visible()
        expect(refused).to_contain_text(f"Refused ({status}")
        expect(refused).to_contain_text(why)
        expect(page.get_by_test_id("app")).to_be_hidden()
        expect(page.get_by_test_id("tabs")).to_be_hidden()
        expect(page.locator("tbody tr")).to_have_count(0)
        assert page.evaluate("sessionStorage.length") == 0  # a refused key is not kept
    # the browser reports each refused response itself; nothing else may be an error
    assert [e for e in console.errors if "status of 403" not in e
            and "status of 401" not in e] == []
    console.errors.clear()
    denied = http.get("/v1/console/policy").json()["denials_by_rule"]["console-for-operators"]
    operator(console, keys)
    console.open("policy")
    rule = page.locator('[data-testid="denial-row"][data-rule="console-for-operators"]')
    expect(rule).to_contain_text(str(denied))
    version = http.get("/v1/console/policy").json()["version"]
    expect(page.get_by_test_id("policy-version")).to_contain_text(version)
    console.shoot("policy")
    assert console.errors == []


def test_the_evidence_view_verifies_the_logs_and_lists_the_claims(
        console: Console, keys: tuple[Path, dict[str, str]], http: httpx.Client,
        server: BackgroundServer, tmp_path: Path) -> None:
    complete(keys[1]["operator"], server, "evidence check")
    run_id = f"verify-{uuid.uuid4().hex[:8]}"
    http.post("/v1/runs", json={"flow": "agent_flows:approve_then_pay",
                                "input": {"ledger": str(tmp_path / "b.db")}, "run_id": run_id})
    operator(console, keys)
    view = console.open("evidence")
    for log in ("requests", "decisions"):
        view.get_by_test_id(f"verify-{log}").click()
        expect(view.get_by_test_id(f"verify-{log}-result")).to_have_attribute("data-ok", "true")
    view.get_by_test_id("verify-run-id").fill(run_id)
    view.get_by_test_id("verify-run").click()
    expect(view.get_by_test_id("verify-run-result")).to_have_attribute("data-ok", "true")
    expect(view.get_by_test_id("verify-run-result")).to_contain_text(run_id)
    claims = http.get("/v1/console/claims").json()
    expect(view.get_by_test_id("claim-row")).to_have_count(len(claims["claims"]))
    expect(view.get_by_test_id("due-row")).to_have_count(len(claims["due"]))
    console.shoot("evidence")
    assert console.errors == []
