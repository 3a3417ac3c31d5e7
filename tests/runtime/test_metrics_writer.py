"""The metrics writer: RequestLog rows as stored, and flushes that do not chase new records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlmodel import select

from runtime import metrics
from runtime.metrics import MetricsHub, RequestRecord
from store.db import Store
from store.models import MetricBucket, RequestLog
from tests.runtime.test_reports import T0, add_endpoint


def varied(endpoint_id: str, count: int) -> list[RequestRecord]:
    """Records that use every column, NULLs and booleans both ways included."""
    return [
        RequestRecord(
            endpoint_id,
            T0.timestamp() + i * 0.001 + (0.5 if i % 7 == 0 else 0),
            ok=i % 3 != 0,
            latency_ms=10.0 + i,
            status_code=200 if i % 3 else 502,
            error_kind=None if i % 3 else "unavailable",
            session_id=f"s-{i % 4}" if i % 5 else None,
            ttft_ms=None if i % 2 else 1.25 * i,
            tokens_in=i,
            tokens_out=2 * i,
            tokens_estimated=i % 4 == 0,
            cost=0.001 * i,
            streamed=i % 2 == 0,
        )
        for i in range(count)
    ]


def as_tuple(row: RequestLog | RequestRecord) -> tuple:
    """Every logged column; times as naive UTC (the stores differ in what they hand back)."""
    values = [getattr(row, name) for name in metrics._LOG_COLUMNS]
    at = values[2]
    if isinstance(at, float):
        at = datetime.fromtimestamp(at, UTC)
    values[2] = at.replace(tzinfo=None)
    return tuple(values)


def stored(store: Store) -> list[tuple]:
    with store.session() as session:
        return [as_tuple(r) for r in session.exec(select(RequestLog).order_by(RequestLog.id))]


def expected(records: list[RequestRecord]) -> list[tuple]:
    return [as_tuple(r) for r in records]


def test_request_log_rows_read_back_as_written_across_statement_sizes(store, monkeypatch):
    # More rows than one multi-row statement holds, and a last statement that is not full.
    monkeypatch.setattr(metrics, "SQLITE_ROWS_PER_INSERT", 40)
    endpoint_id = add_endpoint(store, "alpha")
    records = varied(endpoint_id, 101)
    MetricsHub(store)._write(records)

    assert stored(store) == expected(records)
    # The times compare in SQL as the ORM's own values do (reports filter on them).
    with store.session() as session:
        later = session.exec(
            select(RequestLog).where(RequestLog.at >= T0 + timedelta(seconds=0.05))
        ).all()
    assert len(later) == sum(1 for r in records if r.at >= T0.timestamp() + 0.05)


def test_request_log_rows_written_by_the_orm_and_the_writer_look_alike(store):
    endpoint_id = add_endpoint(store, "alpha")
    [record] = varied(endpoint_id, 2)[1:]
    with store.session() as session:
        session.add(RequestLog(**metrics._log_row(record)))
        session.commit()
    MetricsHub(store)._write([record])
    first, second = stored(store)
    assert first == second
    if store.engine.dialect.name == "sqlite":
        # The same stored text, so string comparisons in SQL order both alike.
        with store.engine.connect() as connection:
            texts = connection.exec_driver_sql("SELECT at FROM request_log").scalars().all()
        assert texts[0] == texts[1]


async def test_a_flush_writes_what_was_queued_when_it_began(store):
    endpoint_id = add_endpoint(store, "alpha")
    at = T0.timestamp()

    class BusyHub(MetricsHub):
        """Traffic keeps arriving while each batch is written."""

        def _write(self, batch: list[RequestRecord]) -> None:
            super()._write(batch)
            for _ in range(3):
                self.record(RequestRecord(endpoint_id, at, ok=True, latency_ms=1.0))

    hub = BusyHub(store, batch_size=4)
    for _ in range(10):
        hub.record(RequestRecord(endpoint_id, at, ok=True, latency_ms=1.0))

    assert await hub.flush() == 10  # three batches (4, 4, 2), not a chase of the newcomers
    assert len(hub.queue) == 9
    assert await hub.flush() == 9
    with store.session() as session:
        bucket = session.get(MetricBucket, (endpoint_id, "", T0))
    assert bucket is not None and bucket.requests == 19
