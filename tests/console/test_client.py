"""console/client.py against the real management API and against a port nobody listens on."""

from __future__ import annotations

import pytest

from console.client import ApiClient, ApiError


def test_lists_created_endpoint_without_secrets(api_client, make_endpoint):
    created = make_endpoint(api_key="sk-console-secret-1")

    listed = {e["id"]: e for e in api_client.list_endpoints()}

    assert created["id"] in listed
    endpoint = listed[created["id"]]
    assert endpoint["state"] == "stopped"
    assert endpoint["credential_keys"] == ["api_key"]
    assert "sk-console-secret-1" not in repr(listed)


def test_filters_by_state(api_client, make_endpoint):
    stopped = make_endpoint()
    running = make_endpoint()
    api_client.start_endpoint(running["id"])

    healthy_ids = {e["id"] for e in api_client.list_endpoints(state="healthy")}

    assert running["id"] in healthy_ids
    assert stopped["id"] not in healthy_ids


def test_start_and_stop_return_the_new_state(api_client, make_endpoint):
    endpoint = make_endpoint()

    started = api_client.start_endpoint(endpoint["id"])
    stopped = api_client.stop_endpoint(endpoint["id"])

    assert (started["desired_state"], started["state"]) == ("running", "healthy")
    assert (stopped["desired_state"], stopped["state"]) == ("stopped", "stopped")


def test_system_metrics_count_endpoints(api_client, make_endpoint):
    make_endpoint()

    metrics = api_client.system_metrics()

    assert metrics["total_endpoints"] >= 1
    assert "requests_per_second" in metrics


def test_api_error_carries_the_api_message(api_client):
    with pytest.raises(ApiError) as caught:
        api_client.start_endpoint("no-such-endpoint")

    assert caught.value.status_code == 404
    assert caught.value.message.startswith("HTTP 404: ")
    assert len(caught.value.message) > len("HTTP 404: ")


def test_validation_errors_name_the_field(api_client):
    with pytest.raises(ApiError) as caught:
        api_client.create_endpoint({"display_name": "no name, no type"})

    assert caught.value.status_code == 422
    assert caught.value.message.startswith("HTTP 422: ")
    assert "name" in caught.value.message and "endpoint_type" in caught.value.message


def test_unreachable_api_is_one_clear_error_without_the_token(closed_port_url):
    client = ApiClient(closed_port_url, token="admin-token-never-shown")

    with pytest.raises(ApiError) as caught:
        client.list_endpoints()

    assert "Cannot reach the management API" in caught.value.message
    assert closed_port_url in caught.value.message
    assert "admin-token-never-shown" not in caught.value.message
    assert caught.value.status_code is None
