"""How the console is served: its options come from the package whatever the working
directory, the API client's per-poll log lines stay at debug, /docs needs no internet."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import httpx

from gateway.logs import configure as configure_logging
from tests.gateway_proc import REPO_ROOT

HOSTILE_CONFIG = """\
[browser]
gatherUsageStats = true
[client]
toolbarMode = "developer"
[theme]
primaryColor = "#ff0000"
"""


def test_console_options_come_from_the_package_not_the_working_directory(tmp_path):
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "config.toml").write_text(HOSTILE_CONFIG)
    probe = textwrap.dedent("""
        from gateway.app import _console_app
        _console_app()
        from streamlit import config
        for name in ("browser.gatherUsageStats", "client.toolbarMode", "theme.primaryColor",
                     "server.headless"):
            print(name, config.get_option(name))
    """)

    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )

    assert out.returncode == 0, out.stderr
    options = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert options == {
        "browser.gatherUsageStats": "False",
        "client.toolbarMode": "minimal",
        "theme.primaryColor": "#2563eb",
        "server.headless": "True",
    }


def test_client_request_lines_only_at_debug(caplog):
    root = logging.getLogger()
    saved = root.handlers[:], root.level

    def logged_requests(level: str) -> list[str]:
        logging.getLogger("httpx").setLevel(logging.NOTSET)
        configure_logging(level, "text")
        root.addHandler(caplog.handler)
        caplog.clear()
        transport = httpx.MockTransport(lambda request: httpx.Response(200))
        httpx.Client(transport=transport).get("http://127.0.0.1/endpoints")
        return [r.getMessage() for r in caplog.records if r.name == "httpx"]

    try:
        assert logged_requests("info") == []
        assert any("HTTP Request: GET" in line for line in logged_requests("debug"))
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
        logging.getLogger("httpx").setLevel(logging.NOTSET)


def test_docs_page_loads_its_assets_from_this_server(api):
    page = api.get("/docs")

    assert page.status_code == 200
    assert "cdn." not in page.text and "https://" not in page.text
    assert "/static-offline-docs/swagger-ui-bundle.js" in page.text
    script = api.get("/static-offline-docs/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 500_000
    assert "SwaggerUIBundle" in script.text[:2000]
    assert api.get("/static-offline-docs/swagger-ui.css").status_code == 200
    assert api.get("/openapi.json").json()["paths"]["/metrics/series"]
