"""Reports: traffic, success, latency, tokens, cost, errors and uptime over a chosen range.

Every figure comes from ``GET /metrics/series`` (aggregated by the API in SQL from per-minute
buckets); the page only draws it. Clicking a series opens that endpoint.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import streamlit as st

from console import charts
from console.client import ApiError, get_client
from console.ui import PAGES, download_buttons, fmt_cost, fmt_latency, fmt_percent

RANGES = {"Last hour": timedelta(hours=1), "Last day": timedelta(days=1),
          "Last week": timedelta(days=7), "Custom": None}
STEPS = {"auto": None, "1 min": 60, "5 min": 300, "15 min": 900, "1 h": 3600, "1 day": 86400}


def choose_range() -> tuple[datetime, datetime, int | None]:
    columns = st.columns([2, 1, 2])
    choice = columns[0].segmented_control("Range", list(RANGES), default="Last hour",
                                          key="reports-range") or "Last hour"
    step = STEPS[columns[1].selectbox("Step", list(STEPS), key="reports-step")]
    now = datetime.now(UTC)
    span = RANGES[choice]
    if span is not None:
        return now - span, now, step
    today = now.date()
    picked = columns[2].date_input("Days", (today - timedelta(days=1), today),
                                   key="reports-custom")
    first, last = (picked if isinstance(picked, tuple) and len(picked) == 2
                   else (today, today))
    return _midnight(first), min(now, _midnight(last) + timedelta(days=1)), step


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def efficiency(series: dict[str, Any], min_success: float, max_p95: float) -> list[dict]:
    """Cost per 1k successful requests, success and p95 per endpoint, cheapest first."""
    names = {i: e["display_name"] for i, e in series["endpoints"].items()}
    rows = [{
        "endpoint": names.get(t["endpoint_id"], t["endpoint_id"]),
        "endpoint_id": t["endpoint_id"],
        "requests": t["requests"],
        "success %": t["success_rate"],
        "p95 ms": t["p95_ms"],
        "cost": t["cost"],
        "cost per 1k ok": t["cost_per_1k_ok"],
        "meets target": bool(
            t["success_rate"] is not None and t["success_rate"] >= min_success
            and t["p95_ms"] is not None and t["p95_ms"] <= max_p95
        ),
    } for t in series["totals"]]
    return sorted(rows, key=lambda r: (r["cost per 1k ok"] is None, r["cost per 1k ok"] or 0))


def covered(instances: list[str]) -> str:
    """Which instances' traffic a report sums ("" is traffic from before instances were named)."""
    if not instances:
        return "no instance had traffic"
    names = ", ".join(name or "(unnamed, older traffic)" for name in instances)
    return f"instance: {names}" if len(instances) == 1 else f"{len(instances)} instances: {names}"


def open_clicked(state: Any) -> None:
    """Plotly click -> the endpoint's detail page (the endpoint id rides in customdata)."""
    points = (getattr(state, "selection", None) or {}).get("points", []) if state else []
    for point in points:
        endpoint_id = point.get("customdata")
        if isinstance(endpoint_id, list):
            endpoint_id = endpoint_id[0] if endpoint_id else None
        if endpoint_id:
            st.switch_page(PAGES["endpoint"], query_params={"id": str(endpoint_id)})


def chart(figure: Any, key: str, clickable: bool = True) -> None:
    if clickable:
        open_clicked(st.plotly_chart(figure, key=key, on_select="rerun",
                                     selection_mode="points"))
    else:
        st.plotly_chart(figure, key=key)


def render_charts(series: dict[str, Any]) -> None:
    points, names = series["points"], {i: e["display_name"]
                                       for i, e in series["endpoints"].items()}
    left, right = st.columns(2)
    with left:
        chart(charts.lines(points, "rps", names, "Requests per second"), "rps")
        chart(charts.lines(points, "p95_ms", names, "p95 latency by endpoint (ms)"), "p95")
        chart(charts.stacked(points, "tokens_out", names, "Output tokens by endpoint"), "tokens")
        chart(charts.errors_by_kind(series["errors_by_kind"], "Error classes"), "errors",
              clickable=False)
    with right:
        chart(charts.lines(points, "success_rate", names, "Success rate (%)"), "success")
        chart(charts.latency(series["overall"], "Latency p50 / p95 / p99, all (ms)"),
              "latency", clickable=False)
        chart(charts.stacked(points, "cost", names, "Cost by endpoint ($)"), "cost")
        chart(charts.lines(points, "ttft_avg_ms", names, "Time to first token (ms)"), "ttft")
    chart(charts.uptime(series["endpoints"], "Uptime (from the state history)"), "uptime")


def render_efficiency(series: dict[str, Any]) -> None:
    st.subheader("Cost efficiency")
    left, right = st.columns(2)
    min_success = left.number_input("Success target (%)", 0.0, 100.0, 99.0, key="target-success")
    max_p95 = right.number_input("p95 target (ms)", 1.0, 600_000.0, 2000.0, key="target-p95")
    rows = efficiency(series, min_success, max_p95)
    best = next((r for r in rows if r["meets target"] and r["cost per 1k ok"] is not None), None)
    if best:
        st.success(f"Cheapest endpoint meeting the target: **{best['endpoint']}** — "
                   f"{fmt_cost(best['cost per 1k ok'])} per 1k successful requests, "
                   f"success {fmt_percent(best['success %'])}, p95 {fmt_latency(best['p95 ms'])}.")
    else:
        st.info("No endpoint meets the target in this range.")
    st.dataframe(rows, hide_index=True, key="efficiency-table",
                 column_order=[k for k in rows[0] if k != "endpoint_id"] if rows else None)
    download_buttons("cost-efficiency", rows, "csv-efficiency")


def render_tables(series: dict[str, Any]) -> None:
    with st.expander("Data tables"):
        st.markdown("**Points (per endpoint, per step)**")
        st.dataframe(series["points"], hide_index=True, key="points-table")
        download_buttons("points", series["points"], "csv-points")
        st.markdown("**Error classes**")
        st.dataframe(series["errors_by_kind"], hide_index=True, key="errors-table")
        download_buttons("errors", series["errors_by_kind"], "csv-errors")
        uptime = [{"endpoint": e["display_name"], "uptime %": e["uptime_percent"]}
                  for e in series["endpoints"].values()]
        st.markdown("**Uptime**")
        st.dataframe(uptime, hide_index=True, key="uptime-table")
        download_buttons("uptime", uptime, "csv-uptime")


def main() -> None:
    st.title("Reports")
    client = get_client()
    start, end, step = choose_range()
    left, right = st.columns(2)
    group = left.text_input("Group (empty: all endpoints)", key="reports-group")
    instance = right.text_input("Instance (empty: the whole cluster)", key="reports-instance")
    try:
        series = client.series(start=start.isoformat(), end=end.isoformat(), step=step,
                               group=group.strip() or None, instance=instance.strip() or None)
    except ApiError as exc:
        st.error(f"The report could not be read. {exc.message}")
        return
    st.caption(f"{start:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M} UTC · one point per "
               f"{series['step_seconds'] // 60} min · {len(series['endpoints'])} endpoints"
               f" · {covered(series.get('instances') or [])}")
    if not series["points"]:
        st.info("No traffic in this range.")
        return
    render_charts(series)
    render_efficiency(series)
    render_tables(series)


main()
