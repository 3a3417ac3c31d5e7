"""/metrics/series: traffic, success, latency, cost and uptime over a time range, per step.

The aggregation runs in SQL over the per-minute buckets (runtime/reports.py); this module only
parses and checks the query.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from gateway.api.deps import get_runtime
from runtime.core import Runtime
from runtime.reports import SeriesQuery
from store.models import INSTANCE_NAME_MAX

router = APIRouter(tags=["reports"])

MAX_POINTS = 2000
NICE_STEPS_S = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400)
DEFAULT_SPAN = timedelta(hours=1)
TARGET_POINTS = 120
INSTANCE_QUERY = Query(
    max_length=INSTANCE_NAME_MAX,
    # Instance names carry no spaces or control characters (PostgreSQL refuses NUL outright).
    pattern=r"^[^\s\x00-\x1f\x7f]*$",
    description="Only this instance's traffic (its AIEM_INSTANCE_NAME); default: the cluster.",
)


def auto_step(span_s: float) -> int:
    """The smallest round step that keeps a chart near ``TARGET_POINTS`` points."""
    for step in NICE_STEPS_S:
        if span_s / step <= TARGET_POINTS:
            return step
    return NICE_STEPS_S[-1] * max(1, round(span_s / NICE_STEPS_S[-1] / TARGET_POINTS))


def _utc(value: datetime | None, default: datetime) -> datetime:
    if value is None:
        return default
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _endpoint_ids(raw: list[str] | None) -> tuple[str, ...]:
    ids = [part.strip() for item in raw or [] for part in item.split(",")]
    return tuple(dict.fromkeys(i for i in ids if i))


def _invalid(field: str, message: str) -> HTTPException:
    return HTTPException(422, detail=[{"loc": ["query", field], "msg": message, "type": "value"}])


def build_query(
    start: datetime | None,
    end: datetime | None,
    step: int | None,
    endpoint: list[str] | None,
    group: str | None,
    align: bool = True,
    instance: str | None = None,
) -> SeriesQuery:
    end_at = _utc(end, datetime.now(UTC))
    start_at = _utc(start, end_at - DEFAULT_SPAN)
    if start_at >= end_at:
        raise _invalid("from", "`from` must be before `to`")
    span_s = (end_at - start_at).total_seconds()
    step_s = step or auto_step(span_s)
    if step_s % 60:
        raise _invalid("step", "step must be a whole number of minutes (seconds divisible by 60)")
    if span_s / step_s > MAX_POINTS:
        raise _invalid("step", f"at most {MAX_POINTS} points: use a step of {auto_step(span_s)} s")
    if align:
        # Align the range to the step so the first and last points are whole steps.
        start_at = datetime.fromtimestamp(int(start_at.timestamp()) // step_s * step_s, UTC)
    else:
        # Rolling windows end with the minute `to` falls in (buckets are per minute), so the
        # current minute is in the last window, and go back as many whole steps as fit.
        end_s = -(-int(end_at.timestamp()) // 60) * 60
        steps = max(1, (end_s - int(start_at.timestamp())) // step_s)
        start_at = datetime.fromtimestamp(end_s - steps * step_s, UTC)
    ids = _endpoint_ids(endpoint)
    return SeriesQuery(start_at, end_at, step_s, ids, group or None, align, instance or None)


@router.get("/metrics/series")
async def metrics_series(
    start: Annotated[
        datetime | None, Query(alias="from", description="Start (ISO 8601); default: 1 h ago.")
    ] = None,
    end: Annotated[datetime | None, Query(alias="to", description="End; default: now.")] = None,
    step: Annotated[
        int | None, Query(ge=60, le=31 * 86400, description="Seconds per point; default: auto.")
    ] = None,
    endpoint: Annotated[
        list[str] | None, Query(description="Endpoint ids (repeat or comma-separate).")
    ] = None,
    group: Annotated[str | None, Query(max_length=100, description="Only this group.")] = None,
    align: Annotated[
        bool, Query(description="Slots at multiples of the step; false: rolling from `from`.")
    ] = True,
    instance: Annotated[str | None, INSTANCE_QUERY] = None,
    rt: Runtime = Depends(get_runtime),
) -> Any:
    """Per-step points per endpoint and overall, per-endpoint totals, error classes, uptime;
    summed over every instance of the cluster (``instances`` names them) unless ``instance``."""
    query = build_query(start, end, step, endpoint, group, align, instance)
    return await rt.reports.series(query)
