"""Shared fixtures: a real SQLite file, a real Postgres database, the real shared data.

Postgres: one throwaway database per test session (``forecasting_test_<random>``), and a fresh
schema per test inside it. The Postgres tests fail, not skip, when the server is down — CI must
run them. Set ``FORECASTING_SKIP_POSTGRES=1`` to deselect them on a machine without Postgres.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

# Prefect state must never leak into the user's ~/.prefect; set before anything imports prefect.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="forecasting-prefect-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from forecasting.data.db import init_db, make_engine

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FORECASTING_SHARED_DATA", ROOT.parent / "shared" / "data"))
PG_ADMIN_URL = os.environ.get(
    "FORECASTING_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("FORECASTING_SKIP_POSTGRES") == "1":
        skip = pytest.mark.skip(reason="FORECASTING_SKIP_POSTGRES=1")
        for item in items:
            if "postgres" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (a clone outside the team)")
    return SHARED_DATA


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'forecasting.db'}"


@pytest.fixture()
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    init_db(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A throwaway Postgres database for this test session; dropped at the end."""
    admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"forecasting_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - environment problem
        pytest.fail(
            f"PostgreSQL at {PG_ADMIN_URL} is not reachable ({exc}). Start it with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`."
        )
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture()
def pg_url(pg_database: str) -> Iterator[str]:
    """A URL whose connections land in a fresh, empty schema of the session database."""
    schema_name = f"t_{uuid.uuid4().hex[:10]}"
    admin = make_engine(pg_database)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema_name}"'))
    yield f"{pg_database}?options=-csearch_path%3D{schema_name}"
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema_name}" CASCADE'))
    admin.dispose()


@pytest.fixture()
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    init_db(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """Both backends: the SQLite file URL, then the Postgres URL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture()
def engine(db_url: str) -> Iterator[Engine]:
    """An initialized engine on each backend in turn."""
    eng = make_engine(db_url)
    init_db(eng)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect API server (its own SQLite) for every flow test of the session:
    starting one takes 10-20 s, so the flow tests share it and each test uses its own database."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
