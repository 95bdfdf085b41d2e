"""Backfill: point-in-time, resumable, idempotent, and safe next to the daily run.

Real shared data (a few panel tickers through the CSV source and the real ingest), a tiny
model, short ranges.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import func, select, text, update
from sqlalchemy.engine import Engine

from forecasting.data.db import init_db, make_engine
from forecasting.data.ingest import ingest
from forecasting.data.schema import forecasts, model_checks, model_versions, pipeline_runs, prices
from forecasting.data.sources import make_source
from forecasting.pipeline.backfill import (
    BackfillDay,
    BackfillError,
    backfill,
    calendar_policy,
    lineage_for,
    trading_days,
)
from forecasting.pipeline.daily import run_pipeline
from forecasting.settings import ModelSettings, PolicySettings, Settings

TICKERS = ["000157.SZ", "600000.SH", "601288.SH"]
HISTORY_FROM = dt.date(2017, 6, 1)
DATA_END = dt.date(2018, 11, 30)
START, END = dt.date(2018, 10, 15), dt.date(2018, 10, 22)  # 6 trading days
SPIKE_AFTER = dt.date(2018, 10, 17)
SMALL_MODEL = ModelSettings(
    input_len=20,
    horizon=5,
    hidden_size=8,
    num_layers=1,
    dropout=0.0,
    max_epochs=2,
    patience=2,
    val_days=20,
    history_days=200,
    batch_size=256,
    finetune_epochs=1,
    finetune_days=100,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    # Two cores shared with other test processes; one intra-op thread is faster here.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_settings(url: str, **policy: Any) -> Settings:
    # check_window 3 / min_check_days 2: the drift check acts within a 6-day range. With only
    # three days scored, the absolute threshold would react to noise; these tests exercise the
    # relative one and the calendar policy.
    base = {
        "min_history": 40,
        "check_window": 3,
        "min_check_days": 2,
        "abs_threshold": None,
        **policy,
    }
    return Settings(database_url=url, model=SMALL_MODEL, policy=PolicySettings(**base))


def panel_file(shared: Path, ticker: str) -> Path:
    code, exch = ticker.split(".")
    return shared / "ashare_qfq_panel" / f"{code}.{exch.lower()}.daily.csv"


def load(engine: Engine, shared: Path, tickers: list[str] = TICKERS, **kw: Any) -> None:
    for t in tickers:
        report = ingest(
            engine,
            make_source("csv", path=panel_file(shared, t)),
            start=kw.get("start", HISTORY_FROM),
            end=kw.get("end", DATA_END),
            progress=False,
        )
        assert report.status == "success", report.summary()


def fresh(url: str, shared: Path) -> Engine:
    engine = make_engine(url)
    init_db(engine)
    load(engine, shared)
    return engine


def forecast_rows(engine: Engine, lineage: str | None = None) -> list[tuple[Any, ...]]:
    """Forecast contents without id, run_id and created_at; the model version is named by
    what it is (scope, kind, trained_through), not by its id, so two databases compare."""
    f, v = forecasts.c, model_versions.c
    stmt = (
        select(
            f.ticker,
            f.as_of_date,
            f.target_date,
            f.horizon,
            f.yhat,
            f.yhat_lower,
            f.yhat_upper,
            f.base_close,
            f.calendar_source,
            v.scope,
            v.kind,
            v.trained_through,
        )
        .join(model_versions, v.id == f.model_version_id)
        .join(pipeline_runs, pipeline_runs.c.run_id == f.run_id)
        .order_by(f.ticker, f.as_of_date, f.horizon, v.scope)
    )
    if lineage is not None:
        stmt = stmt.where(pipeline_runs.c.lineage == lineage)
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(stmt)]


def check_rows(engine: Engine) -> list[tuple[Any, ...]]:
    c = model_checks.c
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                select(c.as_of_date, c.scope, c.decision, c.promoted)
                .join(pipeline_runs, pipeline_runs.c.run_id == c.run_id)
                .where(pipeline_runs.c.status == "success")
                .order_by(c.as_of_date, c.scope)
            )
        ]


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            t.name: int(conn.execute(select(func.count()).select_from(t)).scalar() or 0)
            for t in (forecasts, model_checks, model_versions, pipeline_runs)
        }


def test_trading_days_are_the_days_with_prices(sqlite_url: str, shared_data: Path) -> None:
    """The backfill replays the days with prices in range (weekends and holidays have none),
    and its default lineage names the range."""
    engine = fresh(sqlite_url, shared_data)
    with engine.connect() as conn:
        days = trading_days(conn, dt.date(2018, 9, 28), dt.date(2018, 10, 9))
    # 2018-10-01..07 is the National Day holiday.
    assert days == [dt.date(2018, 9, 28), dt.date(2018, 10, 8), dt.date(2018, 10, 9)]
    assert lineage_for(START, END) == "backfill:2018-10-15:2018-10-22"
    assert lineage_for(START, END, retrain_every=20).endswith(":every20")


def test_a_future_spike_changes_no_earlier_forecast(tmp_path: Path, shared_data: Path) -> None:
    """Two databases differ only by a tripling of every close after SPIKE_AFTER: every
    forecast with an as_of on or before it is identical in both; later ones differ (so the
    comparison can fail)."""
    s = small_settings("unused")
    clean = fresh(f"sqlite:///{tmp_path / 'clean.db'}", shared_data)
    spiked = fresh(f"sqlite:///{tmp_path / 'spiked.db'}", shared_data)
    with spiked.begin() as conn:
        conn.execute(
            update(prices).where(prices.c.trade_date > SPIKE_AFTER).values(close=prices.c.close * 3)
        )
    a = backfill(clean, s, START, END, progress=False)
    b = backfill(spiked, s, START, END, progress=False)
    assert a.completed == b.completed == 6
    rows_a, rows_b = forecast_rows(clean), forecast_rows(spiked)
    before_a = [r for r in rows_a if r[1] <= SPIKE_AFTER]
    before_b = [r for r in rows_b if r[1] <= SPIKE_AFTER]
    assert {r[0] for r in before_a} == set(TICKERS)
    assert len(before_a) == 3 * len(TICKERS) * SMALL_MODEL.horizon
    assert before_a == before_b
    after_a = [r for r in rows_a if r[1] > SPIKE_AFTER]
    after_b = [r for r in rows_b if r[1] > SPIKE_AFTER]
    assert after_a and len(after_a) == len(after_b)
    assert all(x[4] != y[4] for x, y in zip(after_a, after_b, strict=True))
    # Every model the backfill used was trained on or before the day it forecast from.
    assert all(r[11] <= r[1] for r in rows_a)


class Killed(Exception):
    """Stands for a crash or Ctrl-C between two days."""


def test_a_killed_backfill_resumes_and_ends_like_an_uninterrupted_one(
    tmp_path: Path, shared_data: Path
) -> None:
    """Killed after day 3, rerun: days 1-3 are skipped as already complete, days 4-6 are
    written, and forecasts and model checks equal those of an uninterrupted run. Rerunning the
    finished backfill writes nothing at all."""
    # A threshold below 1 makes the drift check refit on both sides of the crash.
    s = small_settings("unused", rel_threshold=0.95)
    whole = fresh(f"sqlite:///{tmp_path / 'whole.db'}", shared_data)
    backfill(whole, s, START, END, progress=False)

    resumed = fresh(f"sqlite:///{tmp_path / 'resumed.db'}", shared_data)
    seen: list[BackfillDay] = []

    def crash_after_three(day: BackfillDay) -> None:
        seen.append(day)
        if len(seen) == 3:
            raise Killed

    with pytest.raises(Killed):
        backfill(resumed, s, START, END, progress=False, on_day=crash_after_three)
    second = backfill(resumed, s, START, END, progress=False)
    assert [d.status for d in second.days] == ["already-complete"] * 3 + ["success"] * 3
    assert [d.as_of for d in second.days[:3]] == [d.as_of for d in seen]
    assert forecast_rows(resumed) == forecast_rows(whole)
    assert check_rows(resumed) == check_rows(whole)
    # The policy refit after the crash too (otherwise resuming would prove little).
    assert [r[2] for r in check_rows(whole)][3:].count("retrain") >= 1

    before = counts(resumed)
    third = backfill(resumed, s, START, END, progress=False)
    assert third.completed == 0 and third.already_complete == 6
    assert counts(resumed) == before
    assert "0 computed, 6 already complete" in third.message


def test_calendar_policy_retrains_every_n_days_and_survives_restarts(
    sqlite_url: str, shared_data: Path
) -> None:
    """retrain_every=2 with the drift check off: a full retrain on the first day and then on
    every second trading day, counted from the last refit, also across a restart; its lineage
    is separate from the drift policy's."""
    engine = fresh(sqlite_url, shared_data)
    s = calendar_policy(small_settings(sqlite_url))
    first = backfill(
        engine, s, START, dt.date(2018, 10, 17), retrain_every=2, progress=False, lineage="cal"
    )
    rest = backfill(engine, s, START, END, retrain_every=2, progress=False, lineage="cal")
    decisions = [d.decision for d in first.days] + [d.decision for d in rest.days[3:]]
    assert decisions == ["retrain", "keep", "retrain", "keep", "retrain", "keep"]
    assert [d.forced for d in rest.days[3:]] == [False, True, False]
    with engine.connect() as conn:
        scopes = set(conn.execute(select(model_versions.c.scope).distinct()).scalars())
    assert scopes == {"cal/global"}


def test_a_lineage_is_never_replayed_backwards(sqlite_url: str, shared_data: Path) -> None:
    """A day before the lineage's newest model is refused with the day, the model and the fix,
    instead of forecasting it with a model that saw its future."""
    engine = fresh(sqlite_url, shared_data)
    s = small_settings(sqlite_url)
    backfill(engine, s, END, END, lineage="bf", progress=False)
    with pytest.raises(BackfillError, match=r"trained through 2018-10-22.*2018-10-15.*new"):
        backfill(engine, s, START, END, lineage="bf", progress=False)


def test_ingest_backfills_new_and_older_history_without_touching_stored_rows(
    sqlite_url: str, shared_data: Path
) -> None:
    """`ingest --start --end` for a new ticker, and for an older start of a stored one, adds
    the missing rows and leaves every stored row (values and ingested_at) as it was."""
    engine = make_engine(sqlite_url)
    init_db(engine)
    load(engine, shared_data, TICKERS[:2], start=dt.date(2018, 1, 2))
    with engine.connect() as conn:
        stored = {tuple(r) for r in conn.execute(select(prices))}
    load(engine, shared_data, TICKERS[:2], start=HISTORY_FROM)
    load(engine, shared_data, [TICKERS[2]], start=HISTORY_FROM)
    with engine.connect() as conn:
        after = {tuple(r) for r in conn.execute(select(prices))}
        firsts = dict(
            conn.execute(
                select(prices.c.ticker, func.min(prices.c.trade_date)).group_by(prices.c.ticker)
            ).all()
        )
    assert stored <= after
    assert len(after) > len(stored)
    assert all(d < dt.date(2017, 6, 10) for d in firsts.values())


@pytest.mark.postgres
def test_backfill_and_daily_run_at_once_write_what_they_write_one_after_the_other(
    pg_url: str, shared_data: Path
) -> None:
    """On Postgres, a backfill and the scheduled daily run (live lineage, on days inside the
    backfill range) running in two threads at the same time leave exactly the rows that
    running them one after the other leaves: no duplicate, no lost row, no deadlock."""
    s = small_settings(pg_url)
    live_days = [dt.date(2018, 10, 18), dt.date(2018, 10, 19)]

    def prepare(schema: str) -> Engine:
        # A second schema next to the fixture's, so the two scenarios never share a row.
        schema = f"{schema}_{uuid.uuid4().hex[:8]}"
        admin = make_engine(pg_url)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        admin.dispose()
        engine = make_engine(pg_url.replace("search_path%3D", f"search_path%3D{schema},"))
        init_db(engine)
        load(engine, shared_data)
        # The live model exists already (trained as of the 17th); the live days keep it, so
        # only the backfill trains and both orders are deterministic.
        run_pipeline(engine, s, dt.date(2018, 10, 17), lineage="live")
        return engine

    def daily(engine: Engine) -> None:
        for d in live_days:
            summary = run_pipeline(engine, s, d, lineage="live", kind="daily")
            assert summary.status == "success"
            assert summary.decision == "keep"

    serial = prepare("serial")
    backfill(serial, s, START, END, progress=False)
    daily(serial)

    together = prepare("together")
    errors: list[BaseException] = []
    gate = threading.Barrier(2)

    def guarded(fn: Any) -> None:
        try:
            gate.wait(timeout=30)
            fn()
        except BaseException as exc:  # re-raised in the main thread below
            errors.append(exc)

    threads = [
        threading.Thread(
            target=guarded, args=(lambda: backfill(together, s, START, END, progress=False),)
        ),
        threading.Thread(target=guarded, args=(lambda: daily(together),)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "deadlock: a thread never finished"
    if errors:
        raise errors[0]
    assert forecast_rows(together) == forecast_rows(serial)
    assert check_rows(together) == check_rows(serial)
    assert counts(together) == counts(serial)
    live = forecast_rows(together, "live")
    assert {r[1] for r in live} == {dt.date(2018, 10, 17), *live_days}
    for engine in (serial, together):
        engine.dispose()


@pytest.mark.prefect
def test_backfill_flow_runs_each_day_as_a_task_and_publishes_its_summary(
    prefect_harness: None,
    sqlite_url: str,
    shared_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Prefect flow replays each day as a task run (named after the day), returns the
    plain result, resumes as a no-op, takes dates as YYYYMMDD too, and publishes a summary
    artifact with a row per day."""
    from prefect.client.orchestration import get_client

    from forecasting_flows.backfill import backfill as backfill_flow

    env = {
        "FORECASTING_DATABASE_URL": sqlite_url,
        "FORECASTING_REPORT_DIR": str(tmp_path / "reports"),
        "FORECASTING_POLICY_MIN_HISTORY": "40",
        **{
            f"FORECASTING_MODEL_{k.upper()}": str(getattr(SMALL_MODEL, k))
            for k in (
                "input_len",
                "horizon",
                "hidden_size",
                "num_layers",
                "dropout",
                "max_epochs",
                "val_days",
                "history_days",
                "batch_size",
            )
        },
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fresh(sqlite_url, shared_data).dispose()
    first = backfill_flow(start="2018-10-15", end="2018-10-17")
    assert first.completed == 3 and first.lineage == "backfill:2018-10-15:2018-10-17"
    again = backfill_flow(start="20181015", end=20181017)  # type: ignore[arg-type]
    assert again.already_complete == 3 and again.completed == 0
    engine = make_engine(sqlite_url)
    assert {r[1] for r in forecast_rows(engine)} == {START, dt.date(2018, 10, 16), SPIKE_AFTER}

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs()
        artifacts = client.read_artifacts()
    names = {r.name for r in runs}
    assert {"backfill-2018-10-15", "backfill-2018-10-16", "backfill-2018-10-17"} <= names
    summaries = [str(a.data) for a in artifacts if a.key == "backfill-summary"]
    assert any("| 2018-10-17 | already-complete |" in md for md in summaries), summaries
    engine.dispose()
