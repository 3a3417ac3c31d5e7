"""Chat sessions: history that continues across turns, restarts and instances.

Each turn's messages are committed before the reply is returned. A session's provider state
(for example a web chat's conversation URL) is kept encrypted. Sessions idle for longer than
the session timeout are swept.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import delete, func
from sqlmodel import col, select

from providers.base import Message
from runtime.errors import NotFound
from store.db import Store
from store.models import ChatSession, ChatSessionPublic, MessagePublic, utcnow
from store.models import Message as MessageRow

log = logging.getLogger("aiem.sessions")


@dataclass(slots=True)
class SessionContext:
    id: str
    history: list[Message]
    conversation: dict[str, Any] | None
    next_seq: int
    # The endpoint that answered last: ``conversation`` is that endpoint's own state.
    endpoint_id: str | None = None


def new_messages(history: Sequence[Message], incoming: Sequence[Message]) -> list[Message]:
    """The part of ``incoming`` that is not already in the stored history.

    OpenAI clients often resend the whole conversation; when the incoming messages (system
    messages aside) start with the stored history, only what follows is new.
    """
    turns = [m for m in incoming if m.role != "system"]
    if len(turns) > len(history) and all(
        a.role == b.role and a.content == b.content for a, b in zip(history, turns, strict=False)
    ):
        return turns[len(history) :]
    return turns


class SessionService:
    def __init__(self, store: Store, *, timeout_s: float) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def lock(self, session_id: str) -> asyncio.Lock:
        """Turns of one session run one at a time in this process."""
        lock = self._locks.get(session_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[session_id] = lock
        return lock

    def load(self, session_id: str) -> SessionContext:
        with self.store.session() as session:
            row = session.get(ChatSession, session_id)
            if row is None:
                return SessionContext(session_id, [], None, 0)
            rows = session.exec(
                select(MessageRow)
                .where(MessageRow.session_id == session_id)
                .order_by(col(MessageRow.seq))
            ).all()
        history = [Message(r.role, r.content) for r in rows]  # type: ignore[arg-type]
        next_seq = rows[-1].seq + 1 if rows else 0
        state = self._decrypt_state(row)
        return SessionContext(session_id, history, state, next_seq, row.endpoint_id)

    def append(
        self,
        ctx: SessionContext,
        messages: Sequence[Message],
        *,
        endpoint_id: str,
        conversation: dict[str, Any] | None,
    ) -> None:
        """Commit one turn (the new user messages and the reply) and the provider state."""
        now = utcnow()
        with self.store.session() as session:
            row = session.get(ChatSession, ctx.id)
            if row is None:
                title = next((m.content for m in messages if m.role == "user"), "")[:200]
                row = ChatSession(id=ctx.id, title=title, created_at=now)
            if row.endpoint_id != endpoint_id:
                # Another endpoint answered (a group member, a fallback): the old one's
                # provider state means nothing to it.
                row.provider_state_encrypted = None
            row.endpoint_id = endpoint_id
            row.last_active_at = now
            row.message_count += len(messages)
            if conversation is not None:
                row.provider_state_encrypted = self.store.box.encrypt(orjson.dumps(conversation))
            session.add(row)
            session.flush()
            for offset, message in enumerate(messages):
                session.add(
                    MessageRow(
                        session_id=ctx.id,
                        seq=ctx.next_seq + offset,
                        role=message.role,
                        content=message.content,
                        endpoint_id=endpoint_id,
                        created_at=now,
                    )
                )
            session.commit()
        ctx.next_seq += len(messages)
        ctx.history.extend(messages)
        if conversation is not None or ctx.endpoint_id != endpoint_id:
            ctx.conversation = conversation
        ctx.endpoint_id = endpoint_id

    def _decrypt_state(self, row: ChatSession) -> dict[str, Any] | None:
        if not row.provider_state_encrypted:
            return None
        return orjson.loads(self.store.box.decrypt_bytes(row.provider_state_encrypted))

    # ---- the management API ----------------------------------------------------------------

    def recent(
        self, *, endpoint_id: str | None = None, limit: int = 100
    ) -> list[ChatSessionPublic]:
        stmt = select(ChatSession).order_by(col(ChatSession.last_active_at).desc()).limit(limit)
        if endpoint_id:
            stmt = stmt.where(ChatSession.endpoint_id == endpoint_id)
        with self.store.session() as session:
            rows = session.exec(stmt).all()
        return [ChatSessionPublic.model_validate(r, from_attributes=True) for r in rows]

    def get(self, session_id: str) -> dict[str, Any]:
        with self.store.session() as session:
            row = session.get(ChatSession, session_id)
            if row is None:
                raise NotFound(f"session {session_id!r} not found")
            rows = session.exec(
                select(MessageRow)
                .where(MessageRow.session_id == session_id)
                .order_by(col(MessageRow.seq))
            ).all()
        public = ChatSessionPublic.model_validate(row, from_attributes=True).model_dump()
        state = self._decrypt_state(row) or {}
        public["transcript_replayed"] = bool(state.get("transcript_replayed"))
        public["messages"] = [
            MessagePublic.model_validate(r, from_attributes=True).model_dump() for r in rows
        ]
        return public

    def delete(self, session_id: str) -> None:
        with self.store.session() as session:
            row = session.get(ChatSession, session_id)
            if row is None:
                raise NotFound(f"session {session_id!r} not found")
            session.execute(delete(MessageRow).where(col(MessageRow.session_id) == session_id))
            session.delete(row)
            session.commit()

    def count(self) -> int:
        with self.store.session() as session:
            return int(session.exec(select(func.count()).select_from(ChatSession)).one())

    def sweep(self) -> int:
        """Delete sessions idle for longer than the timeout; returns how many."""
        cutoff = utcnow() - timedelta(seconds=self.timeout_s)
        with self.store.session() as session:
            expired = session.exec(
                select(ChatSession.id).where(col(ChatSession.last_active_at) < cutoff)
            ).all()
            if expired:
                session.execute(delete(MessageRow).where(col(MessageRow.session_id).in_(expired)))
                session.execute(delete(ChatSession).where(col(ChatSession.id).in_(expired)))
                session.commit()
        if expired:
            log.info("swept %d expired sessions", len(expired))
        return len(expired)
