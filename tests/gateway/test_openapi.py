"""The OpenAPI document tells the truth: every operation, fuzzed against the real gateway.

A bounded schemathesis run (a few generated requests per operation, deterministic) must find
no server error, no undocumented status, no undocumented content type and no body that breaks
the documented schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.gateway_proc import GatewayProcess

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
ERROR_STATUSES = ("400", "404", "409", "413", "422", "429", "502", "503", "504")


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory) -> Iterator[str]:
    from cryptography.fernet import Fernet

    gateway = GatewayProcess(
        tmp_path_factory.mktemp("openapi"),
        secret_key=Fernet.generate_key().decode(),
        env={"AIEM_MAX_BODY_BYTES": "65536"},
    )
    gateway.start()
    yield gateway.url
    gateway.stop()


@pytest.fixture(scope="module")
def document(gateway_url) -> dict[str, Any]:
    return dict(httpx.get(gateway_url + "/openapi.json").json())


@pytest.fixture(scope="module")
def api_schema(gateway_url):
    return schemathesis.openapi.from_url(gateway_url + "/openapi.json")


def test_every_error_status_is_documented_with_its_body(document):
    operations = [
        (path, method, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if path not in ("/healthz", "/readyz")
    ]
    assert len(operations) >= 15
    for path, method, op in operations:
        for status in ERROR_STATUSES:
            response = op["responses"].get(status)
            assert response is not None, (method, path, status)
            schema = response["content"]["application/json"]["schema"]
            assert "$ref" in schema, (method, path, status)


def test_one_422_shape_and_the_chat_route_is_in_the_schema(document):
    schemas = document["components"]["schemas"]
    validation = schemas["ValidationErrorBody"]
    assert set(validation["required"]) == {"detail", "kind", "errors"}
    refs = {
        op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
        for path, item in document["paths"].items()
        if not path.startswith("/v1/")
        for op in item.values()
        if "422" in op["responses"]
    }
    assert refs == {"#/components/schemas/ValidationErrorBody"}
    chat = document["paths"]["/v1/chat/completions"]["post"]
    body = chat["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["model", "messages"]
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}


def test_the_422_bodies_match_the_document(gateway_url):
    with httpx.Client(base_url=gateway_url) as api:
        bodies = [
            api.post("/endpoints", json={"name": "has space", "endpoint_type": "x"}).json(),
            api.post("/endpoints", json={"name": "ok", "endpoint_type": "fax"}).json(),
            api.get("/endpoints/a%00b").json(),
            api.get("/endpoints/x/events", params={"limit": 0}).json(),
        ]
    for body in bodies:
        assert set(body) == {"detail", "kind", "errors"}, body
        assert isinstance(body["detail"], str) and body["errors"], body


def test_every_operation_against_the_real_gateway(api_schema):
    labels = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(
            max_examples=6,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            case.call_and_validate(checks=CHECKS)

        check()
    assert "POST /v1/chat/completions" in labels and len(labels) >= 17
