"""Add / edit an endpoint with a form generated from the API's schemas.

The shared endpoint fields come from the API's own description of ``EndpointCreate``; the
provider section from the type's ``config_schema`` in ``GET /providers``; the secrets from the
type's ``credential_fields``. Nothing here is written per endpoint type, so a provider added by a
plugin gets its form with no console change.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import streamlit as st

from console.client import ApiClient, ApiError, get_client
from console.forms import SchemaForm
from console.ui import PAGES, flash

FLASH_KEY = "edit_flash"
ERRORS_KEY = "edit_server_errors"
# Fields of EndpointCreate that get their own widgets (or none) instead of the generic ones.
SPECIAL_FIELDS = frozenset({"endpoint_type", "config", "browser_config", "credentials", "start"})
TEST_PROMPT = "Reply with one short sentence to confirm you are reachable."


# -- building the request ------------------------------------------------------------------------
def credentials_input(provider: dict[str, Any], key: str, existing: list[str]) -> dict[str, str]:
    fields = list(dict.fromkeys([*provider.get("credential_fields", []), *existing]))
    if not fields:
        return {}
    st.markdown("**Credentials**")
    if existing:
        st.caption(
            f"Stored: {', '.join(existing)}. Leave every box empty to keep them; filling any "
            "replaces the whole set, so fill each key you want to keep."
        )
    values = {}
    for name in fields:
        value = st.text_input(
            name, type="password", key=f"{key}:cred:{name}", placeholder="unchanged",
            help="Stored encrypted; never shown again.",
        )
        if value:
            values[name] = value
    return values


def browser_config_input(provider: dict[str, Any], key: str, current: dict[str, Any]) -> Any:
    if not provider.get("capabilities", {}).get("needs_browser"):
        return None
    text = st.text_area(
        "Browser config (JSON)", value=json.dumps(current, indent=2) if current else "",
        key=f"{key}:browser", help="Viewport, locale, user agent, proxy… of the Chromium context.",
    )
    if not text.strip():
        return {}
    try:
        return json.loads(text)
    except ValueError as exc:
        st.caption(f":red[browser_config: not valid JSON ({exc})]")
        return ...


def form_view(
    client: ApiClient, provider: dict[str, Any], endpoint: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The generated form; returns the request body, or None while some input is unreadable."""
    errors = st.session_state.get(ERRORS_KEY, {})
    key = f"form-{endpoint['id'] if endpoint else 'new'}-{provider['endpoint_type']}"
    common_schema = client.endpoint_create_schema()
    exclude = SPECIAL_FIELDS | ({"name"} if endpoint else frozenset())
    st.markdown("**Endpoint**")
    common = SchemaForm(common_schema, key + ":common", initial=endpoint or {},
                        server_errors=errors)
    body = common.render(exclude=exclude, keep_defaults=endpoint is not None)
    if not endpoint:
        body["endpoint_type"] = provider["endpoint_type"]
    credentials = credentials_input(provider, key, (endpoint or {}).get("credential_keys") or [])
    st.markdown(f"**{provider.get('title') or provider['endpoint_type']} settings**")
    if provider.get("description"):
        st.caption(provider["description"])
    config_form = SchemaForm(
        provider["config_schema"], key + ":config", initial=(endpoint or {}).get("config") or {},
        server_errors=errors, error_prefix="config.",
    )
    body["config"] = config_form.render()
    browser = browser_config_input(provider, key, (endpoint or {}).get("browser_config") or {})
    if common.errors or config_form.errors or browser is ...:
        return None
    if browser is not None:
        body["browser_config"] = browser
    if credentials or not endpoint:
        body["credentials"] = credentials
    return body


def json_view(provider: dict[str, Any], endpoint: dict[str, Any] | None) -> dict[str, Any] | None:
    """The raw alternative: the same request body as JSON text."""
    if endpoint:
        start = {k: v for k, v in endpoint.items()
                 if k not in ("id", "state", "state_reason", "state_changed_at", "desired_state",
                              "created_at", "updated_at", "stats", "credential_keys", "name",
                              "endpoint_type")}
    else:
        start = {"name": "", "endpoint_type": provider["endpoint_type"], "url": "",
                 "model_name": "", "config": {}, "credentials": {}}
    text = st.text_area("Request body (JSON)", value=json.dumps(start, indent=2), height=420,
                        key=f"json-{endpoint['id'] if endpoint else provider['endpoint_type']}")
    try:
        body = json.loads(text)
    except ValueError as exc:
        st.error(f"Not valid JSON: {exc}")
        return None
    if not isinstance(body, dict):
        st.error("The body must be a JSON object.")
        return None
    return body


# -- actions ---------------------------------------------------------------------------------------
def save(client: ApiClient, body: dict[str, Any], endpoint: dict[str, Any] | None) -> None:
    try:
        saved = (client.update_endpoint(endpoint["id"], body) if endpoint
                 else client.create_endpoint(body))
    except ApiError as exc:
        fail(f"Not saved. {exc.message}", exc.field_errors)
    st.session_state.pop(ERRORS_KEY, None)
    st.session_state["endpoint_flash"] = ("success", f"Saved **{saved['name']}**.")
    st.switch_page(PAGES["endpoint"], query_params={"id": saved["id"]})


def test_message(client: ApiClient, body: dict[str, Any], endpoint: dict[str, Any] | None) -> None:
    """Send one message through a throw-away copy of the endpoint, then delete the copy."""
    base = (body.get("name") or (endpoint or {}).get("name") or "endpoint")[:60]
    spec = {**body, "name": f"{base}-test-{uuid.uuid4().hex[:6]}", "start": True}
    if endpoint:
        spec["endpoint_type"] = endpoint["endpoint_type"]
        if "credentials" not in body and endpoint.get("credential_keys"):
            st.warning("Testing an edit needs the credentials typed again (never read back).")
    created = None
    try:
        with st.spinner("Starting a test copy and sending one message…"):
            created = client.create_endpoint(spec)
            answer = client.chat(created["id"], {"prompt": TEST_PROMPT})
    except ApiError as exc:
        fail(f"Test failed. {exc.message}", exc.field_errors)
    finally:
        if created:
            try:
                client.delete_endpoint(created["id"])
            except ApiError:
                st.caption(f"The test copy {created['name']} could not be deleted.")
    st.session_state[FLASH_KEY] = (
        "success", f"Test answer in {answer.get('latency_ms', 0):.0f} ms: {answer.get('content')}"
    )
    st.rerun()


def fail(message: str, field_errors: dict[str, str]) -> None:
    """Keep the message and the field errors, and render again so each shows by its field."""
    st.session_state[ERRORS_KEY] = field_errors
    st.session_state[FLASH_KEY] = ("error", message)
    st.rerun()


# -- page ------------------------------------------------------------------------------------------
def choose_provider(providers: list[dict[str, Any]], endpoint: dict[str, Any] | None):
    by_type = {p["endpoint_type"]: p for p in providers}
    if endpoint:
        provider = by_type.get(endpoint["endpoint_type"])
        if provider is None:
            st.error(f"This instance has no provider for type {endpoint['endpoint_type']!r}.")
        return provider
    types = list(by_type)
    wanted = st.query_params.get("type")  # e.g. /edit?type=web_chat
    chosen = st.selectbox(
        "Endpoint type", types, key="edit-type",
        index=types.index(wanted) if wanted in by_type else 0,
        format_func=lambda t: f"{by_type[t].get('title') or t} ({t})",
    )
    return by_type[chosen]


def main() -> None:
    client = get_client()
    endpoint_id = st.query_params.get("id")
    st.title("Edit endpoint" if endpoint_id else "Add endpoint")
    flash(FLASH_KEY)
    try:
        providers = client.providers()
        endpoint = client.get_endpoint(endpoint_id) if endpoint_id else None
    except ApiError as exc:
        st.error(f"The management API could not be read. {exc.message}")
        return
    if endpoint:
        st.caption(f"`{endpoint['name']}` · {endpoint['endpoint_type']}")
    provider = choose_provider(providers, endpoint)
    if provider is None:
        return
    raw = st.toggle("Edit as JSON", key="edit-raw")
    try:
        body = json_view(provider, endpoint) if raw else form_view(client, provider, endpoint)
    except ApiError as exc:
        st.error(f"The management API could not be read. {exc.message}")
        return
    if not endpoint and body is not None and not raw:
        body["start"] = st.checkbox("Start it after saving", key="edit-start")
    with st.container(horizontal=True, gap="small"):
        test = st.button("Test", key="edit-test", icon=":material/science:",
                         disabled=body is None, help="Send one message before saving.")
        submit = st.button("Save" if endpoint else "Create", key="edit-save", type="primary",
                           disabled=body is None, icon=":material/save:")
    if body is not None and test:
        test_message(client, body, endpoint)
    if body is not None and submit:
        save(client, body, endpoint)


main()
