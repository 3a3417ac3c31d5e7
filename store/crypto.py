"""Encryption of secrets at rest (Fernet; several keys through MultiFernet for rotation).

The key comes from AIEM_SECRET_KEY (one or more comma-separated Fernet keys, newest first)
or from a key file created with mode 0600 on first run. A canary encrypted with the first
key is kept in the store so that a wrong key is a clear start-up error, not garbage.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

KEY_FILE_NAME = "secret.key"


class SecretKeyError(RuntimeError):
    """The configured key cannot be used or does not match the store."""


class SecretBox:
    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise SecretKeyError("no encryption key given")
        try:
            self._fernet = MultiFernet([Fernet(k) for k in keys])
        except (ValueError, TypeError) as exc:
            raise SecretKeyError(
                "AIEM_SECRET_KEY is not a valid Fernet key (32 url-safe base64-encoded bytes); "
                "make one with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'"
            ) from exc

    def encrypt(self, plaintext: str | bytes) -> str:
        data = plaintext.encode() if isinstance(plaintext, str) else plaintext
        return self._fernet.encrypt(data).decode("ascii")

    def decrypt_bytes(self, token: str) -> bytes:
        try:
            return self._fernet.decrypt(token.encode("ascii"))
        except (InvalidToken, ValueError) as exc:
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
    path = Path(data_dir) / KEY_FILE_NAME
    if path.exists():
        return [path.read_bytes().strip()]
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Fernet.generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key + b"\n")
    return [key]
