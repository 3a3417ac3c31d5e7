"""Step 6, refine: when a draft fails validation or the probe, try again with what was learned.

With an LLM, the diagnostics go back to it and it chooses again; an answer that cannot be
used (not JSON, outside the schema, a refusal) hands over to the heuristics. Without one,
the next heuristic combination is tried. Combinations already tried are never repeated.
"""

from __future__ import annotations

import logging

from discovery.draft_heuristic import Choice, draft_choices
from discovery.draft_llm import LLMDrafter
from discovery.errors import LLMFailed, NoChatFound
from discovery.reduce import Reduced

log = logging.getLogger("aiem.discovery")


def key_of(choice: Choice) -> tuple[int, int | None]:
    return choice.input.idx, choice.send.idx if choice.send else None


class Refiner:
    def __init__(self, reduced: Reduced, llm: LLMDrafter | None) -> None:
        self.reduced = reduced
        self.llm = llm
        self.heuristic = draft_choices(reduced)
        self.tried: set[tuple[int, int | None]] = set()
        self.notes: list[str] = []

    @property
    def using_llm(self) -> bool:
        return self.llm is not None

    async def first(self) -> Choice:
        choice = await self._next([])
        if choice is None:
            raise NoChatFound("no chat input found on the page")
        return choice

    async def next(self, diagnostics: list[str]) -> Choice | None:
        return await self._next(diagnostics)

    async def _next(self, diagnostics: list[str]) -> Choice | None:
        if self.llm is not None:
            try:
                choice = await self.llm.draft(self.reduced, diagnostics or None)
                self.tried.add(key_of(choice))
                return choice
            except LLMFailed as exc:
                self.notes.append(f"{exc.message}; falling back to the heuristics")
                log.info("discovery: %s; using heuristics", exc.message)
                self.llm = None
        for choice in self.heuristic:
            if key_of(choice) not in self.tried:
                self.tried.add(key_of(choice))
                return choice
        return None

    def agrees_with_heuristics(self, choice: Choice) -> bool:
        return bool(self.heuristic) and key_of(self.heuristic[0])[0] == choice.input.idx
