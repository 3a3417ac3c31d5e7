"""Portfolio: every endpoint like a position — state, traffic, latency, cost — with start/stop.

The page only renders what the management API returns and sends start/stop/restart to it.
The live part runs in a fragment that reruns on a timer, so the page refreshes itself without
reloading the sidebar or losing the operator's filters. Rows are paged, so a portfolio of
hundreds of endpoints renders as fast as one of fifty.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import streamlit as st

from console.client import ApiClient, ApiError, get_client
from console.ui import (
    PAGES,
    STATE_COLORS,
    fmt_cost,
    fmt_count,
    fmt_duration,
    fmt_latency,
    fmt_percent,
    state_badge,
)

REFRESH_SECONDS = 5
PAGE_SIZE = 25
SPARK_STEP_S = 300
SPARK_BARS = "▁▂▃▄▅▆▇█"
ACTIONS = {
    "start": ApiClient.start_endpoint,
    "stop": ApiClient.stop_endpoint,
    "restart": ApiClient.restart_endpoint,
}
FLASH_KEY = "portfolio_flash"
SELECT_PREFIX = "select-"
SEEN_STATES_KEY = "portfolio_seen_states"
ADD_ENDPOINT_HELP = """\
**No endpoints yet.** Add one with **Add / edit endpoint** in the menu, from the command line or
through the API; it shows up here.

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


def run_bulk(verb: str, names: dict[str, str]) -> None:
    """Bulk callback: the verb on every selected endpoint; one summary line."""
    client, done, failed = get_client(), [], []
    for endpoint_id, name in names.items():
        try:
            ACTIONS[verb](client, endpoint_id)
            done.append(name)
        except ApiError as exc:
            failed.append(f"{name} ({exc.message})")
    if failed:
        text = f"{verb} failed for " + "; ".join(failed)
        if done:
            text += f" — sent to {', '.join(done)}"
        st.session_state[FLASH_KEY] = ("error", text)
    else:
        st.session_state[FLASH_KEY] = ("success", f"{verb} sent to {len(done)}: {', '.join(done)}")


def show_flash() -> None:
    flash = st.session_state.pop(FLASH_KEY, None)
    if flash is None:
        return
    kind, text = flash
    (st.error if kind == "error" else st.success)(text)


# -- data ------------------------------------------------------------------------------------
def period_kpis(client: ApiClient) -> tuple[dict[str, Any], dict[str, Any], dict, dict]:
    """(last hour, hour before, today, yesterday) for the whole portfolio, from the series API."""
    now = datetime.now(UTC)
    hours = client.series(
        start=(now - timedelta(hours=2)).isoformat(), end=now.isoformat(), step=3600, align=False
    )
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    days = client.series(
        start=(midnight - timedelta(days=1)).isoformat(), end=now.isoformat(), step=86400
    ).get("overall", [])
    # Rolling windows: the API says where the first one starts.
    first = datetime.fromisoformat(hours["from"])
    by_t = {p["t"]: p for p in hours.get("overall", []) + days}
    prev_hour = by_t.get(first.isoformat())
    last_hour = by_t.get((first + timedelta(hours=1)).isoformat())
    today = by_t.get(midnight.isoformat())
    yesterday = by_t.get((midnight - timedelta(days=1)).isoformat())
    return last_hour or {}, prev_hour or {}, today or {}, yesterday or {}


def sparkline(values: list[float | None]) -> str:
    """Block characters, one per step; a gap where the step had no traffic."""
    present = [v for v in values if v is not None]
    if not present:
        return ""
    low, high = min(present), max(present)
    span = (high - low) or 1.0
    return "".join(
        " " if v is None else SPARK_BARS[int((v - low) / span * (len(SPARK_BARS) - 1))]
        for v in values
    )


def sparklines(client: ApiClient, endpoint_ids: list[str]) -> dict[str, dict[str, list]]:
    """Per endpoint, the last hour's success rate and p95 latency per five minutes."""
    if not endpoint_ids:
        return {}
    now = datetime.now(UTC)
    series = client.series(
        start=(now - timedelta(hours=1)).isoformat(), end=now.isoformat(), step=SPARK_STEP_S,
        endpoint=",".join(endpoint_ids), align=False,
    )
    slots = sorted({p["t"] for p in series.get("points", [])})
    index = {t: i for i, t in enumerate(slots)}
    lines: dict[str, dict[str, list]] = {}
    for point in series.get("points", []):
        row = lines.setdefault(
            point["endpoint_id"], {"success": [None] * len(slots), "p95": [None] * len(slots)}
        )
        row["success"][index[point["t"]]] = point["success_rate"]
        row["p95"][index[point["t"]]] = point["p95_ms"]
    return lines


def matches(endpoint: dict[str, Any], text: str, group: str | None) -> bool:
    if group and endpoint.get("group_name") != group:
        return False
    if not text:
        return True
    haystack = " ".join(
        str(endpoint.get(k) or "") for k in ("name", "display_name", "endpoint_type")
    ).lower()
    return all(word in haystack for word in text.lower().split())


# -- rendering -------------------------------------------------------------------------------
def delta(now: float | None, before: float | None, fmt: Any = None) -> str | None:
    if now is None or before is None or now == before:
        return None
    change = now - before
    return fmt(change) if fmt else f"{change:+.2f}"


def instances_phrase(metrics: dict[str, Any]) -> str:
    """Whose traffic /system/metrics summed: this instance alone or the cluster's."""
    count = len(metrics.get("instances") or [])
    return "this instance" if count <= 1 else f"{count} instances"


def render_totals(metrics: dict[str, Any], kpis: tuple[dict, dict, dict, dict]) -> None:
    hour, prev, today, yesterday = kpis
    running, total = metrics.get("running_endpoints", 0), metrics.get("total_endpoints", 0)
    columns = st.columns(6)
    columns[0].metric("Running endpoints", f"{running} / {total}")
    columns[1].metric(
        "Success rate (1 h)", fmt_percent(hour.get("success_rate")),
        delta(hour.get("success_rate"), prev.get("success_rate"), lambda c: f"{c:+.1f} pts"),
    )
    columns[2].metric(
        "Requests / s (1 h)", f"{hour.get('rps') or 0:.3f}",
        delta(hour.get("rps") or 0, prev.get("rps") or 0, lambda c: f"{c:+.3f}"),
    )
    columns[3].metric(
        "p95 latency (1 h)", fmt_latency(hour.get("p95_ms")),
        delta(hour.get("p95_ms"), prev.get("p95_ms"), lambda c: f"{c:+.0f} ms"),
        delta_color="inverse",
    )
    tokens_today = (today.get("tokens_in") or 0) + (today.get("tokens_out") or 0)
    tokens_before = (yesterday.get("tokens_in") or 0) + (yesterday.get("tokens_out") or 0)
    columns[4].metric(
        "Tokens today", fmt_count(tokens_today),
        delta(tokens_today, tokens_before, lambda c: f"{c:+,.0f} vs yesterday"),
        delta_color="off",
    )
    columns[5].metric(
        "Cost today", fmt_cost(today.get("cost") or 0),
        delta(today.get("cost") or 0, yesterday.get("cost") or 0, lambda c: f"{c:+.4f} $"),
        delta_color="inverse",
    )
    st.caption(
        f"Since this instance started, {instances_phrase(metrics)}: "
        f"{fmt_count(metrics.get('total_requests'))} requests"
        f" · success {fmt_percent(metrics.get('success_rate'))}"
        f" · cost {fmt_cost(metrics.get('cost'))}"
        f" · uptime {fmt_duration(metrics.get('uptime_seconds'))}"
        f" · memory {fmt_count(metrics.get('memory_mb'))} MB"
        f" · updated {time.strftime('%H:%M:%S')}"
    )


def render_identity(endpoint: dict[str, Any]) -> None:
    title = endpoint.get("display_name") or endpoint.get("name")
    st.markdown(f"**{title}**")
    model = endpoint.get("model_name")
    parts = [f"`{endpoint.get('name')}`", endpoint.get("endpoint_type") or "?"]
    if endpoint.get("group_name"):
        parts.append(f"group {endpoint['group_name']}")
    st.caption(" · ".join(parts + ([model] if model else [])))
    st.page_link(
        PAGES["endpoint"], label="Details", icon=":material/open_in_new:",
        query_params={"id": endpoint["id"]},
    )


def render_stat(column: Any, label: str, value: str, spark: str = "") -> None:
    # Compact label/value pairs: st.metric is too large for one row per endpoint.
    column.caption(label)
    column.markdown(f"**{value}**")
    if spark:
        column.caption(f"`{spark}`", help="last hour, per 5 minutes")


def render_stats(columns: list[Any], stats: dict[str, Any], spark: dict[str, list]) -> None:
    render_stat(columns[0], "Success", fmt_percent(stats.get("success_rate")),
                sparkline(spark.get("success", [])))
    render_stat(columns[1], "p95 latency", fmt_latency(stats.get("p95_latency_ms")),
                sparkline(spark.get("p95", [])))
    render_stat(columns[2], "Requests", fmt_count(stats.get("requests")))
    render_stat(columns[3], "Cost", fmt_cost(stats.get("cost")))


def render_buttons(endpoint: dict[str, Any]) -> None:
    endpoint_id, name = endpoint["id"], endpoint.get("name") or str(endpoint["id"])
    wants_running = endpoint.get("desired_state") == "running"
    stopped = endpoint.get("state") in ("stopped", "failed")
    disabled_by_admin = endpoint.get("state") == "disabled"
    buttons = (
        ("start", "Start", ":material/play_arrow:", wants_running and not stopped),
        ("stop", "Stop", ":material/stop:", not wants_running and stopped),
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


def render_endpoint(endpoint: dict[str, Any], spark: dict[str, list]) -> None:
    with st.container(border=True, key=f"endpoint-{endpoint['id']}"):
        columns = st.columns([0.3, 2.0, 1.8, 0.9, 0.9, 0.8, 0.8, 3.2])
        columns[0].checkbox(
            "select", key=SELECT_PREFIX + endpoint["id"], label_visibility="collapsed"
        )
        with columns[1]:
            render_identity(endpoint)
        with columns[2]:
            state_badge(endpoint)
            last_error = (endpoint.get("stats") or {}).get("last_error")
            if last_error:
                st.caption(f":red[last error: {last_error}]")
        render_stats(columns[3:7], endpoint.get("stats") or {}, spark)
        with columns[7]:
            render_buttons(endpoint)


def render_bulk(shown: list[dict[str, Any]]) -> None:
    selected = {
        e["id"]: e.get("name") or e["id"]
        for e in shown
        if st.session_state.get(SELECT_PREFIX + e["id"])
    }
    with st.container(horizontal=True, gap="small", vertical_alignment="center"):
        st.caption(f"{len(selected)} selected")
        for verb in ACTIONS:
            st.button(
                f"{verb.capitalize()} selected", key=f"bulk-{verb}", on_click=run_bulk,
                args=(verb, selected), disabled=not selected,
            )


def render_empty(client: ApiClient, filtered: bool) -> None:
    if filtered:
        st.info("No endpoints match these filters.")
    else:
        st.info(ADD_ENDPOINT_HELP.format(api_url=client.base_url))


def render_live(filters: dict[str, Any]) -> None:
    """Everything that refreshes: totals and the endpoint list."""
    client = get_client()
    show_flash()
    try:
        metrics = client.system_metrics()
        endpoints = client.list_endpoints(
            state=filters["state"], endpoint_type=filters["endpoint_type"]
        )
        kpis = period_kpis(client)
    except ApiError as exc:
        st.error(f"The management API could not be read. {exc.message}")
        return
    render_totals(metrics, kpis)
    # States the API reported, for the filter: it lists these beside the known ones.
    st.session_state[SEEN_STATES_KEY] = sorted({e.get("state") or "" for e in endpoints} - {""})
    shown = [e for e in endpoints if matches(e, filters["text"], filters["group"])]
    if not shown:
        render_empty(client, filtered=any(filters.values()))
        return
    pages = max(1, -(-len(shown) // PAGE_SIZE))
    page = min(st.session_state.get("portfolio_page", 1), pages)
    rows = shown[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    render_bulk(rows)
    try:
        spark = sparklines(client, [e["id"] for e in rows])
    except ApiError:
        spark = {}  # sparklines are a nicety: the rows still render without them
    for endpoint in rows:
        render_endpoint(endpoint, spark.get(endpoint["id"], {}))
    if pages > 1:
        st.caption(f"Page {page} of {pages} · {len(shown)} endpoints")


def render_controls() -> tuple[bool, dict[str, Any]]:
    columns = st.columns([1.2, 1, 1, 1, 1.6, 0.7], vertical_alignment="bottom")
    auto = columns[0].toggle(
        f"Auto-refresh every {REFRESH_SECONDS} s", value=True, key="auto_refresh"
    )
    seen = st.session_state.get(SEEN_STATES_KEY, [])
    states = ["all", *dict.fromkeys([*STATE_COLORS, *seen])]
    state = columns[1].selectbox("State", states, key="portfolio_state")
    endpoint_type = columns[2].text_input(
        "Type", key="portfolio_type", placeholder="e.g. openai_api"
    )
    group = columns[3].text_input("Group", key="portfolio_group")
    text = columns[4].text_input(
        "Search", key="portfolio_text", placeholder="name, display name or type"
    )
    columns[5].number_input("Page", min_value=1, value=1, step=1, key="portfolio_page")
    filters = {
        "state": None if state == "all" else state,
        "endpoint_type": endpoint_type.strip() or None,
        "group": group.strip() or None,
        "text": text.strip(),
    }
    return auto, filters


def main() -> None:
    st.title("Portfolio")
    auto, filters = render_controls()
    # Re-decorated on every run so turning auto-refresh off really stops the timer.
    live = st.fragment(render_live, run_every=REFRESH_SECONDS if auto else None)
    live(filters)


main()
