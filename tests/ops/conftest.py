from __future__ import annotations

from tests.fixtures.upstreams import openai_upstream  # noqa: F401
