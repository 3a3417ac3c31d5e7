"""Display helpers shared by the console pages: formatting, state badges, pickers, flashes.

Formatting only: no decisions about endpoints are made here; what a state means is the API's.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import streamlit as st

from console.client import ApiClient, ApiError

BadgeColor = Literal["red", "orange", "yellow", "blue", "green", "violet", "gray"]
# Colours of the states this console knows; any other state the API reports is shown as it is,
# in a neutral colour.
STATE_COLORS: dict[str, BadgeColor] = {
    "healthy": "green",
    "degraded": "orange",
    "cooling": "blue",
    "starting": "violet",
    "failed": "red",
    "stopped": "gray",
    "disabled": "gray",
}
NEUTRAL: BadgeColor = "gray"
PAGES = {
    "portfolio": "pages/portfolio.py",
    "endpoint": "pages/endpoint.py",
    "edit": "pages/edit.py",
    "playground": "pages/playground.py",
    "sessions": "pages/sessions.py",
    "reports": "pages/reports.py",
    "settings": "pages/settings.py",
}


# -- formatting ------------------------------------------------------------------------------
def fmt_percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}%"


def fmt_latency(ms: float | None) -> str:
    if ms is None:
        return "—"
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def fmt_count(value: float | None) -> str:
    if value is None:
        return "—"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}".removesuffix(".0") + suffix
    return f"{value:g}"


def fmt_cost(value: float | None) -> str:
    if value is None:
        return "—"
    # Small amounts keep four decimals: a cent is a lot of cheap-model tokens.
    return f"${value:,.2f}" if value >= 1 or value == 0 else f"${value:.4f}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {minutes}m" if hours else f"{minutes}m {secs}s"


def fmt_time(value: str | None) -> str:
    """An ISO timestamp from the API as local-free UTC text (``2026-12-01 14:03:22``)."""
    if not value:
        return "—"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def age_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (datetime.now(UTC) - moment).total_seconds()


# -- state -----------------------------------------------------------------------------------
def state_color(state: str) -> BadgeColor:
    return STATE_COLORS.get(state, NEUTRAL)


def state_badge(endpoint: dict[str, Any]) -> None:
    """The state the API reports, its reason, and the success rate beside it.

    The badge never says more than the API: a "healthy" endpoint whose traffic fails shows
    its low success rate right next to the badge.
    """
    state = endpoint.get("state") or "unknown"
    st.badge(state, color=state_color(state))
    success = (endpoint.get("stats") or {}).get("success_rate")
    parts = [endpoint.get("state_reason") or ""]
    if success is not None:
        mark = "red" if success < 90 else "orange" if success < 99 else "green"
        parts.append(f":{mark}[success {fmt_percent(success)}]")
    desired = endpoint.get("desired_state")
    if desired:
        parts.append(f"desired: {desired}")
    detail = " · ".join(p for p in parts if p)
    if detail:
        st.caption(detail)


# -- page plumbing ---------------------------------------------------------------------------
def flash(key: str) -> None:
    """Show (once) the outcome an action callback left in the session."""
    message = st.session_state.pop(key, None)
    if message is None:
        return
    kind, text = message
    (st.error if kind == "error" else st.success)(text)


def call(
    flash_key: str, action: Callable[[], Any], done: str, failed: str
) -> Any:
    """Run an API call from a callback; keep the outcome for the next render."""
    try:
        result = action()
    except ApiError as exc:
        st.session_state[flash_key] = ("error", f"{failed}: {exc.message}")
        return None
    st.session_state[flash_key] = ("success", done)
    return result


def endpoint_label(endpoint: dict[str, Any]) -> str:
    display = endpoint.get("display_name") or endpoint.get("name") or endpoint.get("id")
    name = endpoint.get("name")
    return f"{display} ({name})" if name and display != name else str(display)


def pick_endpoint(
    client: ApiClient, key: str, *, label: str = "Endpoint", preselect: str | None = None
) -> dict[str, Any] | None:
    """A select box over every endpoint; ``?id=`` in the URL preselects one."""
    endpoints = client.list_endpoints()
    if not endpoints:
        return None
    wanted = preselect or st.query_params.get("id")
    ids = [e["id"] for e in endpoints]
    by_id = {e["id"]: e for e in endpoints}
    by_name = {e["name"]: e["id"] for e in endpoints}
    wanted = by_name.get(wanted, wanted) if wanted else None
    index = ids.index(wanted) if wanted in by_id else 0
    chosen = st.selectbox(
        label, ids, index=index, key=key, format_func=lambda i: endpoint_label(by_id[i])
    )
    return by_id.get(chosen)


def session_markdown(session: dict[str, Any]) -> str:
    """A stored conversation as a Markdown document (the Sessions page's export)."""
    lines = [f"# {session.get('title') or session['id']}", "",
             f"Session `{session['id']}` · created {fmt_time(session.get('created_at'))}", ""]
    for message in session.get("messages", []):
        lines += [f"## {message['role']}", "", message["content"], ""]
    return "\n".join(lines)


def download_buttons(name: str, rows: list[dict[str, Any]], key: str) -> None:
    """CSV export of a table."""
    import pandas as pd

    st.download_button(
        "Download CSV",
        pd.DataFrame(rows).to_csv(index=False).encode(),
        file_name=f"{name}.csv",
        mime="text/csv",
        key=key,
        icon=":material/download:",
    )
