"""The engine's yield to a real-time loop beside it: the loop's board (a shared file, read by
another process) says each step's slack; the engine's gate sleeps a few of the loop's periods
while a step ended under the loop's floor, never past its bound, and not for a loop that
stopped; it follows the CPUs it is left. Time is injected: nothing here is timed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from aruntime.engine.loop_board import SIZE, SLOTS, BoardReader, LoopBoard
from aruntime.engine.step_gate import MAX_WAIT_NS, PAUSE_PERIODS, StepGate
from aruntime.realtime.clock import SimulatedClock
from aruntime.realtime.loop import Loop, Tick

PERIOD = 1_000_000


class Machine:
    """The gate's view of time and CPUs: a simulated clock its sleeps advance; while it
    sleeps, the loop publishes what `during_sleep` says."""

    def __init__(self, board: LoopBoard) -> None:
        self.clock = SimulatedClock(10 * PERIOD)
        self.board = board
        self.slacks_while_asleep: list[int] = []
        self.cpus = 2
        self.threads: list[int] = []

    def sleep(self, seconds: float) -> None:
        self.clock.advance(int(seconds * 1e9))
        for slack in self.slacks_while_asleep:
            self.board.publish(self.clock.now_ns(), slack)

    def gate(self, reader: BoardReader, threads: int = 2) -> StepGate:
        return StepGate(reader, threads, now_ns=self.clock.now_ns, sleep=self.sleep,
                        cpus=lambda: self.cpus, set_threads=self.threads.append)


@pytest.fixture
def board(tmp_path: Path) -> LoopBoard:
    return LoopBoard(tmp_path / "loop.board", PERIOD, PERIOD // 2, epoch_ns=1)


def test_a_loop_short_of_slack_is_yielded_to_until_it_has_slack_again(board: LoopBoard) -> None:
    m = Machine(board)
    gate = m.gate(BoardReader(board.path))
    board.publish(m.clock.now_ns(), 900_000)
    gate.before_step()
    assert gate.yields == 0  # slack above the floor: no yield
    board.publish(m.clock.now_ns(), 100_000)  # a step that ended with too little slack
    m.slacks_while_asleep = [800_000, 850_000]  # the loop recovers while the engine sleeps
    gate.before_step()
    assert gate.yields == 1 and gate.waited_ns == PAUSE_PERIODS * PERIOD
    gate.before_step()  # nothing new is short
    assert gate.yields == 1


def test_a_yield_is_bounded_and_a_stopped_loop_is_not_yielded_to(board: LoopBoard) -> None:
    m = Machine(board)
    gate = m.gate(BoardReader(board.path))
    board.publish(m.clock.now_ns(), -50_000)  # an overrun
    m.slacks_while_asleep = [-10_000]  # and the loop stays short
    gate.before_step()
    assert gate.waited_ns == MAX_WAIT_NS  # the engine goes on after its bound
    board.publish(m.clock.now_ns(), -10_000)
    m.slacks_while_asleep = []
    m.clock.advance(200 * PERIOD)  # the loop has stopped: its last entry is old
    gate.before_step()
    assert gate.waited_ns == MAX_WAIT_NS


def test_the_loop_publishes_each_steps_slack_and_a_reader_sees_only_new_entries(
        board: LoopBoard) -> None:
    clock = SimulatedClock()
    loop = Loop(PERIOD, clock=clock, board=board)
    work = iter([100_000, 700_000, 1_200_000, 0])

    def step(tick: Tick) -> bool:
        clock.advance(next(work))
        return True

    reader = BoardReader(board.path)
    loop.run(step, ticks=3)
    first = reader.read()
    assert first is not None and first.entries == 3
    assert first.least_slack_ns == -200_000 and first.short  # the third step overran
    assert loop.overruns == 1
    again = reader.read()
    assert again is not None and again.entries == 0 and again.least_slack_ns is None
    assert again.last_ended_ns == first.last_ended_ns


def test_a_reader_that_falls_behind_reads_the_last_slots_and_a_new_loop_anew(
        board: LoopBoard, tmp_path: Path) -> None:
    reader = BoardReader(board.path)
    for k in range(SLOTS + 50):
        board.publish(k, -1 if k < 50 else 900_000)  # the short ones were overwritten
    seen = reader.read()
    assert seen is not None and seen.entries == SLOTS and not seen.short
    restarted = LoopBoard(board.path, PERIOD, PERIOD // 2, epoch_ns=2)
    restarted.publish(5, 10)
    after = reader.read()
    assert after is not None and after.entries == 1 and after.short


def test_no_board_or_a_file_that_is_not_one_reads_as_no_loop(tmp_path: Path) -> None:
    assert BoardReader(tmp_path / "absent").read() is None
    (tmp_path / "short").write_bytes(b"ARTLOOP1")
    assert BoardReader(tmp_path / "short").read() is None
    (tmp_path / "garbage").write_bytes(b"\x07" * SIZE)
    assert BoardReader(tmp_path / "garbage").read() is None
    with pytest.raises(ValueError, match="slack floor"):
        LoopBoard(tmp_path / "b", PERIOD, 2 * PERIOD, epoch_ns=1)


def test_the_engine_follows_the_cpus_it_is_left_and_keeps_a_chosen_count(
        board: LoopBoard) -> None:
    m = Machine(board)
    gate = m.gate(BoardReader(board.path), threads=2)
    gate.before_step()
    assert m.threads == []  # no change of CPUs: the count chosen at start stays
    m.cpus = 1
    gate.before_step()
    m.cpus = 2
    gate.before_step()
    m.cpus = 8
    gate.before_step()
    assert m.threads == [1, 2, 2]  # never more threads than it started with


def test_a_board_is_read_across_processes(board: LoopBoard) -> None:
    script = ("import sys; from aruntime.engine.loop_board import LoopBoard; "
              "b = LoopBoard(sys.argv[1], 1000000, 500000, 7); b.publish(42, 123)")
    subprocess.run([sys.executable, "-c", script, str(board.path)], check=True)
    seen = BoardReader(board.path).read()
    assert seen is not None and (seen.entries, seen.least_slack_ns, seen.last_ended_ns) == (
        1, 123, 42) and seen.short


def test_an_engine_with_a_board_yields_before_a_step_and_answers_the_same(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    from aruntime.engine.config import EngineConfig
    from aruntime.engine.llm_engine import LLMEngine
    from aruntime.engine.sampling import SamplingParams

    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    prompts = [[5, 9, 12, 40, 41], [7, 7, 3]]
    plain = LLMEngine(EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=1 << 20))
    # a slow loop (1 s period) that has just run short: one bounded yield, then no new entry
    slow = LoopBoard(tmp_path / "slow.board", 1_000_000_000, 500_000_000, epoch_ns=1)
    gated = LLMEngine(EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=1 << 20,
                                   loop_board=str(slow.path)))
    assert gated.gate is not None and plain.gate is None
    slow.publish(time.monotonic_ns(), 0)
    want = [o.new_token_ids for o in plain.generate(prompts, params)]
    assert [o.new_token_ids for o in gated.generate(prompts, params)] == want
    assert gated.gate.yields == 1 and gated.gate.waited_ns == MAX_WAIT_NS
