"""The daily pipeline as library steps, on real shared data, on SQLite and Postgres."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.engine import Engine

from forecasting.data.calendar import TradingCalendar
from forecasting.data.ingest import ingest
from forecasting.data.schema import (
    forecast_staging,
    forecasts,
    model_checks,
    pipeline_runs,
    run_skips,
)
from forecasting.data.sources import make_source
from forecasting.model import registry
from forecasting.model.registry import active_version
from forecasting.pipeline.check import check_scope
from forecasting.pipeline.daily import fail_run, open_run, publish, run_pipeline
from forecasting.pipeline.forecast import forecast_shard, target_dates
from forecasting.pipeline.scopes import scope_units
from forecasting.settings import ModelSettings, PolicySettings, Settings

#: "Today" for runs with no as-of day: a trading day (a closed day would stop the run), so that
#: the tests pass on any day of the week; each run resolves to its newest price day.
TRADING_DAY = dt.date(2026, 12, 1)
TICKERS = ["000063.SZ", "000157.SZ", "000402.SZ", "000408.SZ", "000166.SZ"]
SMALL_MODEL = ModelSettings(
    input_len=20,
    horizon=5,
    hidden_size=8,
    num_layers=1,
    dropout=0.0,
    max_epochs=2,
    patience=2,
    val_days=20,
    history_days=300,
    batch_size=256,
    finetune_epochs=1,
)


def small_settings(url: str, **policy: object) -> Settings:
    return Settings(
        database_url=url,
        model=SMALL_MODEL,
        policy=PolicySettings(**{"min_history": 40, **policy}),  # type: ignore[arg-type]
    )


def panel_file(shared: Path, ticker: str) -> Path:
    code, exch = ticker.split(".")
    return shared / "ashare_qfq_panel" / f"{code}.{exch.lower()}.daily.csv"


def load_panel(engine: Engine, shared: Path, end: dt.date, tickers: list[str] = TICKERS) -> None:
    for t in tickers:
        ingest(
            engine,
            make_source("csv", path=panel_file(shared, t)),
            end=end,
            history_start=dt.date(2015, 1, 1),
            progress=False,
        )


def forecast_rows(engine: Engine) -> list[tuple]:
    with engine.connect() as conn:
        return sorted(
            conn.execute(
                select(
                    forecasts.c.ticker,
                    forecasts.c.as_of_date,
                    forecasts.c.target_date,
                    forecasts.c.horizon,
                    forecasts.c.yhat,
                    forecasts.c.run_id,
                )
            ).all()
        )


@pytest.mark.slow
def test_end_to_end_writes_every_eligible_ticker_once(
    engine: Engine, db_url: str, shared_data: Path
) -> None:
    """A run forecasts horizons 1..H for every eligible ticker; a second run for the same
    as_of writes nothing new."""
    load_panel(engine, shared_data, end=dt.date(2016, 6, 30))
    s = small_settings(db_url)
    first = run_pipeline(engine, s, today=TRADING_DAY)
    assert first.status == "success"
    assert first.as_of == dt.date(2016, 6, 30)
    assert first.outcomes[0].action == "retrain"
    # 000166.SZ listed in 2015-01: enough history with min_history=40.
    assert first.tickers_forecast == sorted(TICKERS)
    assert first.skipped == {}
    rows = forecast_rows(engine)
    assert len(rows) == len(TICKERS) * SMALL_MODEL.horizon
    assert {r.horizon for r in rows} == set(range(1, SMALL_MODEL.horizon + 1))
    # The next trading days after 2016-06-30 (a Thursday): 07-01, 07-04, 07-05, ...
    assert sorted({r.target_date for r in rows})[:3] == [
        dt.date(2016, 7, 1),
        dt.date(2016, 7, 4),
        dt.date(2016, 7, 5),
    ]
    assert len(first.next_day) == len(TICKERS)

    second = run_pipeline(engine, s, today=TRADING_DAY)
    assert second.status == "already-complete"
    assert forecast_rows(engine) == rows
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(pipeline_runs)).scalar() == 1

    # A forced recomputation with the same model replaces, never duplicates.
    third = run_pipeline(engine, s, today=TRADING_DAY, rerun=True)
    assert third.status == "success"
    assert third.written is not None and third.written.inserted == 0
    assert len(forecast_rows(engine)) == len(rows)


def test_skips_stale_and_short_tickers_with_reasons(
    sqlite_engine: Engine, sqlite_url: str, shared_data: Path
) -> None:
    """A ticker whose newest price is older than the as-of day is never forecast from those
    prices: it is skipped as ``stale since D`` and the run is ``partial``, in the summary and
    in the database (``pipeline_runs.status``, a ``run_skips`` row). A ticker with too little
    history is skipped with its reason too, which alone would not make the run partial."""
    load_panel(sqlite_engine, shared_data, end=dt.date(2016, 6, 30), tickers=TICKERS[:3])
    load_panel(sqlite_engine, shared_data, end=dt.date(2016, 4, 1), tickers=["000408.SZ"])
    s = small_settings(sqlite_url, min_history=300)
    summary = run_pipeline(sqlite_engine, s, today=TRADING_DAY)
    assert summary.status == "partial"
    assert summary.skipped["000408.SZ"] == "stale since 2016-04-01"
    assert set(summary.tickers_forecast) == set(TICKERS[:3])
    assert "# Daily forecast run" in summary.markdown()
    assert "000408.SZ" in summary.markdown()
    with sqlite_engine.connect() as conn:
        status = conn.execute(select(pipeline_runs.c.status)).scalar_one()
        skips = {r.ticker: r.reason for r in conn.execute(select(run_skips))}
    assert status == "partial"
    assert skips == summary.skipped
    assert run_pipeline(sqlite_engine, s, today=TRADING_DAY).status == "already-complete"


def _write_regime_break(src: Path, dst: Path, after: dt.date, factor: float) -> None:
    """Copy a tushare CSV, multiplying the daily log-returns after ``after`` by ``factor``."""
    df = pd.read_csv(src, index_col=0, dtype={"trade_date": str})
    df = df.sort_values("trade_date").reset_index(drop=True)
    dates = pd.to_datetime(df["trade_date"], format="%Y%m%d").dt.date
    r = np.diff(np.log(df["close"].to_numpy()), prepend=np.log(df["close"].iloc[0]))
    r = np.where(dates > after, r * factor, r)
    close = float(df["close"].iloc[0]) * np.exp(np.cumsum(r) - r[0])
    scale = close / df["close"].to_numpy()
    for col in ("open", "high", "low", "close"):
        df[col] = df[col] * scale
    df.to_csv(dst)


def test_quiet_keeps_and_drift_triggers_refit(
    sqlite_engine: Engine, sqlite_url: str, shared_data: Path, tmp_path: Path
) -> None:
    """A quiet period keeps the active model; a planted 5x volatility break crosses the
    threshold and triggers a fine-tune or retrain, recorded in model_checks."""
    cutoff = dt.date(2016, 6, 30)
    load_panel(sqlite_engine, shared_data, end=cutoff)
    s = small_settings(sqlite_url)
    run_pipeline(sqlite_engine, s, today=TRADING_DAY)  # trains the first model through the cutoff
    with sqlite_engine.connect() as conn:
        first = active_version(conn, "global")
    assert first is not None and first.trained_through == cutoff

    # Quiet: the real next month.
    load_panel(sqlite_engine, shared_data, end=dt.date(2016, 7, 29))
    quiet = run_pipeline(sqlite_engine, s, today=TRADING_DAY)
    assert quiet.outcomes[0].action == "keep", quiet.outcomes[0].reason
    assert "x its validation RMSE" in quiet.outcomes[0].reason

    # Drift: 5x the volatility of three of the five series from August on.
    broken = tmp_path / "broken"
    broken.mkdir()
    for t in TICKERS[:3]:
        _write_regime_break(
            panel_file(shared_data, t),
            broken / panel_file(shared_data, t).name,
            dt.date(2016, 7, 29),
            5.0,
        )
    for t in TICKERS[:3]:
        ingest(
            sqlite_engine,
            make_source("csv", path=broken / panel_file(shared_data, t).name),
            end=dt.date(2016, 8, 31),
            history_start=dt.date(2015, 1, 1),
            progress=False,
        )
    load_panel(sqlite_engine, shared_data, end=dt.date(2016, 8, 31), tickers=TICKERS[3:])
    drift = run_pipeline(sqlite_engine, s, today=TRADING_DAY)
    outcome = drift.outcomes[0]
    assert outcome.action in ("finetune", "retrain"), outcome.reason
    assert "degradation threshold" in outcome.reason
    with sqlite_engine.connect() as conn:
        checks = conn.execute(select(model_checks).order_by(model_checks.c.id)).all()
    assert [c.decision for c in checks] == ["retrain", "keep", outcome.action]
    last = checks[-1]
    assert last.as_of_date == dt.date(2016, 8, 31)
    assert last.model_version_id == first.id
    assert last.new_version_id is not None
    assert last.rmse is not None and last.naive_rmse is not None and last.threshold is not None


def test_a_rejected_refit_restarts_the_age_and_evidence_clock(
    sqlite_engine: Engine, sqlite_url: str, shared_data: Path
) -> None:
    """Once a challenger trained through a later day was rejected, the active model counts as
    re-validated on that day: no refit is retried until ``min_check_days`` new trading days
    arrive and it is old again (before this rule, an age retrain that tied was retried daily)."""
    load_panel(sqlite_engine, shared_data, end=dt.date(2016, 6, 30))
    s = small_settings(sqlite_url, max_age_days=30)
    run_pipeline(sqlite_engine, s, today=TRADING_DAY)
    load_panel(sqlite_engine, shared_data, end=dt.date(2016, 8, 31))
    as_of = dt.date(2016, 8, 31)

    due = check_scope(sqlite_engine, s, as_of, "global", TICKERS)
    assert due.action == "retrain"
    assert "62 days old > max_age_days 30" in due.reason

    with sqlite_engine.begin() as conn:
        active = active_version(conn, "global")
        assert active is not None
        challenger = registry.load_model(conn, active.id)
        challenger.trained_through = dt.date(2016, 8, 29)
        registry.save_version(
            conn, challenger, kind="full", parent_id=None, scope="global", status="rejected"
        )
    cooling = check_scope(sqlite_engine, s, as_of, "global", TICKERS)
    assert cooling.action == "keep", cooling.reason
    assert cooling.version_id == active.id
    # Too few days to judge by: recorded as the trigger, with the numbers it had.
    assert (cooling.triggered_by, cooling.unseen_days) == ("too-few-days", 2)
    assert "challenger trained through 2016-08-29 was rejected" in cooling.reason
    assert cooling.model_age_days == 2

    # Thirty-odd days after the rejection the clock runs out again, counted from it.
    load_panel(sqlite_engine, shared_data, end=dt.date(2016, 9, 30))
    later = check_scope(sqlite_engine, s, dt.date(2016, 9, 30), "global", TICKERS)
    assert later.action == "retrain"
    assert "32 days old" in later.reason
    assert "counted from the rejected refit trained through 2016-08-29" in later.reason


def test_crash_before_commit_leaves_no_rows_of_that_run(
    sqlite_engine: Engine, sqlite_url: str, shared_data: Path
) -> None:
    """A crash between computing forecasts and committing them leaves no forecast rows of
    that run, and the run is recorded as failed."""
    load_panel(sqlite_engine, shared_data, end=dt.date(2016, 6, 30), tickers=TICKERS[:2])
    s = small_settings(sqlite_url)

    class Crash(RuntimeError):
        pass

    def crash_on_forecast_commit(conn: object) -> None:
        rows = conn.execute(text("SELECT COUNT(*) FROM forecasts")).scalar()  # type: ignore[attr-defined]
        if rows:
            raise Crash("injected crash before commit")

    event.listen(sqlite_engine, "commit", crash_on_forecast_commit)
    try:
        with pytest.raises(Crash):
            run_pipeline(sqlite_engine, s, today=TRADING_DAY)
    finally:
        event.remove(sqlite_engine, "commit", crash_on_forecast_commit)
    with sqlite_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(forecasts)).scalar() == 0
        status = conn.execute(select(pipeline_runs.c.status)).scalars().all()
    assert status == ["failed"]
    # The next run succeeds and is not fooled by the failed one.
    assert run_pipeline(sqlite_engine, s, today=TRADING_DAY).status == "success"


def _count(engine: Engine, table: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def test_sharded_forecasts_stage_then_publish_in_one_transaction(
    engine: Engine, db_url: str, shared_data: Path
) -> None:
    """Shards stage their rows on their own (readers see none of them); the write publishes
    all of them at once and empties the stage; the rows are exactly what the unsharded library
    run computes for the same day. A failed run and a run that died leave nothing staged."""
    load_panel(engine, shared_data, end=dt.date(2016, 6, 30))
    s = small_settings(db_url)
    run_pipeline(engine, s, today=TRADING_DAY)  # trains the model
    load_panel(engine, shared_data, end=dt.date(2016, 7, 29))
    as_of = dt.date(2016, 7, 29)
    before = _count(engine, forecasts)

    run_id = open_run(engine, as_of, lineage="live", kind="daily")
    assert isinstance(run_id, str)
    units = scope_units(s, TICKERS)
    parts = [
        forecast_shard(engine, s, as_of, {"global": TICKERS[:2]}, run_id),
        forecast_shard(engine, s, as_of, {"global": TICKERS[2:]}, run_id),
    ]
    # A retried shard re-stages its tickers instead of duplicating them.
    parts[0] = forecast_shard(engine, s, as_of, {"global": TICKERS[:2]}, run_id)
    batch = parts[0].merge(parts[1])
    assert batch.rows == [] and batch.tickers == sorted(TICKERS)
    assert batch.n_staged == len(TICKERS) * SMALL_MODEL.horizon
    assert _count(engine, forecast_staging) == batch.n_staged
    assert _count(engine, forecasts) == before  # nothing visible yet

    written = publish(engine, run_id, batch, [])
    assert written.inserted == batch.n_staged
    assert _count(engine, forecasts) == before + batch.n_staged
    assert _count(engine, forecast_staging) == 0

    # The unsharded path computes the very same rows: a rerun finds them all unchanged.
    again = run_pipeline(engine, s, as_of, rerun=True, tickers=list(units["global"]))
    assert again.written is not None
    assert (again.written.inserted, again.written.replaced) == (0, 0)
    assert again.written.unchanged == batch.n_staged

    # A failed run clears what it staged; so does the next run after one that died.
    failed = open_run(engine, as_of, lineage="live", kind="daily", redo=True)
    assert isinstance(failed, str)
    forecast_shard(engine, s, as_of, units, failed)
    fail_run(engine, failed, RuntimeError("injected"))
    assert _count(engine, forecast_staging) == 0
    died = open_run(engine, as_of, lineage="live", kind="daily", redo=True)
    assert isinstance(died, str)
    forecast_shard(engine, s, as_of, units, died)
    assert _count(engine, forecast_staging) > 0
    # The next run holds the lineage lock, so a run of the lineage still marked running died:
    # it is marked abandoned and its staged rows go.
    nxt = open_run(engine, as_of, lineage="live", kind="daily", redo=True)
    assert isinstance(nxt, str)
    with engine.connect() as conn:
        status = conn.execute(
            select(pipeline_runs.c.status).where(pipeline_runs.c.run_id == died)
        ).scalar_one()
    assert status == "abandoned"
    assert _count(engine, forecast_staging) == 0


@pytest.mark.parametrize(
    ("as_of", "expected", "source"),
    [
        # Friday -> Monday, skipping the weekend.
        (dt.date(2026, 11, 20), [dt.date(2026, 11, 23), dt.date(2026, 11, 24)], "xshg"),
        # National Day Golden Week 2026-10-01..07 is closed on XSHG.
        (dt.date(2026, 9, 30), [dt.date(2026, 10, 8), dt.date(2026, 10, 9)], "xshg"),
        # Across 2026-12-31: exchange_calendars ends there, weekdays take over and say so.
        (dt.date(2026, 12, 30), [dt.date(2026, 12, 31), dt.date(2027, 1, 1)], "weekdays"),
    ],
)
def test_target_dates_skip_weekends_and_holidays(
    as_of: dt.date, expected: list[dt.date], source: str
) -> None:
    """Target dates are the h-th trading day after as_of, with the weakest calendar source."""
    cal = TradingCalendar.from_rows({})
    got = target_dates(cal, as_of, 2)
    assert [d for d, _ in got] == expected
    assert got[-1][1] == source


def test_target_dates_prefer_the_database_calendar() -> None:
    """tushare trade_cal rows in the database override the fallbacks past 2026-12-31."""
    rows = {
        dt.date(2026, 12, 31): True,
        dt.date(2027, 1, 1): False,
        dt.date(2027, 1, 2): False,
        dt.date(2027, 1, 3): False,
        dt.date(2027, 1, 4): True,
    }
    cal = TradingCalendar.from_rows(rows)
    got = target_dates(cal, dt.date(2026, 12, 30), 2)
    assert got == [(dt.date(2026, 12, 31), "database"), (dt.date(2027, 1, 4), "database")]


def test_a_silent_run_of_another_lineage_is_abandoned_after_the_configured_time(
    sqlite_engine: Engine,
) -> None:
    """A ``running`` run of another lineage is left alone while its heartbeat is younger than
    ``policy.abandon_after_s``, and marked abandoned by the next run once it is older."""
    from sqlalchemy import update

    from forecasting.pipeline.runs import utcnow

    day = dt.date(2019, 1, 4)
    quiet = open_run(sqlite_engine, day, lineage="backfill:2019-01-04:2019-01-04", kind="daily")
    assert isinstance(quiet, str)
    with sqlite_engine.begin() as conn:
        conn.execute(
            update(pipeline_runs)
            .where(pipeline_runs.c.run_id == quiet)
            .values(heartbeat_at=utcnow() - dt.timedelta(minutes=5))
        )

    def status() -> str:
        with sqlite_engine.connect() as conn:
            return str(
                conn.execute(
                    select(pipeline_runs.c.status).where(pipeline_runs.c.run_id == quiet)
                ).scalar_one()
            )

    open_run(
        sqlite_engine, day, lineage="live", kind="daily", abandon_after=dt.timedelta(minutes=10)
    )
    assert status() == "running"
    open_run(
        sqlite_engine,
        day,
        lineage="live",
        kind="daily",
        redo=True,
        abandon_after=dt.timedelta(seconds=PolicySettings(abandon_after_s=240).abandon_after_s),
    )
    assert status() == "abandoned"
