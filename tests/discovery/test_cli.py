"""`aiem discover` against a running instance."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.cli_run import aiem

pytestmark = pytest.mark.browser


def test_discover_prints_progress_draft_probe_and_approves(discovery_gateway, discovery_sites, api):
    name = f"cli-found-{uuid.uuid4().hex[:6]}"
    url = discovery_sites.url("/divbutton/")
    run = aiem(
        "discover",
        url,
        "--no-llm",
        "--approve",
        name,
        "--start",
        env={"AIEM_API_URL": discovery_gateway.url},
    )

    assert run.returncode == 0, run.stderr
    assert "discover: crawling" in run.stderr and f"approved: endpoint {name}" in run.stderr
    assert ": approved" in run.stdout and "probe passed: True" in run.stdout
    assert '"input": [' in run.stdout and "read 'Reply 2:" in run.stdout
    assert "timings: crawl" in run.stdout and "completion signals: text_stable" in run.stdout
    endpoint = next(e for e in api.get("/endpoints").json() if e["name"] == name)
    assert endpoint["discovered_by_ai"] is True and endpoint["url"] == url
    assert endpoint["state"] == "healthy"
    api.post(f"/endpoints/{endpoint['id']}/stop")


def test_failed_discovery_exits_non_zero_with_the_json_document(discovery_gateway, discovery_sites):
    run = aiem(
        "discover",
        discovery_sites.url("/nochat/"),
        "--approve",
        "never",
        "--json",
        env={"AIEM_API_URL": discovery_gateway.url},
    )
    assert run.returncode == 1 and "not approved" in run.stderr
    doc = json.loads(run.stdout)
    assert (doc["status"], doc["reason"]) == ("failed", "no_chat")
    assert doc["message"] == "no chat input found on the page" and doc["config"] is None


def test_bad_url_is_one_error_line(discovery_gateway):
    run = aiem("discover", "ftp://example.com/", env={"AIEM_API_URL": discovery_gateway.url})
    assert run.returncode == 2
    assert run.stderr.startswith("aiem: error: 422") and run.stderr.count("\n") == 1
    assert "only http and https" in run.stderr


def test_llm_flags_are_checked_before_calling(discovery_gateway):
    run = aiem(
        "discover",
        "https://x.example/",
        "--llm-base-url",
        "http://127.0.0.1:1/v1",
        env={"AIEM_API_URL": discovery_gateway.url},
    )
    assert run.returncode == 2 and "--llm-base-url needs --llm-model" in run.stderr
