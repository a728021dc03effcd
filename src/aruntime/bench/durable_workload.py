"""`bench durable`'s workload: how many invocations a round, how many rounds, and the long run
that recovery kills mid-way."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DurableWorkload:
    invocations: int = 1000  # per system and round, durable; as many bare
    rounds: int = 3  # each system runs this often, alternating; its median round counts
    warmup: int = 20  # invocations of each kind before the first round
    recovery_steps: int = 200  # the long run killed mid-way, once a round per system
    kill_after: int = 100  # steps journaled before the SIGKILL

    def __post_init__(self) -> None:
        assert self.invocations >= 1 and self.rounds >= 1 and self.warmup >= 0
        assert 1 <= self.kill_after < self.recovery_steps

    def describe(self) -> str:
        return (f"3-step flow / 3-node graph (each step adds to a counter), {self.invocations} "
                f"runs per system a round, each a new run/thread id; SQLite WAL synchronous=FULL "
                f"both; LangGraph durability=sync; median of {self.rounds} alternating rounds; "
                f"recovery: {self.recovery_steps}-step run SIGKILLed after {self.kill_after}")


QUICK = DurableWorkload(invocations=500, rounds=2, warmup=10)
FULL = DurableWorkload()

