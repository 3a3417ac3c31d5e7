"""Endpoint detail: settings, state and its history, events, charts, sessions and actions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import streamlit as st

from console import charts
from console.client import ApiClient, ApiError, get_client
from console.ui import (
    PAGES,
    call,
    flash,
    fmt_cost,
    fmt_count,
    fmt_latency,
    fmt_percent,
    fmt_time,
    pick_endpoint,
    state_badge,
)

FLASH_KEY = "endpoint_flash"
CONFIRM_KEY = "endpoint_confirm_delete"
RANGES = {"Last hour": timedelta(hours=1), "Last day": timedelta(days=1),
          "Last week": timedelta(days=7)}
SETTING_FIELDS = (
    "name", "display_name", "endpoint_type", "url", "model_name", "group_name", "priority",
    "max_concurrent_requests", "rate_limit_per_minute", "request_timeout",
    "input_cost_per_1k", "output_cost_per_1k", "persistent_session",
)


def act(verb: str, endpoint: dict[str, Any]) -> None:
    client, name = get_client(), endpoint["name"]
    action = {"start": client.start_endpoint, "stop": client.stop_endpoint,
              "restart": client.restart_endpoint}[verb]
    call(FLASH_KEY, lambda: action(endpoint["id"]), f"**{name}**: {verb} sent.",
         f"Could not {verb} **{name}**")


@st.dialog("Delete endpoint")
def confirm_delete(endpoint: dict[str, Any]) -> None:
    st.write(f"Delete **{endpoint['name']}**, its events, metrics and sessions' link to it?")
    st.caption("This cannot be undone.")
    left, right = st.columns(2)
    if left.button("Delete", type="primary", key="confirm-delete"):
        try:
            get_client().delete_endpoint(endpoint["id"])
        except ApiError as exc:
            st.error(f"Could not delete **{endpoint['name']}**: {exc.message}")
            return
        st.session_state[FLASH_KEY] = ("success", f"Deleted **{endpoint['name']}**.")
        st.session_state.pop(CONFIRM_KEY, None)
        st.query_params.clear()
        st.rerun()
    if right.button("Cancel", key="cancel-delete"):
        st.session_state.pop(CONFIRM_KEY, None)
        st.rerun()


def render_actions(endpoint: dict[str, Any]) -> None:
    with st.container(horizontal=True, gap="small"):
        for verb, icon in (("start", "play_arrow"), ("stop", "stop"), ("restart", "restart_alt")):
            st.button(verb.capitalize(), key=f"detail-{verb}", icon=f":material/{icon}:",
                      on_click=act, args=(verb, endpoint))
        st.page_link(PAGES["edit"], label="Edit", icon=":material/edit:",
                     query_params={"id": endpoint["id"]})
        st.page_link(PAGES["playground"], label="Chat", icon=":material/chat:",
                     query_params={"id": endpoint["id"]})
        if st.button("Delete", key="detail-delete", icon=":material/delete:"):
            st.session_state[CONFIRM_KEY] = endpoint["id"]
    # The dialog stays open across reruns until confirmed or cancelled.
    if st.session_state.get(CONFIRM_KEY) == endpoint["id"]:
        confirm_delete(endpoint)


def render_summary(endpoint: dict[str, Any]) -> None:
    stats = endpoint.get("stats") or {}
    left, right = st.columns([1, 2])
    with left:
        state_badge(endpoint)
        st.caption(f"since {fmt_time(endpoint.get('state_changed_at'))}")
    columns = right.columns(5)
    columns[0].metric("Requests", fmt_count(stats.get("requests")))
    columns[1].metric("Success", fmt_percent(stats.get("success_rate")))
    columns[2].metric("p95 latency", fmt_latency(stats.get("p95_latency_ms")))
    columns[3].metric("Tokens", fmt_count((stats.get("tokens_in") or 0)
                                          + (stats.get("tokens_out") or 0)))
    columns[4].metric("Cost", fmt_cost(stats.get("cost")))


def render_settings(endpoint: dict[str, Any]) -> None:
    rows = [{"setting": k, "value": str(endpoint.get(k) if endpoint.get(k) is not None else "")}
            for k in SETTING_FIELDS]
    keys = endpoint.get("credential_keys") or []
    rows.append({"setting": "credentials", "value": ", ".join(keys) or "none"})
    st.dataframe(rows, hide_index=True, key="settings-table")
    st.caption("Secrets are never shown: only their key names.")
    if endpoint.get("config"):
        st.markdown("**Provider config**")
        st.json(endpoint["config"], expanded=False)
    if endpoint.get("browser_config"):
        st.markdown("**Browser config**")
        st.json(endpoint["browser_config"], expanded=False)


def render_events(events: list[dict[str, Any]]) -> None:
    if not events:
        st.info("No events yet.")
        return
    states = [e for e in events if e.get("to_state")]
    if states:
        st.markdown("**State history**")
        st.plotly_chart(charts.state_timeline(states), key="state-timeline")
    rows = [{"at": fmt_time(e["at"]), "kind": e["kind"],
             "change": f"{e.get('from_state') or ''} → {e['to_state']}" if e.get("to_state")
             else "", "detail": e.get("detail") or ""} for e in events]
    st.dataframe(rows, hide_index=True, key="events-table")


def render_charts(client: ApiClient, endpoint: dict[str, Any]) -> None:
    choice = st.segmented_control("Range", list(RANGES), default="Last hour", key="detail-range")
    span = RANGES.get(choice or "Last hour", RANGES["Last hour"])
    now = datetime.now(UTC)
    series = client.series(start=(now - span).isoformat(), end=now.isoformat(),
                           endpoint=endpoint["id"])
    points = series.get("points", [])
    if not points:
        st.info("No traffic in this range.")
        return
    names = {endpoint["id"]: endpoint.get("display_name") or endpoint["name"]}
    left, right = st.columns(2)
    left.plotly_chart(charts.lines(points, "requests", names, "Requests per step"),
                      key="detail-requests")
    right.plotly_chart(charts.lines(points, "success_rate", names, "Success rate (%)"),
                       key="detail-success")
    left.plotly_chart(charts.latency(points, "Latency p50 / p95 / p99 (ms)"),
                      key="detail-latency")
    right.plotly_chart(charts.lines(points, "ttft_avg_ms", names, "Time to first token (ms)"),
                       key="detail-ttft")
    left.plotly_chart(charts.tokens(points, "Tokens in / out"), key="detail-tokens")
    right.plotly_chart(charts.lines(points, "cost", names, "Cost ($)"), key="detail-cost")


def render_sessions(client: ApiClient, endpoint: dict[str, Any]) -> None:
    sessions = client.list_sessions(endpoint_id=endpoint["id"], limit=50)
    if not sessions:
        st.info("No sessions on this endpoint.")
        return
    rows = [{"session": s["id"], "title": s["title"], "messages": s["message_count"],
             "last active": fmt_time(s["last_active_at"])} for s in sessions]
    st.dataframe(rows, hide_index=True, key="sessions-table")
    st.page_link(PAGES["sessions"], label="Open in Sessions", icon=":material/forum:",
                 query_params={"endpoint": endpoint["id"]})


def main() -> None:
    st.title("Endpoint")
    flash(FLASH_KEY)
    client = get_client()
    try:
        endpoint = pick_endpoint(client, "detail-endpoint")
        if endpoint is None:
            st.info("No endpoints yet: add one with **Add / edit endpoint**.")
            return
        endpoint = client.get_endpoint(endpoint["id"])
        st.subheader(endpoint.get("display_name") or endpoint["name"])
        render_actions(endpoint)
        render_summary(endpoint)
        tabs = st.tabs(["Charts", "Events", "Settings", "Sessions"])
        with tabs[0]:
            render_charts(client, endpoint)
        with tabs[1]:
            render_events(client.endpoint_events(endpoint["id"], limit=200))
        with tabs[2]:
            render_settings(endpoint)
        with tabs[3]:
            render_sessions(client, endpoint)
    except ApiError as exc:
        st.error(f"The management API could not be read. {exc.message}")


main()
