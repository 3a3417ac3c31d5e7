"""The name an instance goes by (light on purpose: the CLI's settings import it).

An instance's stable name (AIEM_INSTANCE_NAME, else its advertised host:port) keys its metric
buckets across restarts; the store keeps at most ``INSTANCE_NAME_MAX`` characters of it.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

INSTANCE_NAME_MAX = 100


def instance_name_for(advertise_url: str) -> str:
    """A stable default name: the advertised URL's host:port, else this machine's host name."""
    parts = urlsplit(advertise_url)
    if not parts.hostname:
        return socket.gethostname()
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{host}:{port}"
