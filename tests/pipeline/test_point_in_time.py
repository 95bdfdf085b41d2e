"""Point-in-time runs and recovery from a broken champion, on real prices.

No forecast row's model is trained past its as-of date, whatever path wrote it: a run, a run
as of a past day, a rerun, a backfill. A champion whose checkpoint is broken is retired with
the reason, and a full retrain takes its place.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import select, text, update
from sqlalchemy.engine import Engine
from test_daily_run import TRADING_DAY, load_panel, small_settings

from forecasting.data.schema import model_versions
from forecasting.model import registry
from forecasting.pipeline.backfill import backfill
from forecasting.pipeline.daily import run_pipeline
from forecasting.pipeline.refit import train

LATE = dt.date(2016, 6, 30)
PAST = dt.date(2016, 5, 31)
BETWEEN = dt.date(2016, 6, 15)


def leaking_rows(engine: Engine) -> int:
    """Forecast rows whose model was trained past the row's as-of date."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT COUNT(*) FROM forecasts f "
                    "JOIN model_versions v ON v.id = f.model_version_id "
                    "WHERE v.trained_through > f.as_of_date"
                )
            ).scalar_one()
        )


def test_no_forecast_comes_from_a_model_trained_past_its_day(
    sqlite_engine: Engine, sqlite_url: str, shared_data: Path
) -> None:
    """After a run as of a late day trained the live model, a run as of an earlier day (no
    version was live then) trains its own model through that day, which never goes live; a
    run between the two uses that one; a rerun and a backfill keep the rule. The live champion
    stays the late model throughout, and every forecast row has trained_through <= as_of."""
    load_panel(sqlite_engine, shared_data, end=LATE)
    s = small_settings(sqlite_url)
    late = run_pipeline(sqlite_engine, s, LATE, today=TRADING_DAY)
    assert late.status == "success"
    with sqlite_engine.connect() as conn:
        champion = registry.active_version(conn, "global")
    assert champion is not None and champion.trained_through == LATE

    past = run_pipeline(sqlite_engine, s, PAST, today=TRADING_DAY)
    assert past.status == "success" and past.as_of == PAST
    (outcome,) = past.outcomes
    assert outcome.action == "retrain" and outcome.point_in_time
    assert "point-in-time" in outcome.reason
    assert outcome.new_version_id is not None
    with sqlite_engine.connect() as conn:
        made = registry.get_version(conn, outcome.new_version_id)
        assert registry.active_version(conn, "global") == champion
    assert (made.trained_through, made.status) == (PAST, "retired")
    assert leaking_rows(sqlite_engine) == 0

    between = run_pipeline(sqlite_engine, s, BETWEEN, today=TRADING_DAY)
    assert between.outcomes[0].action == "keep"
    assert between.outcomes[0].active_version_id == made.id
    again = run_pipeline(sqlite_engine, s, PAST, today=TRADING_DAY, rerun=True)
    assert again.written is not None and again.written.inserted == 0  # same model, same rows
    assert again.outcomes[0].active_version_id == made.id
    backfill(sqlite_engine, s, dt.date(2016, 6, 1), dt.date(2016, 6, 3), progress=False)

    assert leaking_rows(sqlite_engine) == 0
    with sqlite_engine.connect() as conn:
        assert registry.active_version(conn, "global") == champion


def test_a_broken_champion_is_retired_with_the_reason_then_retrained(
    sqlite_engine: Engine, sqlite_url: str, shared_data: Path
) -> None:
    """A champion whose checkpoint bytes were altered does not block the next run: the run
    retires it (``retired_reason`` says why), retrains from scratch and forecasts. ``train
    --full`` on a broken champion does the same instead of failing on it."""
    load_panel(sqlite_engine, shared_data, end=LATE)
    s = small_settings(sqlite_url)
    run_pipeline(sqlite_engine, s, LATE, today=TRADING_DAY)
    with sqlite_engine.begin() as conn:
        conn.execute(update(model_versions).values(checkpoint=b"not a checkpoint"))

    rerun = run_pipeline(sqlite_engine, s, LATE, today=TRADING_DAY, rerun=True)

    assert rerun.status == "success"
    (outcome,) = rerun.outcomes
    assert outcome.action == "retrain" and outcome.triggered_by == "no-model"
    assert "version 1 retired" in outcome.reason
    with sqlite_engine.connect() as conn:
        first = conn.execute(select(model_versions).where(model_versions.c.id == 1)).one()
        active = registry.active_version(conn, "global")
    assert first.status == "retired"
    assert "corrupt" in first.retired_reason
    assert active is not None and active.id == outcome.new_version_id

    with sqlite_engine.begin() as conn:
        conn.execute(
            update(model_versions)
            .where(model_versions.c.id == active.id)
            .values(checkpoint=b"broken again")
        )
    (trained,) = train(sqlite_engine, s)
    assert trained.promoted
    with sqlite_engine.connect() as conn:
        second = registry.get_version(conn, active.id)
        now = registry.active_version(conn, "global")
    assert second.status == "retired"
    assert now is not None and now.id == trained.new_version_id
