"""One request's state inside the engine: its tokens, blocks and progress. No tensors."""

from __future__ import annotations

import enum
import time

from aruntime.engine.sampling import SamplingParams
from aruntime.kv.keys import BlockKey, block_key, rerooted


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 root: BlockKey, arrival_time: float | None = None,
                 shared_root: BlockKey | None = None, shared_blocks: int = 0) -> None:
        self.request_id = request_id
        self.params = params
        self.token_ids = list(prompt_token_ids)  # prompt, then outputs
        self.num_prompt_tokens = len(prompt_token_ids)
        self.num_computed_tokens = 0  # tokens whose KV is in this sequence's blocks
        self.num_cached_tokens = 0  # prompt tokens served by the prefix cache at first schedule
        self.block_table: list[int] = []
        self.num_published_blocks = 0  # leading full blocks already offered to the prefix cache
        self.device_only = False  # its KV never goes to (or comes from) a store below the device
        self.status = SequenceStatus.WAITING
        self.arrival_time = time.time() if arrival_time is None else arrival_time
        self.scheduled_time: float | None = None
        self.first_token_time: float | None = None
        self._root = root
        # The first `shared_blocks` blocks are keyed in the shared namespace (published on
        # purpose, e.g. a common system prompt); the chain then re-roots in the tenant's own.
        self._shared_root = shared_root
        self._shared_blocks = shared_blocks if shared_root is not None else 0
        self._keys: list[BlockKey] = []

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    def block_keys(self, block_size: int, upto: int) -> list[BlockKey]:
        """Keys of the first `upto` full blocks, extended lazily (each key chains the last)."""
        while len(self._keys) < upto:
            i = len(self._keys)
            if i < self._shared_blocks:
                assert self._shared_root is not None  # _shared_blocks is 0 without one
                parent = self._keys[-1] if i else self._shared_root
            elif i == self._shared_blocks and i:
                parent = rerooted(self._root, self._keys[-1])
            else:
                parent = self._keys[-1] if self._keys else self._root
            self._keys.append(block_key(parent,
                                        self.token_ids[i * block_size:(i + 1) * block_size]))
        return self._keys[:upto]
