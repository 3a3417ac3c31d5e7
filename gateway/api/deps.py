from __future__ import annotations

from fastapi import Request

from runtime.core import Runtime


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]
