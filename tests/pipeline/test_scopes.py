"""A run's scope is its ticker set: a restricted run or backfill lives in a lineage of its own."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import Engine
from test_daily_run import TICKERS, TRADING_DAY, load_panel, small_settings

from forecasting.data.schema import forecasts, model_versions, pipeline_runs
from forecasting.model import registry
from forecasting.pipeline.backfill import backfill
from forecasting.pipeline.daily import run_pipeline

DAY = dt.date(2016, 6, 30)


def test_a_restricted_run_neither_completes_the_day_nor_trains_the_live_model(
    sqlite_engine: Engine, sqlite_url: str, shared_data: Path
) -> None:
    """``run --tickers ONE`` runs in the lineage ``live[ONE]`` with a model of its own; the
    unrestricted run of the same day then runs (it is not "already completed") and trains the
    live model on every ticker. The same holds for a backfill restricted to one ticker."""
    load_panel(sqlite_engine, shared_data, end=DAY)
    s = small_settings(sqlite_url)
    one = TICKERS[0]

    restricted = run_pipeline(sqlite_engine, s, DAY, today=TRADING_DAY, tickers=[one])
    assert restricted.status == "success"
    assert restricted.lineage == f"live[{one}]"
    assert restricted.tickers_forecast == [one]
    with sqlite_engine.connect() as conn:
        assert registry.active_version(conn, "global") is None
        assert registry.active_version(conn, f"live[{one}]/global") is not None

    full = run_pipeline(sqlite_engine, s, DAY, today=TRADING_DAY)
    assert full.status == "success" and full.lineage == "live"
    assert full.tickers_forecast == sorted(TICKERS)
    with sqlite_engine.connect() as conn:
        live = conn.execute(
            select(model_versions.c.tickers).where(
                model_versions.c.scope == "global", model_versions.c.status == "active"
            )
        ).scalar_one()
    assert sorted(json.loads(live)) == sorted(TICKERS)

    backfill(sqlite_engine, s, DAY, DAY, tickers=[one], progress=False)
    result = backfill(sqlite_engine, s, DAY, DAY, progress=False)
    assert result.completed == 1
    with sqlite_engine.connect() as conn:
        tickers_by_lineage: dict[str, set[str]] = {}
        for r in conn.execute(
            select(pipeline_runs.c.lineage, forecasts.c.ticker).join(
                forecasts, forecasts.c.run_id == pipeline_runs.c.run_id
            )
        ):
            tickers_by_lineage.setdefault(r.lineage, set()).add(r.ticker)
    base = f"backfill:{DAY}:{DAY}"
    assert tickers_by_lineage[f"{base}[{one}]"] == {one}
    assert tickers_by_lineage[base] == set(TICKERS)
    assert set(tickers_by_lineage) == {"live", f"live[{one}]", base, f"{base}[{one}]"}
