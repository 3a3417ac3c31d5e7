"""Sessions: stored conversations with filters, the transcript, delete, JSON / Markdown export."""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

from console.client import ApiClient, ApiError, get_client
from console.ui import age_seconds, call, endpoint_label, flash, fmt_time, session_markdown

FLASH_KEY = "sessions_flash"
AGES = {"any age": None, "last hour": 3600, "last day": 86400, "last week": 7 * 86400}


def filters(endpoints: list[dict[str, Any]]) -> tuple[str | None, float | None, int]:
    by_id = {e["id"]: e for e in endpoints}
    left, middle, right = st.columns(3)
    wanted = st.query_params.get("endpoint")
    options = [None, *by_id]
    endpoint_id = left.selectbox(
        "Endpoint", options, index=options.index(wanted) if wanted in by_id else 0,
        format_func=lambda i: "all endpoints" if i is None else endpoint_label(by_id[i]),
        key="sessions-endpoint",
    )
    age = middle.selectbox("Active", list(AGES), key="sessions-age")
    min_messages = right.number_input("At least N messages", 0, 100_000, 0, key="sessions-min")
    return endpoint_id, AGES[age], int(min_messages)


def render_transcript(client: ApiClient, session_id: str) -> None:
    session = client.get_session(session_id)
    st.subheader(session.get("title") or session_id)
    st.caption(f"`{session_id}` · {session['message_count']} messages · last active "
               f"{fmt_time(session.get('last_active_at'))}")
    with st.container(horizontal=True, gap="small"):
        st.download_button("Export JSON", json.dumps(session, indent=2, default=str),
                           file_name=f"{session_id}.json", mime="application/json",
                           key="export-json", icon=":material/data_object:")
        st.download_button("Export Markdown", session_markdown(session),
                           file_name=f"{session_id}.md", mime="text/markdown", key="export-md",
                           icon=":material/description:")
        st.button("Delete session", key="delete-session", icon=":material/delete:",
                  on_click=call, args=(FLASH_KEY, lambda: client.delete_session(session_id),
                                       f"Deleted session `{session_id}`.",
                                       f"Could not delete `{session_id}`"))
    for message in session.get("messages", []):
        with st.chat_message(message["role"]):
            st.markdown(message["content"])
            st.caption(fmt_time(message.get("created_at")))


def main() -> None:
    st.title("Sessions")
    flash(FLASH_KEY)
    client = get_client()
    try:
        endpoints = client.list_endpoints()
        endpoint_id, max_age, min_messages = filters(endpoints)
        sessions = client.list_sessions(endpoint_id=endpoint_id, limit=1000)
    except ApiError as exc:
        st.error(f"The management API could not be read. {exc.message}")
        return
    names = {e["id"]: e["name"] for e in endpoints}
    shown = [s for s in sessions if s["message_count"] >= min_messages
             and (max_age is None or (age_seconds(s["last_active_at"]) or 0) <= max_age)]
    if not shown:
        st.info("No sessions match." if sessions else "No sessions yet: chat in the Playground "
                "or send a `session_id` with a request.")
        return
    rows = [{"session": s["id"], "title": s["title"], "endpoint": names.get(s["endpoint_id"], "—"),
             "messages": s["message_count"], "last active": fmt_time(s["last_active_at"])}
            for s in shown]
    table = st.dataframe(rows, hide_index=True, on_select="rerun", selection_mode="single-row",
                         key="sessions-table")
    picked = table.selection.rows if table is not None else []
    chosen = st.selectbox("Transcript of", [s["id"] for s in shown],
                          index=picked[0] if picked else 0, key="sessions-chosen")
    try:
        render_transcript(client, chosen)
    except ApiError as exc:
        st.error(f"The session could not be read. {exc.message}")


main()
