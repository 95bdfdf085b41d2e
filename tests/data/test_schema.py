"""The schema: one MetaData, the same on SQLite and Postgres, DDL files kept current."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

from forecasting.data import schema
from forecasting.data.db import init_db, make_engine

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_checked_in_ddl_matches_metadata(dialect: str) -> None:
    """sql/schema.<dialect>.sql is exactly what the metadata generates."""
    path = ROOT / "sql" / f"schema.{dialect}.sql"
    assert path.read_text(encoding="utf-8") == schema.ddl(dialect), (
        f"{path} is stale: run `python -m forecasting.data.schema`"
    )


def _shape(engine: Engine) -> dict[str, list[tuple[str, bool]]]:
    insp = inspect(engine)
    return {
        t: sorted((c["name"], bool(c["nullable"])) for c in insp.get_columns(t))
        for t in insp.get_table_names()
    }


def test_init_db_is_idempotent_and_creates_everything(engine: Engine) -> None:
    """Running init-db twice changes nothing and leaves every table and view in place."""
    before = _shape(engine)
    init_db(engine)
    assert _shape(engine) == before
    assert set(schema.metadata.tables) <= set(before)
    assert set(schema.VIEWS) <= set(inspect(engine).get_view_names())


def test_sqlite_and_postgres_get_the_same_columns(sqlite_engine: Engine, pg_engine: Engine) -> None:
    """Same tables, same column names, same nullability on both backends."""
    assert _shape(sqlite_engine) == _shape(pg_engine)


test_sqlite_and_postgres_get_the_same_columns = pytest.mark.postgres(
    test_sqlite_and_postgres_get_the_same_columns
)


def test_init_db_adds_the_columns_a_database_from_an_earlier_version_lacks(
    sqlite_url: str,
) -> None:
    """A database made before ``model_checks`` recorded the trigger and its numbers gets
    those columns at the next start, with its rows kept; a second start changes nothing."""
    engine = make_engine(sqlite_url)
    init_db(engine)
    with engine.begin() as conn:
        for column in ("triggered_by", "baseline_rmse", "model_age_days", "n_scored"):
            conn.execute(text(f"ALTER TABLE model_checks DROP COLUMN {column}"))
    init_db(engine)
    init_db(engine)
    with engine.connect() as conn:
        names = {c["name"] for c in inspect(conn).get_columns("model_checks")}
    assert {"triggered_by", "baseline_rmse", "model_age_days", "n_scored"} <= names
    engine.dispose()


def test_views_from_before_lineages_are_recreated_with_the_lineage_column(
    engine: Engine,
) -> None:
    """A database whose latest_forecasts and forecast_errors mixed every lineage (no
    ``lineage`` column) gets the per-lineage views at the next start, the plain ones reading
    the live lineage; a second start changes nothing."""
    with engine.begin() as conn:
        for name in reversed(schema.VIEWS):
            conn.execute(text(f"DROP VIEW IF EXISTS {name}"))
        conn.execute(text("CREATE VIEW latest_forecasts AS SELECT * FROM forecasts"))
        conn.execute(
            text(
                "CREATE VIEW forecast_errors AS SELECT f.* FROM latest_forecasts f "
                "JOIN prices p ON p.ticker = f.ticker AND p.trade_date = f.target_date"
            )
        )
    init_db(engine)
    init_db(engine)
    insp = inspect(engine)
    assert set(schema.VIEWS) <= set(insp.get_view_names())
    for name in schema.VIEWS:
        assert "lineage" in {c["name"] for c in insp.get_columns(name)}, name
