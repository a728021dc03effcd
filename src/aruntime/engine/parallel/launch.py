"""How a parallel group's other ranks are started: the seam between rank 0 and wherever
ranks 1..N-1 run. `LocalRanks` starts each as a process on this machine (the default);
cluster/ray/ranks.py starts each as a Ray actor. Either way a rank gets its `RankArgs`,
joins the group at the store rank 0 holds, and serves until the group closes."""

from __future__ import annotations

import pickle
import subprocess
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

from aruntime.engine.config import EngineConfig


@dataclass(frozen=True, slots=True)
class RankArgs:
    config: EngineConfig
    rank: int
    host: str  # where rank 0's store listens
    port: int
    max_positions: int
    threads: int  # torch's threads on the rank


class RankProcess(Protocol):
    """A started rank, as subprocess.Popen is one: `wait` raises subprocess.TimeoutExpired."""

    def poll(self) -> int | None: ...
    def kill(self) -> None: ...
    def wait(self, timeout: float | None = None) -> int: ...


class RankLauncher(ABC):
    @property
    @abstractmethod
    def host(self) -> str:
        """The address the ranks reach rank 0's store at."""

    @abstractmethod
    def start(self, args: RankArgs) -> RankProcess:
        """One rank started; it joins the group on its own."""


class LocalRanks(RankLauncher):
    """Each rank a process of this machine (`python -m aruntime.engine.parallel.rank`), its
    arguments pickled on its stdin, never on a command line."""

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def start(self, args: RankArgs) -> RankProcess:
        proc = subprocess.Popen([sys.executable, "-m", "aruntime.engine.parallel.rank"],
                                stdin=subprocess.PIPE)
        assert proc.stdin is not None
        proc.stdin.write(pickle.dumps(args))
        proc.stdin.close()
        return proc
