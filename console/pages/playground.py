"""Playground: chat with an endpoint, answers streamed as they arrive, figures under each."""

from __future__ import annotations

import uuid
from typing import Any

import streamlit as st

from console.client import ApiClient, ApiError, get_client
from console.ui import fmt_cost, fmt_latency, pick_endpoint

NEW_SESSION = "__new__"


def session_choice(client: ApiClient, endpoint: dict[str, Any]) -> str:
    """The conversation to continue: a new one or any stored session of this endpoint."""
    sessions = client.list_sessions(endpoint_id=endpoint["id"], limit=100)
    labels = {NEW_SESSION: "New conversation"}
    labels.update({s["id"]: f"{s['title'][:50] or s['id']} ({s['message_count']} msgs)"
                   for s in sessions})
    key = f"playground-session-{endpoint['id']}"
    wanted = st.session_state.pop("playground_switch_to", None)
    options = list(labels)
    if wanted:
        if wanted not in labels:
            options.append(wanted)
            labels[wanted] = wanted
        st.session_state[key] = wanted
    return st.selectbox("Session", options, format_func=labels.__getitem__, key=key)


def history(client: ApiClient, session_id: str) -> list[dict[str, Any]]:
    if session_id == NEW_SESSION:
        return []
    try:
        return client.get_session(session_id).get("messages", [])
    except ApiError as exc:
        if exc.status_code == 404:
            return []
        raise


def figures(result: dict[str, Any] | None) -> str:
    if not result:
        return ""
    usage = result.get("usage") or {}
    tokens = f"{usage.get('prompt_tokens', 0)} → {usage.get('completion_tokens', 0)} tokens"
    if usage.get("estimated"):
        tokens += " (estimated)"
    return " · ".join([
        f"latency {fmt_latency(result.get('latency_ms'))}",
        f"TTFT {fmt_latency(result.get('time_to_first_token_ms'))}",
        tokens,
        f"cost {fmt_cost(result.get('cost'))}",
    ])


def options() -> dict[str, Any]:
    with st.sidebar:
        st.markdown("**Generation**")
        system = st.text_area("System prompt", key="playground-system", height=100)
        temperature = st.slider("Temperature", 0.0, 2.0, 0.7, 0.1, key="playground-temp")
        max_tokens = st.number_input("Max tokens", 1, 1_000_000, 1024, key="playground-max")
    body: dict[str, Any] = {"temperature": temperature, "max_tokens": int(max_tokens)}
    if system.strip():
        body["system"] = system
    return body


def answer(client: ApiClient, endpoint: dict[str, Any], body: dict[str, Any]) -> None:
    with st.chat_message("assistant"):
        stream = client.chat_stream(endpoint["id"], body)
        try:
            st.write_stream(stream)
        except ApiError as exc:
            st.error(exc.message)
            return
        st.caption(figures(stream.result))


def main() -> None:
    st.title("Playground")
    client = get_client()
    try:
        endpoint = pick_endpoint(client, "playground-endpoint")
        if endpoint is None:
            st.info("No endpoints yet: add one with **Add / edit endpoint**.")
            return
        session_id = session_choice(client, endpoint)
        messages = history(client, session_id)
    except ApiError as exc:
        st.error(f"The management API could not be read. {exc.message}")
        return
    if endpoint.get("desired_state") != "running":
        st.warning(f"**{endpoint['name']}** is not running: start it to chat.")
    body = options()
    for message in messages:
        with st.chat_message(message["role"]):
            st.markdown(message["content"])
    prompt = st.chat_input(f"Message {endpoint.get('display_name') or endpoint['name']}")
    if not prompt:
        return
    if session_id == NEW_SESSION:
        session_id = f"playground-{uuid.uuid4().hex[:12]}"
    with st.chat_message("user"):
        st.markdown(prompt)
    answer(client, endpoint, {**body, "prompt": prompt, "session_id": session_id})
    # Next run continues this conversation.
    st.session_state["playground_switch_to"] = session_id


main()
