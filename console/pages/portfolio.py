"""Portfolio: every endpoint like a position — state, traffic, latency, cost — with start/stop.

The page only renders what the management API returns and sends start/stop/restart to it.
The live part runs in a fragment that reruns on a timer, so the page refreshes itself without
reloading the sidebar or losing the operator's filters.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import streamlit as st

from console.client import ApiClient, ApiError, get_client

REFRESH_SECONDS = 5
STATES = ["stopped", "starting", "healthy", "degraded", "cooling", "failed", "disabled"]
RUNNING_STATES = {"starting", "healthy", "degraded", "cooling"}
BadgeColor = Literal["red", "orange", "yellow", "blue", "green", "violet", "gray"]
STATE_COLORS: dict[str, BadgeColor] = {
    "healthy": "green",
    "degraded": "orange",
    "cooling": "blue",
    "starting": "violet",
    "failed": "red",
    "stopped": "gray",
    "disabled": "gray",
}
ACTIONS = {
    "start": ApiClient.start_endpoint,
    "stop": ApiClient.stop_endpoint,
    "restart": ApiClient.restart_endpoint,
}
FLASH_KEY = "portfolio_flash"
ADD_ENDPOINT_HELP = """\
**No endpoints yet.** Add one from the command line or through the API; it shows up here.

```bash
aiem endpoints add --name gpt-main --type openai_api --url https://api.openai.com/v1 \\
  --model gpt-4o-mini --credential api_key=sk-... --start
```

```bash
curl -X POST {api_url}/endpoints -H 'Content-Type: application/json' -d '{{
  "name": "gpt-main", "display_name": "GPT main", "endpoint_type": "openai_api",
  "url": "https://api.openai.com/v1", "model_name": "gpt-4o-mini",
  "credentials": {{"api_key": "sk-..."}}}}'
```

`GET /providers` lists the endpoint types this instance knows.
"""


# -- formatting: display only, no decisions ------------------------------------------------
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


# -- actions ---------------------------------------------------------------------------------
def run_action(verb: str, endpoint_id: int | str, name: str) -> None:
    """Button callback: ask the API, keep the outcome for the next render of the fragment."""
    try:
        endpoint = ACTIONS[verb](get_client(), endpoint_id)
    except ApiError as exc:
        st.session_state[FLASH_KEY] = ("error", f"Could not {verb} **{name}**: {exc.message}")
        return
    state = endpoint.get("state", "?") if isinstance(endpoint, dict) else "?"
    st.session_state[FLASH_KEY] = ("success", f"**{name}**: {verb} sent — now `{state}`.")


def show_flash() -> None:
    flash = st.session_state.pop(FLASH_KEY, None)
    if flash is None:
        return
    kind, text = flash
    (st.error if kind == "error" else st.success)(text)


# -- rendering -------------------------------------------------------------------------------
def render_totals(metrics: dict[str, Any]) -> None:
    running, total = metrics.get("running_endpoints", 0), metrics.get("total_endpoints", 0)
    columns = st.columns(7)
    columns[0].metric("Running endpoints", f"{running} / {total}")
    columns[1].metric("Success rate", fmt_percent(metrics.get("success_rate")))
    columns[2].metric("Requests / s", f"{metrics.get('requests_per_second') or 0:.2f}")
    columns[3].metric("Avg latency", fmt_latency(metrics.get("avg_latency_ms")))
    columns[4].metric("p95 latency", fmt_latency(metrics.get("p95_latency_ms")))
    columns[5].metric("Requests", fmt_count(metrics.get("total_requests")))
    columns[6].metric("Cost", fmt_cost(metrics.get("cost")))
    tokens = (metrics.get("tokens_in") or 0) + (metrics.get("tokens_out") or 0)
    st.caption(
        f"Tokens {fmt_count(tokens)} · uptime {fmt_duration(metrics.get('uptime_seconds'))}"
        f" · memory {fmt_count(metrics.get('memory_mb'))} MB"
        f" · updated {time.strftime('%H:%M:%S')}"
    )


def render_state(endpoint: dict[str, Any]) -> None:
    state = endpoint.get("state") or "unknown"
    st.badge(state, color=STATE_COLORS.get(state, "gray"))
    reason = endpoint.get("state_reason")
    desired = endpoint.get("desired_state")
    detail = " · ".join(part for part in (reason, f"desired: {desired}" if desired else "") if part)
    if detail:
        st.caption(detail)
    last_error = (endpoint.get("stats") or {}).get("last_error")
    if last_error:
        st.caption(f":red[last error: {last_error}]")


def render_identity(endpoint: dict[str, Any]) -> None:
    title = endpoint.get("display_name") or endpoint.get("name")
    st.markdown(f"**{title}**")
    model = endpoint.get("model_name")
    parts = [f"`{endpoint.get('name')}`", endpoint.get("endpoint_type") or "?"]
    st.caption(" · ".join(parts + ([model] if model else [])))


def render_stat(column: Any, label: str, value: str) -> None:
    # Compact label/value pairs: st.metric is too large for one row per endpoint.
    column.caption(label)
    column.markdown(f"**{value}**")


def render_stats(columns: list[Any], stats: dict[str, Any]) -> None:
    tokens = (stats.get("tokens_in") or 0) + (stats.get("tokens_out") or 0)
    render_stat(columns[0], "Success", fmt_percent(stats.get("success_rate")))
    render_stat(columns[1], "Avg latency", fmt_latency(stats.get("avg_latency_ms")))
    render_stat(columns[2], "p95 latency", fmt_latency(stats.get("p95_latency_ms")))
    render_stat(columns[3], "Requests", fmt_count(stats.get("requests")))
    render_stat(columns[4], "Tokens", fmt_count(tokens))
    render_stat(columns[5], "Cost", fmt_cost(stats.get("cost")))


def render_buttons(endpoint: dict[str, Any]) -> None:
    endpoint_id, name = endpoint["id"], endpoint.get("name") or str(endpoint["id"])
    wants_running = endpoint.get("desired_state") == "running"
    is_running = endpoint.get("state") in RUNNING_STATES
    disabled_by_admin = endpoint.get("state") == "disabled"
    buttons = (
        ("start", "Start", ":material/play_arrow:", (wants_running and is_running)),
        ("stop", "Stop", ":material/stop:", not wants_running and not is_running),
        ("restart", "Restart", ":material/restart_alt:", not wants_running),
    )
    with st.container(horizontal=True, gap="small"):
        for verb, label, icon, disabled in buttons:
            st.button(
                label,
                key=f"{verb}-{endpoint_id}",
                icon=icon,
                on_click=run_action,
                args=(verb, endpoint_id, name),
                disabled=disabled or disabled_by_admin,
            )


def render_endpoint(endpoint: dict[str, Any]) -> None:
    with st.container(border=True, key=f"endpoint-{endpoint['id']}"):
        columns = st.columns([2.2, 1.7, 0.8, 0.9, 0.9, 0.8, 0.8, 0.9, 3.0])
        with columns[0]:
            render_identity(endpoint)
        with columns[1]:
            render_state(endpoint)
        render_stats(columns[2:8], endpoint.get("stats") or {})
        with columns[8]:
            render_buttons(endpoint)


def render_empty(client: ApiClient, filtered: bool) -> None:
    if filtered:
        st.info("No endpoints match these filters.")
    else:
        st.info(ADD_ENDPOINT_HELP.format(api_url=client.base_url))


def render_live(state: str | None, endpoint_type: str | None) -> None:
    """Everything that refreshes: totals and the endpoint list."""
    client = get_client()
    show_flash()
    try:
        metrics = client.system_metrics()
        endpoints = client.list_endpoints(state=state, endpoint_type=endpoint_type)
    except ApiError as exc:
        st.error(f"The management API could not be read. {exc.message}")
        return
    render_totals(metrics)
    if not endpoints:
        render_empty(client, filtered=bool(state or endpoint_type))
        return
    for endpoint in endpoints:
        render_endpoint(endpoint)


def render_controls() -> tuple[bool, str | None, str | None]:
    left, middle, right = st.columns([1, 1, 1], vertical_alignment="bottom")
    state = middle.selectbox("State", ["all", *STATES], key="portfolio_state")
    endpoint_type = right.text_input("Type", key="portfolio_type", placeholder="e.g. openai_api")
    auto = left.toggle(f"Auto-refresh every {REFRESH_SECONDS} s", value=True, key="auto_refresh")
    return auto, (None if state == "all" else state), (endpoint_type.strip() or None)


def main() -> None:
    st.title("Portfolio")
    auto, state, endpoint_type = render_controls()
    # Re-decorated on every run so turning auto-refresh off really stops the timer.
    live = st.fragment(render_live, run_every=REFRESH_SECONDS if auto else None)
    live(state, endpoint_type)


main()
