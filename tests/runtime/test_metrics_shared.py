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


class TcpProxy:
    """A loopback TCP forwarder that can be switched off, to take a store away and back."""

    def __init__(self, target_port: int) -> None:
        import socket

        self.target_port = target_port
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.up = True
        self.conns: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.close()
                except OSError:
                    pass

    def down(self) -> None:
        self.up = False
        for conn in self.conns:
            try:
                conn.close()
            except OSError:
                pass
        self.conns = []


async def test_records_wait_out_a_store_outage(rt, database_url, data_dir, secret_key):
    import pytest
    from sqlalchemy.engine import make_url

    if not database_url.startswith("postgresql"):
        pytest.skip("an outage is simulated on the network path to PostgreSQL")
    row = await rt.manager.create(EndpointCreate(name="m", endpoint_type="scripted"))
    url = make_url(database_url)
    proxy = TcpProxy(url.port or 5432)
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    store = Store.open(url=proxied, data_dir=data_dir, secret_key=secret_key)
    hub = MetricsHub(store, log_requests=True)
    for _ in range(30):
        hub.record(RequestRecord(endpoint_id=row.id, at=time.time(), ok=True, latency_ms=3.0))
    proxy.down()
    assert await hub.flush() == 0
    assert len(hub.queue) == 30 and hub.dropped == 0
    proxy.up = True
    assert await hub.flush() == 30
    with rt.store.session() as session:
        bucket = session.query(MetricBucket).filter(MetricBucket.endpoint_id == row.id).one()
    store.dispose()
    assert bucket.requests == 30
