"""Shared fixtures: data dirs, keys, stores on SQLite and PostgreSQL, the real gateway."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.gateway_proc import GatewayProcess, running_gateway

POSTGRES_URL = os.environ.get("AIEM_TEST_POSTGRES_URL")

# The packages whose modules drive browsers and start processes: the longest modules. They go
# to the workers first, so a long one is never what is left running alone at the end
# (scripts/test.sh keeps this order: xdist's own puts the modules with most tests first).
SLOW_FIRST = ("tests/cluster/", "tests/discovery/", "tests/web_chat/", "tests/console/")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not item.nodeid.startswith(SLOW_FIRST))  # a stable sort


@pytest.fixture
def secret_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


def _postgres_database(template: str | None = None) -> Iterator[str]:
    if not POSTGRES_URL:
        if os.environ.get("CI"):
            pytest.fail("AIEM_TEST_POSTGRES_URL must be set in CI (.ci/run starts PostgreSQL)")
        pytest.skip("AIEM_TEST_POSTGRES_URL not set")
    import sqlalchemy as sa

    name = "aiem_test_" + uuid.uuid4().hex[:12]
    copy_of = f' TEMPLATE "{template}"' if template else ""
    admin = sa.create_engine(_psycopg(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"{copy_of}'))
    base, _, _ = POSTGRES_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _psycopg(url: str) -> str:
    return "postgresql+psycopg://" + url.split("://", 1)[1]


class MigratedStores:
    """An empty store at the newest revision on each backend, made once per session and copied
    for every test that starts a runtime: migrating a fresh store is most of such a test's
    setup (a copy of a PostgreSQL template takes a tenth of the time)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._sqlite: Path | None = None
        self._postgres: Iterator[str] | None = None
        self._postgres_name = ""

    def sqlite_file(self) -> Path:
        if self._sqlite is None:
            path = self.directory / "migrated.db"
            self._migrate(f"sqlite:///{path}")
            self._sqlite = path
        return self._sqlite

    def postgres_template(self) -> str:
        if self._postgres is None:
            self._postgres = _postgres_database()
            url = next(self._postgres)
            self._migrate(url)
            self._postgres_name = url.rpartition("/")[2]
        return self._postgres_name

    @staticmethod
    def _migrate(url: str) -> None:
        from store.db import make_engine, upgrade

        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()  # a PostgreSQL template must have no connections when copied

    def close(self) -> None:
        if self._postgres is not None:
            self._postgres.close()  # drops the template database


@pytest.fixture(scope="session")
def migrated_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MigratedStores]:
    stores = MigratedStores(tmp_path_factory.mktemp("migrated-stores"))
    yield stores
    stores.close()


# Fixtures that open the store through a runtime, which migrates it to the newest revision
# first thing: their tests get a copy of a migrated store instead of migrating their own.
# Every other test gets an empty database (migration tests start from there).
RUNTIME_FIXTURES = frozenset({"make_api", "make_runtime"})


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[str]:
    """The store's URL on each backend: every test using it runs on both."""
    stores: MigratedStores | None = None
    if RUNTIME_FIXTURES & set(request.fixturenames):
        stores = request.getfixturevalue("migrated_stores")
    if request.param == "sqlite":
        path = data_dir / "aiem.db"
        if stores is not None:
            shutil.copyfile(stores.sqlite_file(), path)
        yield f"sqlite:///{path}"
    else:
        yield from _postgres_database(stores.postgres_template() if stores else None)


@pytest.fixture
def gateway_factory(tmp_path: Path, secret_key: str) -> Iterator:
    started: list[GatewayProcess] = []

    def make(
        *,
        console: bool = False,
        env: dict[str, str] | None = None,
        data_dir: Path | None = None,
        start: bool = True,
    ) -> GatewayProcess:
        proc = GatewayProcess(
            data_dir or tmp_path / f"gw{len(started)}",
            secret_key=secret_key,
            console=console,
            env=env,
        )
        started.append(proc)
        return proc.start() if start else proc

    yield make
    for proc in started:
        proc.stop()


@pytest.fixture
def gateway(gateway_factory) -> GatewayProcess:
    """`aiem serve --no-console` on a fresh data dir."""
    return gateway_factory()


@pytest.fixture(scope="module")
def module_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One `aiem serve --no-console` for a module's tests: starting one takes seconds."""
    with running_gateway(tmp_path_factory.mktemp("module-gateway")) as proc:
        yield proc


@pytest.fixture
def clean_gateway(module_gateway: GatewayProcess) -> GatewayProcess:
    """The module's gateway with no endpoints or sessions left by earlier tests (started
    again if a test stopped it)."""
    if not module_gateway.running:
        module_gateway.start()
    module_gateway.clear()
    return module_gateway


@pytest.fixture
def gateway_with_console(gateway_factory) -> GatewayProcess:
    """`aiem up`: the console at .url + "/" and the API beside it."""
    return gateway_factory(console=True)
