"""`aiem discover` against a running instance."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.gateway.test_cli import aiem

pytestmark = pytest.mark.browser


def test_discover_and_approve_prints_the_final_document(discovery_gateway, discovery_sites, api):
    name = f"cli-found-{uuid.uuid4().hex[:6]}"
    url = discovery_sites.url("/divbutton/")
    run = aiem(
        "discover",
        url,
        "--no-llm",
        "--approve",
        name,
        "--json",
        env={"AIEM_API_URL": discovery_gateway.url},
    )

    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["status"] == "approved" and doc["probe_passed"] and doc["url"] == url
    endpoint = api.get(f"/endpoints/{doc['endpoint_id']}").json()
    assert endpoint["name"] == name and endpoint["discovered_by_ai"] is True


def test_progress_draft_and_probe_are_printed(discovery_gateway, discovery_sites):
    run = aiem(
        "discover", discovery_sites.url("/shadow/"), env={"AIEM_API_URL": discovery_gateway.url}
    )

    assert run.returncode == 0, run.stderr
    assert "discover: crawling" in run.stderr or "discover: queued" in run.stderr
    assert ": ready" in run.stdout and "probe passed: True" in run.stdout
    assert '"input": [' in run.stdout and "read 'Reply 2:" in run.stdout
    assert "timings: crawl" in run.stdout


def test_failed_discovery_exits_non_zero(discovery_gateway, discovery_sites):
    run = aiem(
        "discover",
        discovery_sites.url("/nochat/"),
        "--approve",
        "never",
        env={"AIEM_API_URL": discovery_gateway.url},
    )
    assert run.returncode == 1
    assert "no chat input found" in run.stdout and "not approved" in run.stderr


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
