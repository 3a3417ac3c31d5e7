"""Files under the data dir are the owner's alone: conversations and keys are not shared."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from store.db import DataDirError, Store
from store.models import ChatSession


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_data_dir_and_its_files_are_private(tmp_path, secret_key):
    data_dir = tmp_path / "nested" / "data"
    store = Store.open(url=f"sqlite:///{data_dir / 'aiem.db'}", data_dir=data_dir, secret_key=None)
    with store.session() as session:  # a write, so the WAL and shared-memory files exist
        session.add(ChatSession(id="private-talk", title="between us"))
        session.commit()
    names = {p.name for p in data_dir.iterdir()}
    assert {"aiem.db", "aiem.db-wal", "aiem.db-shm", "secret.key"} <= names
    assert mode(data_dir) == 0o700
    for path in data_dir.iterdir():
        assert mode(path) == 0o600, path
    store.dispose()


def test_an_existing_loose_data_dir_is_tightened(tmp_path, secret_key):
    data_dir = tmp_path / "old"
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)
    database = data_dir / "aiem.db"
    database.touch()
    os.chmod(database, 0o644)
    store = Store.open(url=f"sqlite:///{database}", data_dir=data_dir, secret_key=secret_key)
    store.dispose()
    assert mode(data_dir) == 0o700 and mode(database) == 0o600


def test_a_data_dir_that_cannot_be_written_is_one_clear_error(tmp_path, secret_key):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(DataDirError) as caught:
        Store.open(url="sqlite://", data_dir=blocker / "data", secret_key=secret_key)
    message = str(caught.value)
    assert str(blocker / "data") in message and "AIEM_DATA_DIR" in message


@pytest.mark.skipif(os.getuid() == 0, reason="root writes through any permission")
def test_a_read_only_data_dir_is_one_clear_error(tmp_path, secret_key):
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:
        with pytest.raises(DataDirError, match="not writable"):
            Store.open(url="sqlite://", data_dir=locked, secret_key=secret_key)
    finally:
        os.chmod(locked, 0o700)
