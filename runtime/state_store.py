"""The store-backed, encrypted StateStore a provider keeps its browser state in."""

from __future__ import annotations

import asyncio

from providers.base import StateStore
from store.db import Store
from store.models import BrowserState, utcnow


class EncryptedStateStore(StateStore):
    def __init__(self, store: Store, endpoint_id: str) -> None:
        self.store = store
        self.endpoint_id = endpoint_id

    async def load(self) -> bytes | None:
        return await asyncio.to_thread(self._load)

    async def save(self, data: bytes) -> None:
        await asyncio.to_thread(self._save, data)

    def _load(self) -> bytes | None:
        with self.store.session() as session:
            row = session.get(BrowserState, self.endpoint_id)
        return None if row is None else self.store.box.decrypt_bytes(row.data_encrypted)

    def _save(self, data: bytes) -> None:
        token = self.store.box.encrypt(data)
        with self.store.session() as session:
            row = session.get(BrowserState, self.endpoint_id)
            if row is None:
                row = BrowserState(endpoint_id=self.endpoint_id, data_encrypted=token)
            row.data_encrypted = token
            row.updated_at = utcnow()
            session.add(row)
            session.commit()
