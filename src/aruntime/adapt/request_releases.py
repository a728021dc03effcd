"""Prompt releases as requests use them: `NAME` (the active rollout's assignment, else the
stable version) or `NAME@ALIAS`, resolved to the version's text — verified (provenance and
content) the first time this process serves that version, then kept in memory, so a file
changed afterwards is never what answers."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from aruntime.adapt.artifact import Kind, UnknownRelease
from aruntime.adapt.controller import Assignment, RolloutController


@dataclass(frozen=True)
class PromptUse:
    assignment: Assignment
    text: str  # the system prompt the user's answer is made with
    shadow_text: str | None = None  # the candidate's, for a mirrored request

    @property
    def ref(self) -> str:
        return f"{self.assignment.name}@{self.assignment.version}"


class PromptReleases:
    def __init__(self, controller: RolloutController) -> None:
        self.controller = controller
        self._texts: dict[tuple[str, str], str] = {}
        self._prompts: set[str] = set()  # names known to hold prompt releases
        self._lock = threading.Lock()

    def resolve(self, ref: str, tenant: str, session: str) -> PromptUse:
        name, _, alias = ref.partition("@")
        registry = self.controller.registry
        if not self._is_prompt(name):
            raise UnknownRelease(f"no prompt release named {name!r}")
        if alias:
            version = registry.aliases(name).get(alias)
            if version is None:
                raise UnknownRelease(f"{name} has no alias {alias!r}")
            assignment = Assignment(name, version)
        else:
            assignment = self.controller.assign(name, tenant, session)
        shadow = self.text(name, assignment.shadow) if assignment.shadow else None
        return PromptUse(assignment, self.text(name, assignment.version), shadow)

    def _is_prompt(self, name: str) -> bool:
        """Whether `name` holds prompts: asked of the journal once per name (a name's kind
        never changes), not on every request."""
        with self._lock:
            if name in self._prompts:
                return True
        if self.controller.registry.kind_of(name) is not Kind.PROMPT:
            return False
        with self._lock:
            self._prompts.add(name)
        return True

    def text(self, name: str, version: str) -> str:
        with self._lock:
            known = self._texts.get((name, version))
        if known is not None:
            return known
        registry = self.controller.registry
        text = registry.verified_text(registry.get(name, version))  # refused, if tampered
        with self._lock:
            self._texts[(name, version)] = text
        return text
