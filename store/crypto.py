"""Encryption of secrets at rest (Fernet; several keys through MultiFernet for rotation).

The key comes from AIEM_SECRET_KEY (one or more comma-separated Fernet keys, newest first)
or from a key file created with mode 0600 on first run (one key a line, newest first). A
canary encrypted with the first key is kept in the store so that a wrong key is a clear
start-up error, not garbage.

Rotation without downtime (``aiem keys rotate``): a new key is put first in the key file and
every secret is re-encrypted under it; the old keys stay in the file so that anything still
holding them keeps working. A running instance that meets a secret it cannot decrypt reads
the key file again (``SecretBox(reload=...)``), so it learns the new key without a restart.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

KEY_FILE_NAME = "secret.key"


class SecretKeyError(RuntimeError):
    """The configured key cannot be used or does not match the store."""


def _multi(keys: list[bytes]) -> MultiFernet:
    if not keys:
        raise SecretKeyError("no encryption key given")
    try:
        return MultiFernet([Fernet(k) for k in keys])
    except (ValueError, TypeError) as exc:
        raise SecretKeyError(
            "AIEM_SECRET_KEY is not a valid Fernet key (32 url-safe base64-encoded bytes); "
            "make one with: python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'"
        ) from exc


class SecretBox:
    def __init__(
        self, keys: list[bytes], *, reload: Callable[[], list[bytes]] | None = None
    ) -> None:
        self._keys = list(keys)
        self._fernet = _multi(self._keys)
        self._reload = reload
        self._lock = threading.Lock()

    @property
    def keys(self) -> list[bytes]:
        return list(self._keys)

    def _reloaded(self) -> bool:
        """Read the keys again (a rotation may have added one); True when they changed."""
        if self._reload is None:
            return False
        with self._lock:
            try:
                keys = self._reload()
            except (OSError, SecretKeyError):
                return False
            if not keys or keys == self._keys:
                return False
            self._fernet, self._keys = _multi(keys), keys
            return True

    def encrypt(self, plaintext: str | bytes) -> str:
        data = plaintext.encode() if isinstance(plaintext, str) else plaintext
        return self._fernet.encrypt(data).decode("ascii")

    def decrypt_bytes(self, token: str) -> bytes:
        try:
            return self._fernet.decrypt(token.encode("ascii"))
        except (InvalidToken, ValueError) as exc:
            if self._reloaded():
                return self.decrypt_bytes(token)
            raise SecretKeyError(
                "stored secrets cannot be decrypted with the configured key"
            ) from exc

    def decrypt(self, token: str) -> str:
        return self.decrypt_bytes(token).decode()

    def rotate(self, token: str) -> str:
        return self._fernet.rotate(token.encode("ascii")).decode("ascii")


def load_keys(secret_key: str | None, data_dir: Path) -> list[bytes]:
    """Keys from the setting, else from (or into) the key file under ``data_dir``."""
    if secret_key and secret_key.strip():
        return [k.strip().encode() for k in secret_key.split(",") if k.strip()]
    path = key_file(data_dir)
    if path.exists():
        return read_key_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key + b"\n")
    return [key]


def key_file(data_dir: Path) -> Path:
    return Path(data_dir) / KEY_FILE_NAME


def read_key_file(path: Path) -> list[bytes]:
    return [line.strip() for line in path.read_bytes().splitlines() if line.strip()]


def write_key_file(path: Path, keys: list[bytes]) -> None:
    """Replace the key file atomically, mode 0600 from the first byte."""
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(b"".join(k + b"\n" for k in keys))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def open_box(secret_key: str | None, data_dir: Path) -> SecretBox:
    """The box for a store: keys from the setting, or from the key file (re-read on need)."""
    keys = load_keys(secret_key, data_dir)
    if secret_key and secret_key.strip():
        return SecretBox(keys)
    return SecretBox(keys, reload=lambda: read_key_file(key_file(data_dir)))
