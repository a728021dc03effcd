"""A flow's memory calls: `ctx.remember` and `ctx.recall` over the governed store
(governance/memory.py), each a decision point (`write_memory`, `read_memory`) for the run's
principal, in the run's tenant, and journaled like a step — so a replay returns what the first
execution read or wrote, and a refusal is refused again without asking.

The scope is (the run's tenant, `user` — by default the run's subject, else its principal —,
the flow's name as the agent). Values are sealed with the subject's key by the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aruntime.contracts import sha256_digest
from aruntime.durable.journal import Entry
from aruntime.durable.states import EntryKind, EntryState
from aruntime.governance.memory import Scope
from aruntime.policy.decision import Action, Resource

if TYPE_CHECKING:
    from aruntime.agents.flow import FlowContext


def _scope(ctx: FlowContext, user: str | None) -> Scope:
    runner = ctx.runner
    run = runner.journal.get_run(ctx.run_id)
    owner = runner.policy.owner(ctx.run_id)
    flow = run.flow if run is not None else "flow"
    return Scope(owner.tenant, user or (run.subject if run else None) or owner.id, flow)


def memory_call(ctx: FlowContext, action: Action, key: str, value: Any = None,
                user: str | None = None, **put: Any) -> Any:
    """Decide, then read or write once; journaled as a step named for the action."""
    from aruntime.agents.flow import StepError, denied

    seq, name = ctx._next(), str(action)
    arg_digest = sha256_digest({"memory": name, "key": key, "user": user,
                                "value": sha256_digest(value), **put})
    done = ctx._replayed(seq, EntryKind.STEP, name, arg_digest)
    if done is not None:
        return ctx._outcome(done, StepError)
    scope = _scope(ctx, user)
    resource = Resource("Memory", f"{scope.tenant}/{scope.user}/{scope.agent}",
                        {"tenant": scope.tenant, "user": scope.user, "agent": scope.agent})
    decision = ctx.runner.policy.decide(ctx.run_id, action, resource,
                                        {"tenant": scope.tenant})
    if decision.enforced:
        ctx._write(Entry(ctx.run_id, seq, EntryKind.STEP, name, arg_digest, EntryState.ERROR,
                         error=denied(decision)), policy=decision.evidence())
        raise StepError(f"{name} {key!r}: {denied(decision)}")
    store = ctx.runner.memory
    if action is Action.WRITE_MEMORY:
        store.put(scope, key, value, **put)
        result = None
    else:
        item = store.get(scope, key)
        result = None if item is None else item.value
    stored = ctx._write(Entry(ctx.run_id, seq, EntryKind.STEP, name, arg_digest, EntryState.DONE,
                              output=ctx.runner.store_output(ctx.run_id, result)),
                        policy=decision.evidence())
    return ctx._outcome(stored, StepError)
