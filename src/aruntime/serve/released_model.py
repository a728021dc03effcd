"""A model served as a release (`serve --release model=NAME`): the server's engine serves NAME's
stable version and, while a rollout of NAME runs, a second engine loaded with the candidate's
checkpoint — verified first — serves the share the rollout assigns it (or a shadow's copies).

Traffic reaches a candidate only once its engine is ready, as Argo Rollouts shifts weight only
to an available canary: until then a request assigned to it is served by stable and gives no
sample. A candidate shares stable's tokenizer and chat template (one prompt serves both); one
that cannot be verified, loaded or served here aborts its rollout with the reason. After a
promotion the candidate's engine becomes the server's and the old one is closed once its
requests have finished; after an abort the candidate's is closed the same way.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aruntime.adapt.artifact import Kind, ReleaseError
from aruntime.adapt.controller import RolloutController
from aruntime.adapt.registry import STABLE
from aruntime.cluster.serving import ServingPool
from aruntime.engine.core_proc import ModelInfo
from aruntime.engine.tokenizer import Tokenizer

if TYPE_CHECKING:
    from aruntime.serve.state import ServerState

logger = logging.getLogger(__name__)
RETIRE_TICKS = 2  # ticks an unwanted, idle engine waits before it is closed


@dataclass
class Engine:
    version: str
    client: ServingPool
    info: ModelInfo
    streams: int = 0  # engine requests in flight on it (serve/generation.py counts them)
    idle_ticks: int = 0


def same_tokenizer(a: Tokenizer, b: Tokenizer) -> bool:
    return a.backend.to_str() == b.backend.to_str() and a.chat_template == b.chat_template


class ModelEngines:
    def __init__(self, name: str, open_engine: Callable[[Path], ServingPool]) -> None:
        self.name = name
        self._open = open_engine  # a checkpoint -> its pool, not started
        self._engines: dict[str, Engine] = {}
        self._busy: set[str] = set()  # versions being started, or refused (never again)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # an engine became ready, or closed
        self._syncing = threading.Lock()  # one sync at a time (the tick's, a test's)
        self._state: ServerState | None = None

    def attach(self, state: ServerState) -> None:
        """The server's own engine is the stable version's (ReleaseError if it is not)."""
        stable = state.adaptation.registry.aliases(self.name).get(STABLE)
        if stable != state.info.revision:
            raise ReleaseError(f"the server's model {state.info.revision[:19]} is not "
                               f"{self.name}'s stable version ({str(stable)[:19]})")
        self._state = state
        self._first = self._engines[stable] = Engine(stable, state.client, state.info)

    @property
    def controller(self) -> RolloutController:
        assert self._state is not None, "attach() first"
        return self._state.adaptation

    def ready(self, version: str) -> Engine | None:
        with self._lock:
            return self._engines.get(version)

    def wait_closed(self, version: str, timeout: float) -> bool:
        """Whether the version's engine is closed (or never started) within `timeout`."""
        with self._changed:
            return self._changed.wait_for(lambda: version not in self._engines, timeout)

    def wait_ready(self, version: str, timeout: float) -> Engine | None:
        """The version's engine once it is ready (None if it is not within `timeout`)."""
        with self._changed:
            self._changed.wait_for(lambda: version in self._engines, timeout)
            return self._engines.get(version)

    def primary(self) -> Engine:
        """The engine that serves whatever has no other (the server's own)."""
        assert self._state is not None
        with self._lock:
            return next(e for e in self._engines.values() if e.client is self._state.client)

    # -- on the controller's tick (a worker thread)

    def sync(self) -> None:
        """Start the engines the rollouts of NAME want, promote stable's, retire the rest."""
        with self._syncing:
            self._sync()

    def _sync(self) -> None:
        assert self._state is not None
        registry = self.controller.registry
        stable = registry.aliases(self.name).get(STABLE)
        rollout = self.controller.active(self.name)  # read back by the tick just before
        wanted = {v for v in (stable, rollout.candidate if rollout else None) if v is not None}
        for version in wanted - self._engines.keys() - self._busy:
            self._busy.add(version)
            threading.Thread(target=self._start, args=(version, rollout.rollout_id if rollout
                                                       else None),
                             name=f"aruntime-model-{version[7:15]}", daemon=True).start()
        ready = self.ready(stable) if stable is not None else None
        if ready is not None and ready.client is not self._state.client:
            self._state.client, self._state.info = ready.client, ready.info
            logger.info("model %s: %s now serves (promoted)", self.name, stable)
        self._retire(wanted)

    def _retire(self, wanted: set[str]) -> None:
        assert self._state is not None
        with self._lock:
            done = []
            for e in self._engines.values():
                if e.version in wanted or e.client is self._state.client or e.streams:
                    e.idle_ticks = 0
                    continue
                e.idle_ticks += 1
                if e.idle_ticks >= RETIRE_TICKS:
                    done.append(e)
            for e in done:
                del self._engines[e.version]
                self._busy.discard(e.version)
            self._changed.notify_all()
        for e in done:
            logger.info("model %s: the engine of %s is closed", self.name, e.version)
            e.client.close()

    def _start(self, version: str, rollout_id: str | None) -> None:
        try:
            engine = self._load(version)
        except Exception as exc:  # anything: the candidate cannot serve here, and says why
            logger.warning("model %s: %s cannot serve: %s", self.name, version, exc)
            if rollout_id is not None:
                with contextlib.suppress(ReleaseError):  # it may have finished meanwhile
                    self.controller.abort(rollout_id, "server",
                                          f"the candidate model cannot serve here: {exc}")
            return
        with self._changed:
            self._engines[version] = engine
            self._changed.notify_all()
        logger.info("model %s: the engine of %s is ready", self.name, version)

    def _load(self, version: str) -> Engine:
        assert self._state is not None
        registry = self.controller.registry
        release = registry.get(self.name, version)
        if release.kind is not Kind.MODEL:
            raise ReleaseError(f"{self.name} holds {release.kind.value} releases")
        registry.verify(release)  # a checkpoint changed after `release add` never loads
        path = Path(release.stored)
        if not same_tokenizer(Tokenizer.from_path(path), self._state.tokenizer):
            raise ReleaseError("its tokenizer or chat template differs from the server's")
        client = self._open(path)
        info = client.start()
        if info.revision != version:  # what loaded is not what was verified
            client.close()
            raise ReleaseError(f"it loaded as {info.revision[:19]}")
        return Engine(version, client, info)

    def close(self) -> None:
        """Every engine but the one serving now and the one the server started with (the app
        shuts those down)."""
        if self._state is None:
            return
        with self._lock:
            others = [e for e in self._engines.values()
                      if e.client is not self._state.client and e is not self._first]
            self._engines.clear()
        for e in others:
            e.client.close()
