from __future__ import annotations

from tests.fixtures.upstreams import openai_upstream, rest_upstream  # noqa: F401
