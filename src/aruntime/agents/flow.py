"""Flows: a Python function of durable steps, tool calls, model calls and human waits.

    @flow
    def refund(ctx: FlowContext, order: dict) -> dict:
        total = ctx.step(price, order)                    # journaled once, replayed after
        ok = ctx.wait_for_human("approval", payload={"order": order["id"], "total": total})
        return ctx.call_tool(issue_refund, {"order": order["id"], "amount": total})

Each call takes the next sequence number. On the first run it does the work and journals the
outcome before returning it; when the run is recovered (a crash, a restart, a human answer) the
function runs again from the top and each call returns what the journal holds. A call whose
name or argument digest differs from what was journaled at its number is a `DeterminismError`
naming it: the code changed under a running flow, and replaying on would be a guess.

A wait with no answer yet suspends the run (`Suspended` unwinds the function); no process is
held while it waits. Flows may be `async def`, with `await ctx.astep(...)` for coroutine steps.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from aruntime.agents.tools import NOT_APPLIED, Applied, Tool
from aruntime.agents.tracing import tool_span
from aruntime.contracts import RunEvent, sha256_digest
from aruntime.durable.journal import Entry
from aruntime.durable.states import EntryKind, EntryState, RunStatus
from aruntime.errors import described
from aruntime.policy.decision import Action, Decision
from aruntime.timeutil import parse_rfc3339, rfc3339, utc_now

if TYPE_CHECKING:
    from aruntime.agents.runner import Runner

FLOW_ATTR = "__aruntime_flow__"


def flow(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a function as a flow (its first parameter receives the FlowContext)."""
    setattr(fn, FLOW_ATTR, True)
    return fn


class DeterminismError(RuntimeError):
    """Replay reached a call that differs from the journal at its sequence number."""


class Suspended(BaseException):
    """The run waits (a person, an unknown tool outcome); raised through the flow's code."""

    def __init__(self, seq: int, status: RunStatus, reason: str) -> None:
        super().__init__(reason)
        self.seq, self.status, self.reason = seq, status, reason


class StepError(RuntimeError):
    """A step failed; journaled, so replay raises the same error at the same place."""


class ToolError(RuntimeError):
    """A tool call failed or was rejected by a person (journaled like a step's error)."""


class HumanWaitTimeout(RuntimeError):
    """A human wait passed its deadline and the flow declared no `on_timeout` value."""


_UNSET: Any = object()


@dataclass(slots=True)
class FlowContext:
    runner: Runner
    run_id: str
    journaled: dict[int, Entry]  # the run's entries as of its (re)start, and those written since
    seq: int = 0

    # -- the calls a flow makes

    def step(self, fn: Callable[..., Any], *args: Any, name: str | None = None) -> Any:
        """Run `fn(*args)` once; its JSON-able result is journaled and replayed."""
        seq, name, arg_digest, done = self._begin_step(fn, args, name)
        if done is not None:
            return self._outcome(done, StepError)
        try:
            result = fn(*args)
        except Exception as exc:  # journaled and raised again on replay
            self._step_failed(seq, name, arg_digest, exc)
        return self._step_done(seq, name, arg_digest, result)

    async def astep(self, fn: Callable[..., Any], *args: Any, name: str | None = None) -> Any:
        """`step` for an async flow: `fn` may be a coroutine function."""
        seq, name, arg_digest, done = self._begin_step(fn, args, name)
        if done is not None:
            return self._outcome(done, StepError)
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:  # journaled and raised again on replay
            self._step_failed(seq, name, arg_digest, exc)
        return self._step_done(seq, name, arg_digest, result)

    def now(self) -> str:
        """The time (RFC 3339 UTC) as first seen by this run at this point: replay sees the
        same, so a flow may branch on it."""
        return str(self.step(lambda: rfc3339(utc_now()), name="now"))

    def call_model(self, prompt: str, *, max_tokens: int = 32, temperature: float = 0.0,
                   seed: int | None = None) -> dict[str, Any]:
        """A completion through the runner's models (the server's own path in a server, an
        in-process engine client in `aruntime run`); the result holds the text, its token ids,
        the model's name and revision, and the evidence names them."""
        seq = self._next()
        params: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens,
                                  "temperature": temperature, "seed": seed}
        arg_digest = sha256_digest({"model": params})
        done = self._replayed(seq, EntryKind.MODEL, "model", arg_digest)
        if done is not None:
            return dict(self._outcome(done, StepError))
        models, policy = self.runner.models, self.runner.policy
        decision = policy.model_call(self.run_id, models.name)
        if decision.enforced:  # journaled, so that a replay is refused the same way
            self._write(Entry(self.run_id, seq, EntryKind.MODEL, "model", arg_digest,
                              EntryState.ERROR, error=denied(decision)),
                        policy=decision.evidence())
            raise StepError(f"model call {seq}: {denied(decision)}")
        result = models.complete(prompt, max_tokens=max_tokens, temperature=temperature,
                                 seed=seed, tenant=policy.owner(self.run_id).tenant)
        self._write(Entry(self.run_id, seq, EntryKind.MODEL, "model", arg_digest, EntryState.DONE,
                          output=self.runner.store_output(self.run_id, result)),
                    model=result.get("model"), model_revision=result.get("model_revision"),
                    request_id=result.get("request_id"), policy=decision.evidence())
        return result

    def remember(self, key: str, value: Any, *, user: str | None = None,
                 retention: str = "long", pii: tuple[str, ...] = ()) -> None:
        """Write `value` under `key` in governed memory (agents/memory_calls.py): decided as
        `write_memory`, journaled, sealed with the subject's key."""
        from aruntime.agents.memory_calls import memory_call

        memory_call(self, Action.WRITE_MEMORY, key, value, user, retention=retention,
                    pii=list(pii))

    def recall(self, key: str, *, user: str | None = None) -> Any:
        """The value under `key` in governed memory, or None; decided as `read_memory`."""
        from aruntime.agents.memory_calls import memory_call

        return memory_call(self, Action.READ_MEMORY, key, user=user)

    def call_tool(self, tool: Tool, args: dict[str, Any]) -> Any:
        """Validate, journal the intent, (wait for approval,) journal the attempt, call the tool
        with its idempotency key, validate and journal the outcome."""
        seq = self._next()
        tool.check_input(args)
        call_digest = sha256_digest({"tool": tool.name, "args": args})
        journal, evidence = self.runner.journal, self.runner.evidence
        entry = self._replayed(seq, EntryKind.TOOL, tool.name, call_digest)
        if entry is None:
            entry = self._tool_intent(tool, args, seq, call_digest)
        assert entry.idem_key is not None
        while True:
            state = entry.state
            if state == EntryState.DONE:
                return self.runner.load_output(self.run_id, entry.output)
            if state in (EntryState.ERROR, EntryState.REJECTED):
                raise ToolError(f"tool call {seq} {tool.name!r}: {entry.error}")
            if state == EntryState.INTENT and tool.needs_approval:
                raise Suspended(seq, RunStatus.WAITING, f"tool call {seq} {tool.name!r} awaits "
                                f"approval of {call_digest}")
            if state in (EntryState.INTENT, EntryState.APPROVED):
                if evidence.advance(self.run_id, seq, (state,), EntryState.ATTEMPT,
                                    RunEvent.TOOL_ATTEMPT, name=tool.name, arg_digest=call_digest,
                                    idempotency_key=entry.idem_key):
                    return self._attempt(tool, args, seq, entry.idem_key, call_digest)
            elif state == EntryState.ATTEMPT:  # a process died after the attempt: did it happen?
                self._reconcile(tool, args, seq, entry.idem_key, call_digest)
            elif state == EntryState.UNKNOWN:
                raise Suspended(seq, RunStatus.UNKNOWN, f"tool call {seq} {tool.name!r}: outcome "
                                "unknown; resolve it (`aruntime runs resolve`)")
            entry = journal.entry(self.run_id, seq) or entry

    def wait_for_human(self, kind: str = "approval", *, schema: dict[str, Any] | None = None,
                       payload: Any = None, timeout_s: float | None = None,
                       on_timeout: Any = _UNSET) -> Any:
        """Suspend until a person answers. `approval`: the answer is `{"approved": bool, ...}`
        and binds to the digest of `payload` (what is approved); `input`: the answer must fit
        `schema`. Past `timeout_s` the call returns `on_timeout`, or raises HumanWaitTimeout."""
        if kind not in ("approval", "input"):
            raise ValueError("kind must be 'approval' or 'input'")
        seq = self._next()
        arg_digest = sha256_digest({"kind": kind, "schema": schema, "payload": payload})
        journal = self.runner.journal
        entry = self._replayed(seq, EntryKind.WAIT, f"human:{kind}", arg_digest)
        if entry is None:
            deadline = (rfc3339(utc_now() + timedelta(seconds=timeout_s))
                        if timeout_s is not None else None)
            detail = {"kind": kind, "schema": schema, "deadline": deadline,
                      "approves": sha256_digest(payload)}
            entry = self._write(Entry(self.run_id, seq, EntryKind.WAIT, f"human:{kind}",
                                      arg_digest, EntryState.WAITING, detail=json.dumps(detail)))
        if entry.state == EntryState.WAITING:
            if not deadline_passed(entry, utc_now()):
                raise Suspended(seq, RunStatus.WAITING, f"wait {seq} for a person ({kind})")
            self.runner.evidence.advance(self.run_id, seq, (EntryState.WAITING,),
                                         EntryState.TIMED_OUT, RunEvent.HUMAN_TIMEOUT)
            entry = journal.entry(self.run_id, seq) or entry
        if entry.state == EntryState.TIMED_OUT:
            if on_timeout is _UNSET:
                raise HumanWaitTimeout(f"wait {seq} for a person ({kind}) timed out")
            return on_timeout
        return self.runner.load_output(self.run_id, entry.output)

    # -- journal plumbing

    def _begin_step(self, fn: Callable[..., Any], args: tuple[Any, ...],
                    name: str | None) -> tuple[int, str, str, Entry | None]:
        seq, name = self._next(), name or fn.__name__
        arg_digest = sha256_digest({"step": name, "args": list(args)})
        return seq, name, arg_digest, self._replayed(seq, EntryKind.STEP, name, arg_digest)

    def _step_failed(self, seq: int, name: str, arg_digest: str, exc: Exception) -> None:
        message = described(exc)
        self._write(Entry(self.run_id, seq, EntryKind.STEP, name, arg_digest, EntryState.ERROR,
                          error=message))
        raise StepError(f"step {seq} {name!r} failed: {message}") from exc

    def _step_done(self, seq: int, name: str, arg_digest: str, result: Any) -> Any:
        stored = self._write(Entry(self.run_id, seq, EntryKind.STEP, name, arg_digest,
                                   EntryState.DONE,
                                   output=self.runner.store_output(self.run_id, result)))
        return self._outcome(stored, StepError)  # the journal's, should another writer win

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def _check(self, entry: Entry, kind: EntryKind, name: str, arg_digest: str) -> None:
        if (entry.kind, entry.name, entry.arg_digest) != (kind, name, arg_digest):
            raise DeterminismError(
                f"run {self.run_id}: call {entry.seq} is {kind} {name!r} ({arg_digest}) but the "
                f"journal recorded {entry.kind} {entry.name!r} ({entry.arg_digest}) there: the "
                "flow's code or inputs changed under a running flow")

    def _replayed(self, seq: int, kind: EntryKind, name: str,
                  arg_digest: str) -> Entry | None:
        entry = self.journaled.get(seq)  # read once when the run (re)started: no query a step
        if entry is not None:
            self._check(entry, kind, name, arg_digest)
        return entry

    def _outcome(self, entry: Entry, error: type[Exception]) -> Any:
        if entry.state == EntryState.ERROR:
            raise error(f"call {entry.seq} {entry.name!r} failed: {entry.error}")
        return self.runner.load_output(self.run_id, entry.output)

    def _write(self, entry: Entry, **evidence: Any) -> Entry:
        stored = self.runner.evidence.record_entry(entry, **evidence)
        if stored is not entry:  # another writer's entry stands: it must be this same call
            self._check(stored, entry.kind, entry.name, entry.arg_digest)
        self.journaled[entry.seq] = stored
        return stored

    def _tool_intent(self, tool: Tool, args: dict[str, Any], seq: int,
                     call_digest: str) -> Entry:
        """Decide the call for the run's principal (arguments as `context.input`) and journal
        its intent with the decision, or its refusal: a replay answers from the journal and
        never asks the policy again."""
        decision = self.runner.policy.tool_call(self.run_id, tool.name, tool.side_effect, args)
        key = sha256_digest({"run": self.run_id, "seq": seq}).removeprefix("sha256:")[:32]
        detail = {"needs_approval": tool.needs_approval, "side_effect": tool.side_effect}
        state, error = EntryState.INTENT, None
        if decision.enforced:
            state, error = EntryState.REJECTED, denied(decision)
        return self._write(Entry(self.run_id, seq, EntryKind.TOOL, tool.name, call_digest, state,
                                 error=error, idem_key=key, detail=json.dumps(detail)),
                           policy=decision.evidence())

    def _attempt(self, tool: Tool, args: dict[str, Any], seq: int, key: str,
                 call_digest: str) -> Any:
        evidence = self.runner.evidence
        try:
            with tool_span(self.runner.tracer, tool.name, key, self.run_id, seq):
                output = tool.invoke(args, key)
                tool.check_output(output)
        except Exception as exc:
            message = described(exc)
            evidence.advance(self.run_id, seq, (EntryState.ATTEMPT,), EntryState.ERROR,
                             RunEvent.TOOL_ERROR, error=message, name=tool.name,
                             arg_digest=call_digest)
            raise ToolError(f"tool call {seq} {tool.name!r}: {message}") from exc
        stored = self.runner.store_output(self.run_id, output)
        evidence.advance(self.run_id, seq, (EntryState.ATTEMPT,), EntryState.DONE,
                         RunEvent.TOOL_DONE, output=stored, name=tool.name,
                         arg_digest=call_digest, output_digest=sha256_digest(stored))
        return output

    def _reconcile(self, tool: Tool, args: dict[str, Any], seq: int, key: str,
                   call_digest: str) -> None:
        about: dict[str, Any] = {"name": tool.name, "arg_digest": call_digest}
        attempted = (EntryState.ATTEMPT,)
        evidence = self.runner.evidence
        answer = tool.reconcile(args, key) if tool.reconcile is not None else None
        if isinstance(answer, Applied):
            tool.check_output(answer.output)
            stored = self.runner.store_output(self.run_id, answer.output)
            evidence.advance(self.run_id, seq, attempted, EntryState.DONE,
                             RunEvent.TOOL_RECONCILED, output=stored, outcome="applied",
                             output_digest=sha256_digest(stored), **about)
        elif answer is NOT_APPLIED:
            evidence.advance(self.run_id, seq, attempted, EntryState.APPROVED,
                             RunEvent.TOOL_RECONCILED, outcome="not_applied", **about)
        else:
            evidence.advance(self.run_id, seq, attempted, EntryState.UNKNOWN,
                             RunEvent.TOOL_UNKNOWN, **about)


def denied(decision: Decision) -> str:
    """What a refused call's error says: the policy's decision, naming what determined it."""
    why = ", ".join(decision.determining) or "no policy permits it (default deny)"
    return f"policy denied {decision.action} on {decision.resource}: {why}"


def deadline_passed(entry: Entry, now: datetime) -> bool:
    """Whether a human wait's deadline (if it has one) is past at `now`."""
    deadline = json.loads(entry.detail).get("deadline")
    return deadline is not None and parse_rfc3339(deadline) <= now
