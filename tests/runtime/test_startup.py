"""Process start-up launches every endpoint that should run in a few transactions, with the
same states, events and failure handling as one launch at a time."""

from __future__ import annotations

from runtime.repository import EndpointRepository
from store.db import Store
from store.models import EndpointCreate
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
