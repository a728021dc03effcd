"""`bench engine`'s workload: random prompt token ids from a seed, greedy, `ignore_eos` so that
output lengths hold, and the TTFT probe of a long cached prefix with a fresh suffix."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from aruntime.engine.sampling import SamplingParams


@dataclass(frozen=True, slots=True)
class Workload:
    num_requests: int = 64
    seed: int = 0
    prompt_len: tuple[int, int] = (32, 512)  # uniform, inclusive
    output_len: tuple[int, int] = (16, 128)
    prefix_len: int = 1024  # TTFT probe: the prefix that is cached ...
    suffix_len: int = 16  # ... and the fresh suffix after it
    ttft_repeats: int = 5
    baseline_batch: int = 8
    rounds: int = 3  # each system runs this often, alternating; its median round counts

    def describe(self) -> str:
        return (f"{self.num_requests} requests, random token ids (seed {self.seed}), prompts "
                f"uniform {self.prompt_len[0]}-{self.prompt_len[1]}, outputs uniform "
                f"{self.output_len[0]}-{self.output_len[1]}, greedy, ignore_eos; TTFT probe "
                f"{self.prefix_len}-token cached prefix + {self.suffix_len}-token suffix; "
                f"median of {self.rounds} alternating rounds")


FULL = Workload()
# The same workload, fewer repeats: a quick run is less precise, never another measurement. (It
# used to run 24 requests, where continuous batching has less to batch: its throughput ratio
# was 2.2-2.5 against the full run's 3.3-3.7 on the same machine and hour.)
QUICK = replace(FULL, ttft_repeats=3, rounds=1)


@dataclass(frozen=True, slots=True)
class Request:
    id: str
    prompt: list[int]
    max_tokens: int


def make_requests(w: Workload, vocab_size: int) -> tuple[list[Request], list[list[int]]]:
    """The throughput requests and the TTFT probe prompts: fill first, a warm-up probe, then
    one per repeat."""
    rng = random.Random(w.seed)
    low = 3  # keep clear of the usual special ids (pad, bos, eos)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(low, vocab_size) for _ in range(n)]

    requests = [Request(f"req-{i}", tokens(rng.randint(*w.prompt_len)), rng.randint(*w.output_len))
                for i in range(w.num_requests)]
    prefix = tokens(w.prefix_len)
    probes = [prefix + tokens(w.suffix_len) for _ in range(2 + w.ttft_repeats)]
    return requests, probes


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
