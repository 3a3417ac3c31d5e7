"""Discovery: give a chat URL, watch the steps, review the draft and its evidence, approve.

The page only talks to the management API: it starts a discovery, shows the draft with the
screenshot (input red, send blue, answer green), lets the operator edit the config as JSON,
re-probe it, and approve it as a new endpoint. Nothing is registered without the Approve
button.
"""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

from console.client import ApiClient, ApiError, get_client

RUNNING = {"queued", "crawling", "drafting", "validating", "probing", "refining"}
STEPS = ["queued", "crawling", "drafting", "validating", "probing", "ready"]
SELECTED_KEY = "discovery_selected"
FLASH_KEY = "discovery_flash"
LLM_CHOICES = ["Heuristics only", "A running endpoint", "An OpenAI-compatible API"]


def discovery_request(values: dict[str, Any]) -> dict[str, Any]:
    """The POST /discovery body from the form's values."""
    body: dict[str, Any] = {"url": values["url"].strip()}
    if values.get("username") or values.get("password"):
        body["credentials"] = {"username": values["username"], "password": values["password"]}
    choice = values.get("llm_choice", LLM_CHOICES[0])
    if choice == LLM_CHOICES[1] and values.get("llm_endpoint"):
        body["llm"] = {"endpoint": values["llm_endpoint"]}
    elif choice == LLM_CHOICES[2] and values.get("llm_base_url"):
        body["llm"] = {"base_url": values["llm_base_url"], "model": values["llm_model"]}
        if values.get("llm_api_key"):
            body["llm"]["api_key"] = values["llm_api_key"]
    body["use_llm"] = "llm" in body
    return body


def start_form(client: ApiClient) -> None:
    with st.form("discover", clear_on_submit=False):
        values: dict[str, Any] = {"url": st.text_input("Chat URL", placeholder="https://...")}
        with st.expander("Credentials (when the site needs a login)"):
            values["username"] = st.text_input("Username")
            values["password"] = st.text_input("Password", type="password")
        values["llm_choice"] = st.radio("Drafting", LLM_CHOICES, horizontal=True)
        left, middle, right = st.columns(3)
        values["llm_endpoint"] = left.text_input("Endpoint name (as LLM)")
        values["llm_base_url"] = middle.text_input("LLM base URL")
        values["llm_model"] = right.text_input("LLM model")
        values["llm_api_key"] = right.text_input("LLM API key", type="password")
        submitted = st.form_submit_button("Discover", type="primary")
    if submitted:
        if not values["url"].strip():
            st.error("Enter the chat page's URL.")
            return
        try:
            started = client.start_discovery(discovery_request(values))
        except ApiError as exc:
            st.error(exc.message)
            return
        st.session_state[SELECTED_KEY] = started["id"]
        st.success(f"Discovery of {started['url']} started.")


def pick_draft(drafts: list[dict[str, Any]]) -> str | None:
    if not drafts:
        st.info("No discoveries yet: enter a chat URL above.")
        return None
    ids = [d["id"] for d in drafts]
    labels = {d["id"]: f"{d['url']} — {d['status']}" for d in drafts}
    selected = st.session_state.get(SELECTED_KEY)
    index = ids.index(selected) if selected in ids else 0
    chosen = st.selectbox("Draft", ids, index=index, format_func=labels.__getitem__)
    st.session_state[SELECTED_KEY] = chosen
    return chosen


def show_status(draft: dict[str, Any]) -> None:
    status = draft["status"]
    if status in RUNNING:
        done = STEPS.index(status) if status in STEPS else 3
        st.progress(done / (len(STEPS) - 1), text=f"Discovery is {status}…")
    elif status == "failed":
        st.error(f"Failed ({draft['reason'] or 'error'}): {draft['message']}")
    elif status == "approved":
        st.success(f"Approved as endpoint `{draft['endpoint_id']}`.")
    else:
        st.success(f"Ready: {draft['message']}")
    cols = st.columns(3)
    cols[0].metric("Confidence", f"{draft['confidence']:.2f}")
    cols[1].metric("Probe passed", "yes" if draft["probe_passed"] else "no")
    cols[2].metric("Total time", f"{draft.get('timings', {}).get('total', 0):.1f} s")


def show_evidence(client: ApiClient, draft: dict[str, Any]) -> None:
    if draft.get("has_screenshot"):
        try:
            st.image(
                client.discovery_screenshot(draft["id"]),
                caption=("Outlined: input (red), send control (blue), answer (green)"),
            )
        except ApiError as exc:
            st.warning(exc.message)
    evidence = draft.get("evidence") or {}
    timings = draft.get("timings") or {}
    if timings:
        st.caption("Time per step: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    probe = evidence.get("probe") or {}
    with st.expander("Probe transcript"):
        for turn in (probe.get("engine") or {}).get("turns", []):
            st.markdown(f"**Sent:** {turn['message_sent']}  \n**Read:** {turn['answer_read']}")
        if probe.get("signals_fired"):
            st.caption("Completion signals that fired: " + ", ".join(probe["signals_fired"]))
        st.json(probe, expanded=False)
    with st.expander(f"Candidates considered ({len(evidence.get('candidates', []))})"):
        st.dataframe(candidate_rows(evidence.get("candidates", [])), hide_index=True)
    if evidence.get("refinements"):
        with st.expander(f"Refinement rounds ({len(evidence['refinements'])})"):
            st.json(evidence["refinements"])


def candidate_rows(candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "index": c["index"],
            "kind": c["kind"],
            "tag": c["tag"],
            "text": c.get("text", "")[:60],
            "selector": (c.get("selectors") or [""])[0],
            "score": (c.get("input_score") or {}).get("score"),
        }
        for c in candidates
    ]


def edit_and_act(client: ApiClient, draft: dict[str, Any]) -> None:
    if draft["status"] in RUNNING or not draft.get("config"):
        return
    text = st.text_area(
        "Draft config (web_chat, JSON)",
        json.dumps(draft["config"], indent=2),
        height=320,
        key=f"config-{draft['id']}",
    )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        st.error(f"The config is not valid JSON: {exc}")
        return
    if st.button("Re-probe with this config", key=f"probe-{draft['id']}"):
        act(lambda: client.probe_discovery(draft["id"], config), "Re-probe started.")
    if draft["status"] != "approved":
        approve_form(client, draft, config)


def approve_form(client: ApiClient, draft: dict[str, Any], config: dict[str, Any]) -> None:
    with st.form(f"approve-{draft['id']}"):
        name = st.text_input("Endpoint name", key=f"name-{draft['id']}")
        display = st.text_input("Display name", key=f"display-{draft['id']}")
        start = st.checkbox("Start it now", value=True, key=f"start-{draft['id']}")
        force = st.checkbox(
            "Approve although it never passed a probe",
            value=False,
            disabled=draft["probe_passed"],
            key=f"force-{draft['id']}",
        )
        if not st.form_submit_button("Approve", type="primary"):
            return
    approval = {
        "name": name.strip(),
        "display_name": display.strip() or None,
        "start": start,
        "force": force,
        "overrides": {"config": config} if config != draft["config"] else {},
    }
    act(lambda: client.approve_discovery(draft["id"], approval), f"Endpoint {name} created.")


def act(call: Any, message: str) -> None:
    try:
        call()
    except ApiError as exc:
        st.error(exc.message)
        return
    st.session_state[FLASH_KEY] = message
    st.rerun()


def main() -> None:
    st.title("Discovery")
    st.caption("Give a chat page's URL; get a drafted, live-tested web chat endpoint to review.")
    client = get_client()
    flash = st.session_state.pop(FLASH_KEY, None)
    if flash:
        st.success(flash)
    start_form(client)
    try:
        drafts = client.list_discoveries()
    except ApiError as exc:
        st.error(exc.message)
        return
    draft_id = pick_draft(drafts)
    if draft_id is not None:
        draft_view(client, draft_id)


def draft_view(client: ApiClient, draft_id: str) -> None:
    try:
        draft = client.get_discovery(draft_id)
    except ApiError as exc:
        st.error(exc.message)
        return
    if draft["status"] in RUNNING:
        follow(client, draft_id)
        return
    show_status(draft)
    show_evidence(client, draft)
    edit_and_act(client, draft)
    if st.button("Delete draft", key=f"delete-{draft_id}"):
        act(lambda: client.delete_discovery(draft_id), "Draft deleted.")


@st.fragment(run_every=2)
def follow(client: ApiClient, draft_id: str) -> None:
    """While the discovery runs, only its status refreshes; the whole page once it ends."""
    try:
        draft = client.get_discovery(draft_id)
    except ApiError as exc:
        st.error(exc.message)
        return
    show_status(draft)
    if draft["status"] not in RUNNING:
        st.rerun()


main()
