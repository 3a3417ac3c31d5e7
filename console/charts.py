"""Plotly figures from the series API's points. Shapes only: every number comes from the API."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import plotly.graph_objects as go

from console.ui import STATE_COLORS

HEIGHT = 300
LAYOUT: dict[str, Any] = {
    "height": HEIGHT,
    "margin": {"l": 10, "r": 10, "t": 40, "b": 10},
    "legend": {"orientation": "h", "y": -0.2},
    "hovermode": "x unified",
}
PLOTLY_COLORS = {"gray": "#9ca3af", "green": "#16a34a", "orange": "#f59e0b", "blue": "#3b82f6",
                 "violet": "#8b5cf6", "red": "#dc2626"}


def _figure(title: str) -> go.Figure:
    figure = go.Figure()
    figure.update_layout(title={"text": title, "font": {"size": 14}}, **LAYOUT)
    return figure


def by_endpoint(points: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for point in points:
        grouped[point.get("endpoint_id", "all")].append(point)
    return grouped


def lines(
    points: list[dict[str, Any]], metric: str, names: dict[str, str], title: str
) -> go.Figure:
    """One line per endpoint; ``customdata`` carries the endpoint id so a click can open it."""
    figure = _figure(title)
    for endpoint_id, series in by_endpoint(points).items():
        figure.add_scatter(
            x=[p["t"] for p in series],
            y=[p.get(metric) for p in series],
            name=names.get(endpoint_id, endpoint_id),
            mode="lines+markers",
            customdata=[endpoint_id] * len(series),
        )
    return figure


def stacked(
    points: list[dict[str, Any]], metric: str, names: dict[str, str], title: str
) -> go.Figure:
    figure = _figure(title)
    for endpoint_id, series in by_endpoint(points).items():
        figure.add_bar(
            x=[p["t"] for p in series],
            y=[p.get(metric) for p in series],
            name=names.get(endpoint_id, endpoint_id),
            customdata=[endpoint_id] * len(series),
        )
    figure.update_layout(barmode="stack")
    return figure


def latency(points: list[dict[str, Any]], title: str) -> go.Figure:
    figure = _figure(title)
    for name in ("p50_ms", "p95_ms", "p99_ms"):
        figure.add_scatter(x=[p["t"] for p in points], y=[p.get(name) for p in points],
                           name=name.removesuffix("_ms"), mode="lines+markers")
    return figure


def tokens(points: list[dict[str, Any]], title: str) -> go.Figure:
    figure = _figure(title)
    for name in ("tokens_in", "tokens_out"):
        figure.add_bar(x=[p["t"] for p in points], y=[p.get(name) for p in points],
                       name=name.replace("_", " "))
    figure.update_layout(barmode="stack")
    return figure


def errors_by_kind(rows: list[dict[str, Any]], title: str) -> go.Figure:
    figure = _figure(title)
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[row["kind"]].append(row)
    for kind, series in sorted(grouped.items()):
        figure.add_bar(x=[r["t"] for r in series], y=[r["count"] for r in series], name=kind)
    figure.update_layout(barmode="stack")
    return figure


def uptime(endpoints: dict[str, dict[str, Any]], title: str) -> go.Figure:
    figure = _figure(title)
    ids = list(endpoints)
    figure.add_bar(
        x=[endpoints[i].get("uptime_percent") or 0 for i in ids],
        y=[endpoints[i]["display_name"] for i in ids],
        orientation="h",
        customdata=ids,
        name="uptime %",
    )
    figure.update_layout(xaxis={"range": [0, 100], "title": "% of the range in a live state"})
    return figure


def state_timeline(events: list[dict[str, Any]]) -> go.Figure:
    """State changes as markers on a time axis, one row per state (unknown states in gray)."""
    figure = _figure("State changes")
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        grouped[event["to_state"]].append(event)
    for state, series in grouped.items():
        color = PLOTLY_COLORS[STATE_COLORS.get(state, "gray")]
        figure.add_scatter(
            x=[e["at"] for e in series], y=[state] * len(series), mode="markers", name=state,
            marker={"color": color, "size": 12}, text=[e.get("detail") or "" for e in series],
        )
    figure.update_layout(height=220, hovermode="closest")
    return figure
