"""Endpoint events as they happen, for whoever listens (webhooks, the health monitor, metrics).

The repository writes every event row and then publishes it here. Listeners are plain
callables run in the thread that committed the event; they must be quick and must not raise
(a listener that fails is logged and the others still run).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

log = logging.getLogger("aiem.events")


@dataclass(frozen=True, slots=True)
class EndpointEventNote:
    endpoint_id: str
    endpoint_name: str
    kind: str
    at: datetime
    from_state: str | None = None
    to_state: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint_id": self.endpoint_id,
            "endpoint": self.endpoint_name,
            "kind": self.kind,
            "at": self.at.isoformat(),
            "from_state": self.from_state,
            "to_state": self.to_state,
            "detail": self.detail,
        }


Listener = Callable[[EndpointEventNote], None]


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def publish(self, note: EndpointEventNote) -> None:
        for listener in list(self._listeners):
            try:
                listener(note)
            except Exception:  # noqa: BLE001 - one broken listener must not stop the others
                log.exception("event listener %r failed", listener)
