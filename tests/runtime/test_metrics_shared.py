"""Two instances writing the same minute buckets of one shared store lose nothing."""

from __future__ import annotations

import threading
import time

from runtime.metrics import MetricsHub, RequestRecord
from store.db import Store
from store.models import EndpointCreate, MetricBucket


async def test_concurrent_writers_of_one_minute_bucket_add_up(
    rt, database_url, data_dir, secret_key
):
    row = await rt.manager.create(EndpointCreate(name="m", endpoint_type="scripted"))
    stores = [
        Store.open(url=database_url, data_dir=data_dir, secret_key=secret_key) for _ in range(2)
    ]
    hubs = [MetricsHub(store, log_requests=True) for store in stores]
    now = time.time()
    batches = 20

    def write(hub: MetricsHub) -> None:
        for _ in range(batches):
            batch = [
                RequestRecord(endpoint_id=row.id, at=now, ok=True, latency_ms=12.0, tokens_in=1)
                for _ in range(5)
            ]
            hub._write(batch)

    threads = [threading.Thread(target=write, args=(hub,)) for hub in hubs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with stores[0].session() as session:
        buckets = session.query(MetricBucket).filter(MetricBucket.endpoint_id == row.id).all()
    for store in stores:
        store.dispose()
    assert sum(b.requests for b in buckets) == 2 * batches * 5
    assert sum(b.tokens_in for b in buckets) == 2 * batches * 5
    assert sum(sum(b.latency_hist) for b in buckets) == 2 * batches * 5
