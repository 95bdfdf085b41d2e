"""The queries users run (sql/queries/*.sql) work unchanged on SQLite and Postgres, against a
populated database, and agree with the library."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Date, bindparam, text
from sqlalchemy.engine import Engine
from test_evaluation import BACKFILL, D0, D1, D2, D3, populate

from forecasting.evaluation.evaluation import evaluate

QUERIES = Path(__file__).resolve().parents[2] / "sql" / "queries"
PARAMS: dict[str, dict[str, Any]] = {
    "latest_forecast_per_ticker.sql": {},
    "forecast_path.sql": {"ticker": "AAA.SH", "as_of": D0},
    "retrain_history.sql": {},
    "forecast_accuracy.sql": {},
}
#: Queries over tables this module's ``populate`` does not fill, run by the tests named here.
TESTED_ELSEWHERE = {"price_revisions.sql": "tests/data/test_revisions.py"}


def run(engine: Engine, name: str, **params: Any) -> list[dict[str, Any]]:
    stmt = text((QUERIES / name).read_text(encoding="utf-8"))
    if "as_of" in params:
        stmt = stmt.bindparams(bindparam("as_of", type_=Date))
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(stmt, params).mappings()]


def test_every_query_file_is_tested() -> None:
    """A new query file needs its parameters here, so that it is run below."""
    assert {p.name for p in QUERIES.glob("*.sql")} == set(PARAMS) | set(TESTED_ELSEWHERE)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_query_runs_and_returns_rows(engine: Engine, name: str) -> None:
    """Each query runs on both backends and finds the populated rows."""
    populate(engine)
    assert run(engine, name, **PARAMS[name])


def test_latest_forecast_per_ticker(engine: Engine) -> None:
    """One row per ticker: horizon 1 of its newest as_of, the newest live row for that key; a
    backfill's row for the same key, written later, is not what users read by default."""
    populate(engine)
    rows = run(engine, "latest_forecast_per_ticker.sql")
    assert [(r["ticker"], str(r["as_of_date"]), r["lineage"]) for r in rows] == [
        ("AAA.SH", str(D0), "live"),
        ("BBB.SZ", str(D0), "live"),
    ]
    assert rows[0]["yhat"] == pytest.approx(10.5)
    assert rows[1]["yhat"] == pytest.approx(19.0)


def test_a_backfill_is_read_from_the_all_lineages_views(engine: Engine) -> None:
    """latest_forecasts_all and forecast_errors_all hold every lineage with its name; the
    plain views are the live lineage's."""
    populate(engine)
    with engine.connect() as conn:
        bf = (
            conn.execute(
                text(
                    "SELECT yhat FROM latest_forecasts_all WHERE lineage = :l AND ticker = 'AAA.SH'"
                ),
                {"l": BACKFILL},
            )
            .scalars()
            .all()
        )
        lineages = set(conn.execute(text("SELECT lineage FROM latest_forecasts_all")).scalars())
        live = set(conn.execute(text("SELECT lineage FROM forecast_errors")).scalars())
        errors = set(conn.execute(text("SELECT lineage FROM forecast_errors_all")).scalars())
    assert bf == [pytest.approx(10.9)]
    assert lineages == errors == {"live", BACKFILL}
    assert live == {"live"}


def test_forecast_path(engine: Engine) -> None:
    """The path of one ticker for one as_of, every horizon, with the actual where known."""
    populate(engine)
    rows = run(engine, "forecast_path.sql", ticker="AAA.SH", as_of=D0)
    assert [r["horizon"] for r in rows] == [1, 2, 3]
    assert [str(r["target_date"]) for r in rows] == [str(D1), str(D2), str(D3)]
    assert [r["actual"] for r in rows] == [11.0, 9.0, None]
    assert run(engine, "forecast_path.sql", ticker="AAA.SH", as_of=D2) == []


def test_retrain_history(engine: Engine) -> None:
    """Refits only, oldest first, with the lineage of the run that decided them."""
    populate(engine)
    rows = run(engine, "retrain_history.sql")
    assert [(str(r["as_of_date"]), r["decision"]) for r in rows] == [
        ("2023-12-29", "retrain"),
        (str(D0), "retrain"),
        (str(D0), "retrain"),
        (str(D2), "finetune"),
    ]
    assert {r["lineage"] for r in rows} == {"live", BACKFILL, None}
    assert sum(r["train_seconds"] for r in rows) == pytest.approx(122.5)


def test_forecast_accuracy_agrees_with_evaluate(engine: Engine) -> None:
    """Per horizon, the SQL numbers equal `forecasting evaluate`'s."""
    populate(engine)
    rows = run(engine, "forecast_accuracy.sql")
    with engine.connect() as conn:
        lib = evaluate(conn).by_horizon.set_index("horizon")
    assert [r["horizon"] for r in rows] == list(lib.index)
    for r in rows:
        expected = lib.loc[r["horizon"]]
        assert r["n"] == expected["n"]
        assert r["n_directional"] == expected["n_directional"]
        for col in (
            "rmse",
            "mae",
            "mape",
            "naive_rmse",
            "rmse_ratio",
            "directional_accuracy",
            "coverage",
            "mean_width",
            "mean_width_pct",
            "interval_score",
        ):
            assert float(r[col]) == pytest.approx(float(expected[col])), col
