"""Process start-up launches every endpoint that should run in a few transactions, with the
same states, events and failure handling as one launch at a time."""

from __future__ import annotations

from sqlalchemy import select, text

from runtime.repository import EndpointRepository
from store.db import Store
from store.models import Endpoint, EndpointCreate
from tests.fakes import ScriptedProvider


def create(name: str, **fields: object) -> EndpointCreate:
    return EndpointCreate(name=name, endpoint_type="scripted", **fields)  # type: ignore[arg-type]


async def test_start_up_launches_all_and_reports_each_failure(make_runtime):
    first = await make_runtime(auto_restart=False)
    good = [await first.manager.create(create(f"good-{n}", start=True)) for n in range(3)]
    bad = await first.manager.create(create("bad", config={"fail_start": 1000}))
    await first.manager.start(bad.id)
    idle = await first.manager.create(create("idle"))
    await first.stop()
    # A row left in a live state although nobody wants it running (a crash, an old process).
    opts = first.options
    store = Store.open(url=opts.database_url, data_dir=opts.data_dir, secret_key=opts.secret_key)
    EndpointRepository(store, first.registry).set_state(idle.id, "healthy", "left over")
    store.dispose()

    ScriptedProvider.starts = 0
    second = await make_runtime(auto_restart=False)
    assert ScriptedProvider.starts == 4  # each endpoint opened once: 3 good, 1 bad
    assert {row.id for row in good} == set(second.manager.live)
    assert {second.repo.get(row.id).state for row in good} == {"healthy"}
    failed = second.repo.get(bad.id)
    assert failed.state == "failed"
    assert failed.state_reason == "start failed: backend refused to start"
    assert second.repo.get(idle.id).state == "stopped"
    assert second.repo.get(idle.id).state_reason == "process restarted"
    for row in good:
        changes = [
            (e["from_state"], e["to_state"])
            for e in second.repo.events(row.id)
            if e["kind"] == "state_change"
        ]
        # Newest first: this start-up's two steps on top of the first process's.
        assert changes[:2] == [("starting", "healthy"), ("healthy", "starting")]


async def test_start_up_stores_key_names_of_rows_that_lack_them(make_runtime):
    """Rows from before key names were kept (SQL NULL, or the JSON value null an older
    writer left) get them at start-up, so listing never decrypts credentials per row."""
    first = await make_runtime()
    keyed = await first.manager.create(create("keyed", credentials={"api_key": "k1", "org": "o"}))
    bare = await first.manager.create(create("bare"))
    await first.stop()
    opts = first.options
    store = Store.open(url=opts.database_url, data_dir=opts.data_dir, secret_key=opts.secret_key)
    with store.engine.begin() as conn:
        conn.execute(
            text("UPDATE endpoint SET credential_keys = NULL WHERE id = :id"), {"id": keyed.id}
        )
        conn.execute(
            text("UPDATE endpoint SET credential_keys = 'null' WHERE id = :id"), {"id": bare.id}
        )
    store.dispose()

    second = await make_runtime()
    listed = {e["name"]: e["credential_keys"] for e in await second.list_endpoints()}
    assert listed == {"keyed": ["api_key", "org"], "bare": []}
    with second.store.session() as session:
        stored = dict(session.execute(select(Endpoint.name, Endpoint.credential_keys)).all())
    assert stored == {"keyed": ["api_key", "org"], "bare": []}
