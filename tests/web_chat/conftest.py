"""Fixtures of the web chat tests: the fixture sites served on 127.0.0.1, Chromium checks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.web_chat.browser import SYSTEM_CHROMIUM
from tests.web_chat.webchat_sites import SiteServer


def chromium_available() -> bool:
    configured = os.environ.get("AIEM_BROWSER_EXECUTABLE")
    playwright_own = Path.home() / ".cache" / "ms-playwright"
    return any(
        (
            bool(configured and Path(configured).exists()),
            Path(SYSTEM_CHROMIUM).exists(),
            any(playwright_own.glob("chromium-*")),
        )
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="no Chromium (set AIEM_BROWSER_EXECUTABLE)")
    for item in items:
        if here in Path(str(item.fspath)).parents and "browser" in item.keywords:
            if not chromium_available():
                item.add_marker(skip)


@pytest.fixture(scope="session")
def sites() -> Iterator[SiteServer]:
    server = SiteServer().start()
    yield server
    server.stop()
