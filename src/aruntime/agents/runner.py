"""Starting, resuming and answering runs: the journal is the truth, a process only replays it.

`Runner.start` journals a run and executes its flow; `resume` executes it again, each call
answered from the journal up to where it stopped; `recover` resumes every run a dead process
left running and every wait past its deadline. People act on entries: `approve`/`reject` a tool
call awaiting approval (bound to the digest of its exact arguments), `respond` to a human wait,
`resolve` a tool call whose outcome is unknown. Each decision is journaled by compare-and-set,
recorded in the run's evidence, and resumes the run.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jsonschema
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from opentelemetry.trace import Span, Tracer

from aruntime import telemetry
from aruntime.agents import tracing
from aruntime.agents.flow import (
    FLOW_ATTR,
    DeterminismError,
    FlowContext,
    Suspended,
    deadline_passed,
)
from aruntime.agents.models import LocalModels, Models
from aruntime.agents.run_policy import RunPolicy
from aruntime.agents.tools import check_json
from aruntime.contracts import RunEvent, sha256_digest
from aruntime.durable.journal import Entry, JournalError, Run, SqlJournal
from aruntime.durable.states import FINISHED, EntryKind, EntryState, RunStatus
from aruntime.errors import described
from aruntime.evidence.runs import RunEvidence, RunVerify, verify_run
from aruntime.evidence.signing import DeploymentKey
from aruntime.governance.artifacts import ArtifactStore, is_ref
from aruntime.governance.erasure import TOMBSTONE
from aruntime.governance.memory import MemoryStore
from aruntime.governance.subject_keys import ShreddedError, SubjectKeys, is_sealed
from aruntime.policy.decision import Authorizer
from aruntime.policy.identity import ANONYMOUS, Principal
from aruntime.timeutil import utc_now

SUBJECTS_KEPT = 4096  # runs whose subject a runner keeps in memory


class RunError(ValueError):
    """A request about a run that cannot be done as asked (unknown run, wrong state, a digest
    that is not the one awaiting approval, an answer that does not fit its schema)."""


class UnknownRunError(RunError):
    """No run of that id in the journal."""


@dataclass(slots=True)
class RunResult:
    run_id: str
    status: RunStatus
    result: Any = None
    error: str | None = None
    waiting: str | None = None  # what a waiting or unknown run needs

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in (("run_id", self.run_id), ("status", self.status),
                                  ("result", self.result), ("error", self.error),
                                  ("waiting", self.waiting)) if v is not None}


def load_flow(ref: str) -> Callable[..., Any]:
    """`package.module:function`, which must be marked with `@flow`."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise RunError(f"flow {ref!r}: expected MODULE:FUNCTION")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RunError(f"flow {ref!r}: cannot import {module_name}: {exc}") from None
    fn: Callable[..., Any] | None = getattr(module, attr, None)
    if fn is None or not getattr(fn, FLOW_ATTR, False):
        raise RunError(f"flow {ref!r}: {attr} is not a function marked @flow in {module_name}")
    return fn


def summary(run: Run) -> dict[str, Any]:
    """A run in a listing."""
    return {"run_id": run.run_id, "flow": run.flow, "status": run.status,
            "created_at": run.created_at, "updated_at": run.updated_at}


def default_artifacts(journal: SqlJournal) -> ArtifactStore:
    """Beside a SQLite journal's file; for a shared journal, in this machine's data directory."""
    from aruntime import paths
    from aruntime.durable.journal import SqliteJournal

    base = journal.path.parent if isinstance(journal, SqliteJournal) else paths.data_dir()
    return ArtifactStore(base / "artifacts")


class Runner:
    """`artifacts`: where payloads over `inline_limit` bytes go (the journal keeps their
    reference). A run with a subject has its payloads sealed with the subject's key, so that
    erasing the subject (governance/erasure.py) leaves nothing of it readable. Each execution
    of a run is a span on `tracer` (default: the process's; agents/tracing.py). A run acts
    for the principal that started it: `authorizer` decides its calls (agents/run_policy.py)."""

    def __init__(self, journal: SqlJournal, *, signer: DeploymentKey | None = None,
                 models: Models | None = None, artifacts: ArtifactStore | None = None,
                 inline_limit: int = 64 * 1024, tracer: Tracer | None = None,
                 authorizer: Authorizer | None = None) -> None:
        self.journal = journal
        self.policy = RunPolicy(journal, authorizer)
        self.evidence = RunEvidence(journal, signer)
        self.tracer = tracer or telemetry.process_tracer()
        self.models = models or LocalModels(tracer=self.tracer)
        self.keys = SubjectKeys(journal)
        self.memory = MemoryStore(journal, self.keys)  # what flows remember (ctx.remember)
        self.artifacts = artifacts
        self.inline_limit = inline_limit
        # run -> subject, the runs touched last: a run's subject never changes, and one out of
        # here is read from the journal again, so a long-lived server's memory stays bounded
        self._subjects: OrderedDict[str, str | None] = OrderedDict()

    # -- payloads

    def store_output(self, run_id: str, value: Any) -> str:
        text = _json(run_id, value)
        subject = self._subject(run_id)
        if subject is not None:
            text = self.keys.seal(subject, text.encode())
        if self.artifacts is not None and len(text) > self.inline_limit:
            return self.artifacts.put(text.encode())
        return text

    def load_output(self, run_id: str, stored: str | None) -> Any:
        if stored is None:
            return None
        if stored.startswith(TOMBSTONE):
            raise ShreddedError(f"run {run_id}: its subject was erased ({stored})")
        if is_ref(stored):
            if self.artifacts is None:
                raise RunError(f"run {run_id} keeps {stored}, but this runner has no artifact "
                               "store")
            stored = self.artifacts.get(stored).decode()
        if is_sealed(stored):
            stored = self.keys.open(stored).decode()
        return json.loads(stored)

    # -- lifecycle

    def start(self, flow_ref: str, input_value: Any = None, *, run_id: str | None = None,
              subject: str | None = None, principal: Principal | None = None) -> RunResult:
        """Journal the run (idempotent for a given id) for `principal` and execute it."""
        fn = load_flow(flow_ref)  # a bad reference is an error now, not a failed run
        run_id = run_id or uuid.uuid4().hex
        self._remember(run_id, subject)
        input_json = self.store_output(run_id, input_value)
        who = principal or ANONYMOUS
        try:
            run, created = self.evidence.start_run(
                run_id, flow_ref, input_json, subject, self.policy.owner_row(who),
                input_digest=sha256_digest(input_json), tenant=who.tenant, principal=who.id)
        except JournalError:  # it exists with other input bytes: the same value, sealed anew?
            existing = self._run(run_id)
            self._remember(run_id, existing.subject)
            if existing.flow != flow_ref or self.load_output(run_id, existing.input) != \
                    json.loads(_json(run_id, input_value)):
                raise RunError(f"run {run_id} exists for {existing.flow} with another input") \
                    from None
            run, created = existing, False
        if run.status != RunStatus.RUNNING:
            return self._result(run)
        return self._execute(run, new=created, fn=fn)

    def resume(self, run_id: str) -> RunResult:
        run = self._run(run_id)
        if run.status in FINISHED:
            return self._result(run)
        if run.status != RunStatus.RUNNING:
            self.journal.set_status(run_id, RunStatus.RUNNING, unless=FINISHED)
        return self._execute(run)  # reads only what a status change leaves as it was

    def recover(self) -> list[RunResult]:
        """Resume what a dead process left running, and waits whose deadline passed."""
        results = [self.resume(r.run_id)
                   for r in self.journal.list_runs(RunStatus.RUNNING, 10_000)]
        now = utc_now()
        for run in self.journal.list_runs(RunStatus.WAITING, 10_000):
            if any(e.kind == EntryKind.WAIT and e.state == EntryState.WAITING
                   and deadline_passed(e, now)
                   for e in self.journal.entries(run.run_id)):
                results.append(self.resume(run.run_id))
        return results

    def cancel(self, run_id: str) -> RunResult:
        run = self._run(run_id)
        if run.status in FINISHED:  # nothing to cancel, nothing to sign
            return self._result(run)
        if self.evidence.set_status(run_id, RunStatus.CANCELLED, RunEvent.RUN_CANCELLED,
                                    unless=FINISHED):
            return RunResult(run_id, RunStatus.CANCELLED)
        return self._result(self._run(run_id))  # it finished meanwhile, as it stands now

    # -- views (the CLI's and HTTP's)

    def describe(self, run_id: str) -> dict[str, Any]:
        """A run and its journal as JSON: payloads opened (None once erased), digests as they
        are, for a person to read and decide on."""
        run = self._run(run_id)
        view = {**summary(run), "input": self._opened(run_id, run.input),
                "result": self._opened(run_id, run.result), "error": run.error,
                "subject": run.subject, "compacted": run.compacted}
        view["entries"] = [
            {"seq": e.seq, "kind": e.kind, "name": e.name, "state": e.state,
             "arg_digest": e.arg_digest, "idempotency_key": e.idem_key,
             "detail": e.detail if e.detail.startswith(TOMBSTONE) else json.loads(e.detail),
             "error": e.error, "updated_at": e.updated_at}
            for e in self.journal.entries(run_id)]
        return view

    def verify(self, run_id: str, public_key: Ed25519PublicKey | None = None) -> RunVerify:
        """The run's evidence checked against `public_key` (default: this deployment's)."""
        self._run(run_id)
        if public_key is None and self.evidence.signer is not None:
            public_key = self.evidence.signer.public_key
        return verify_run(self.journal, run_id, public_key)

    # -- people's decisions

    def approve(self, run_id: str, seq: int, approves: str, by: str,
                policy: dict[str, Any] | None = None) -> RunResult:
        """Approve the tool call at `seq`; `approves` must be the digest of its exact call.
        `policy` (here and in the other decisions): the decision that let `by` decide."""
        entry = self._entry(run_id, seq, EntryKind.TOOL)
        if approves != entry.arg_digest:
            raise RunError(f"run {run_id} call {seq}: the approval is for {approves}, but the "
                           f"call awaiting approval is {entry.arg_digest}; refused")
        if not self.evidence.advance(run_id, seq, (EntryState.INTENT,), EntryState.APPROVED,
                                     RunEvent.APPROVAL, decision="approved", by=by,
                                     approves=approves, policy=policy):
            raise RunError(f"run {run_id} call {seq} is {entry.state}, not awaiting approval")
        return self.resume(run_id)

    def reject(self, run_id: str, seq: int, by: str, reason: str = "rejected",
               policy: dict[str, Any] | None = None) -> RunResult:
        entry = self._entry(run_id, seq, EntryKind.TOOL)
        if not self.evidence.advance(run_id, seq, (EntryState.INTENT,), EntryState.REJECTED,
                                     RunEvent.APPROVAL, error=f"rejected by {by}: {reason}",
                                     decision="rejected", by=by, approves=entry.arg_digest,
                                     policy=policy):
            raise RunError(f"run {run_id} call {seq} is {entry.state}, not awaiting approval")
        return self.resume(run_id)

    def respond(self, run_id: str, seq: int, response: Any, by: str,
                approves: str | None = None, policy: dict[str, Any] | None = None) -> RunResult:
        """Answer a human wait. For an approval the answer is `{"approved": bool, ...}` and
        `approves` must be the digest of what the flow asked to be approved."""
        entry = self._entry(run_id, seq, EntryKind.WAIT)
        detail = json.loads(entry.detail)
        if detail["kind"] == "approval":
            if approves != detail["approves"]:
                raise RunError(f"run {run_id} wait {seq}: the approval is for {approves}, but "
                               f"what awaits approval is {detail['approves']}; refused")
            schema: dict[str, Any] = {"type": "object", "required": ["approved"],
                                      "properties": {"approved": {"type": "boolean"}}}
        else:
            schema = detail.get("schema") or {}
        check_json(response, jsonschema.Draft202012Validator(schema),
                   f"run {run_id} wait {seq}: the answer does not fit", RunError)
        stored = self.store_output(run_id, response)
        if not self.evidence.advance(run_id, seq, (EntryState.WAITING,), EntryState.RESOLVED,
                                     RunEvent.HUMAN_ANSWER, output=stored, by=by,
                                     approves=approves, policy=policy,
                                     answer_digest=sha256_digest(stored)):
            raise RunError(f"run {run_id} wait {seq} is {entry.state}, not waiting")
        return self.resume(run_id)

    def resolve(self, run_id: str, seq: int, by: str, *, output: Any = None,
                failed: str | None = None, policy: dict[str, Any] | None = None) -> RunResult:
        """Settle a tool call whose outcome is unknown: it happened (with `output`) or it
        failed (`failed`, a reason)."""
        entry = self._entry(run_id, seq, EntryKind.TOOL)
        unknown = (EntryState.UNKNOWN,)
        if failed is not None:
            moved = self.evidence.advance(run_id, seq, unknown, EntryState.ERROR,
                                          RunEvent.TOOL_RESOLVED,
                                          error=f"resolved as failed by {by}: {failed}",
                                          by=by, outcome="failed", policy=policy)
        else:
            moved = self.evidence.advance(run_id, seq, unknown, EntryState.DONE,
                                          RunEvent.TOOL_RESOLVED,
                                          output=self.store_output(run_id, output),
                                          by=by, outcome="applied", policy=policy)
        if not moved:
            raise RunError(f"run {run_id} call {seq} is {entry.state}, not unknown")
        return self.resume(run_id)

    # -- execution

    def _execute(self, run: Run, new: bool = False,
                 fn: Callable[..., Any] | None = None) -> RunResult:
        fn = fn or load_flow(run.flow)
        journaled = {} if new else {e.seq: e for e in self.journal.entries(run.run_id)}
        ctx = FlowContext(self, run.run_id, journaled)
        value = self.load_output(run.run_id, run.input)
        with tracing.agent_span(self.tracer, run.flow, run.run_id) as span:
            result = self._run_flow(run, fn, ctx, value, span)
            span.set_attribute("aruntime.run.status", str(result.status))
            return result

    def _run_flow(self, run: Run, fn: Callable[..., Any], ctx: FlowContext, value: Any,
                  span: Span) -> RunResult:
        """Run the flow and journal how it ended: suspended, failed or completed."""
        try:
            out = fn(ctx, value)
            if inspect.isawaitable(out):
                out = asyncio.run(_await(out))
        except Suspended as s:
            self.evidence.set_status(run.run_id, s.status, RunEvent.RUN_SUSPENDED,
                                     unless=FINISHED, seq=s.seq, suspended_as=s.status)
            return RunResult(run.run_id, self._run(run.run_id).status, waiting=s.reason)
        except DeterminismError:
            raise  # the run stays as it is until the code matches its journal again
        except Exception as exc:  # the flow's failure is the run's outcome
            telemetry.fail(span, exc)
            message = described(exc)
            if self.evidence.set_status(run.run_id, RunStatus.FAILED, RunEvent.RUN_FAILED,
                                        error=message, unless=FINISHED):
                return RunResult(run.run_id, RunStatus.FAILED, error=message)
            return self._result(self._run(run.run_id))
        stored = self.store_output(run.run_id, out)
        if self.evidence.set_status(run.run_id, RunStatus.COMPLETED, RunEvent.RUN_COMPLETED,
                                    result=stored, unless=FINISHED,
                                    result_digest=sha256_digest(stored)):
            return RunResult(run.run_id, RunStatus.COMPLETED,
                             self.load_output(run.run_id, stored))
        return self._result(self._run(run.run_id))  # cancelled meanwhile

    def _subject(self, run_id: str) -> str | None:
        """Whose data the run holds: its payloads are sealed under that subject's key. Read from
        the journal, so a runner that did not start the run (a CLI answering a wait, a
        restarted server) seals as the one that did."""
        if run_id in self._subjects:
            self._subjects.move_to_end(run_id)
            return self._subjects[run_id]
        run = self.journal.get_run(run_id)
        return self._remember(run_id, run.subject if run is not None else None)

    def _remember(self, run_id: str, subject: str | None) -> str | None:
        self._subjects[run_id] = subject
        self._subjects.move_to_end(run_id)
        if len(self._subjects) > SUBJECTS_KEPT:
            self._subjects.popitem(last=False)
        return subject

    def _run(self, run_id: str) -> Run:
        run = self.journal.get_run(run_id)
        if run is None:
            raise UnknownRunError(f"no run {run_id}")
        self._remember(run_id, run.subject)  # what sealing its payloads would read again
        return run

    def _entry(self, run_id: str, seq: int, kind: EntryKind) -> Entry:
        self._run(run_id)
        entry = self.journal.entry(run_id, seq)
        if entry is None or entry.kind != kind:
            raise RunError(f"run {run_id} has no {kind} call at {seq}")
        return entry

    def _result(self, run: Run) -> RunResult:
        return RunResult(run.run_id, run.status, self._opened(run.run_id, run.result), run.error)

    def _opened(self, run_id: str, stored: str | None) -> Any:
        try:
            return self.load_output(run_id, stored)
        except ShreddedError:
            return None  # its subject was erased: the payload is gone with it


def _json(run_id: str, value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"run {run_id}: a journaled value must be JSON: {exc}") from None


async def _await(awaitable: Any) -> Any:
    return await awaitable

