"""Evaluation of stored forecasts: a small case computed by hand, on SQLite and Postgres."""

from __future__ import annotations

import datetime as dt
import math

import pandas as pd
import pytest
from sqlalchemy import insert
from sqlalchemy.engine import Connection, Engine

from forecasting.data.schema import forecasts, model_checks, model_versions, pipeline_runs, prices
from forecasting.evaluation.evaluation import evaluate, metrics

D_BEFORE = dt.date(2023, 12, 29)
D0, D1, D2, D3 = (dt.date(2024, 1, d) for d in (2, 3, 4, 5))
T0 = dt.datetime(2024, 1, 2, 10, 0, tzinfo=dt.UTC)
BACKFILL = "backfill:2024-01-02:2024-01-04"


def _version(conn: Connection, scope: str, through: dt.date, status: str = "active") -> int:
    return conn.execute(
        insert(model_versions).values(
            created_at=T0,
            scope=scope,
            kind="full",
            trained_through=through,
            tickers='["AAA.SH", "BBB.SZ"]',
            config="{}",
            scaler="{}",
            history='[{"epoch": 1, "train_loss": 0.9, "val_loss": 1.0, "lr": 0.001}, '
            '{"epoch": 2, "train_loss": 0.7, "val_loss": 0.95, "lr": 0.001}]',
            train_seconds=1.0,
            checkpoint_sha256="0" * 64,
            status=status,
        )
    ).inserted_primary_key[0]


def _run(conn: Connection, run_id: str, as_of: dt.date, lineage: str = "live") -> None:
    conn.execute(
        insert(pipeline_runs).values(
            run_id=run_id,
            kind="daily" if lineage == "live" else "backfill",
            lineage=lineage,
            as_of_date=as_of,
            started_at=T0,
            finished_at=T0,
            status="success",
        )
    )


def _fc(
    ticker: str,
    as_of: dt.date,
    h: int,
    target: dt.date,
    yhat: float,
    lo: float,
    hi: float,
    base: float,
    version: int,
    run_id: str,
    minutes: int = 0,
) -> dict[str, object]:
    return dict(
        ticker=ticker,
        as_of_date=as_of,
        target_date=target,
        horizon=h,
        yhat=yhat,
        yhat_lower=lo,
        yhat_upper=hi,
        base_close=base,
        model_version_id=version,
        run_id=run_id,
        calendar_source="database",
        created_at=T0 + dt.timedelta(minutes=minutes),
    )


def _check(
    as_of: dt.date, scope: str, decision: str, seconds: float | None, run_id: str | None
) -> dict[str, object]:
    return dict(
        run_id=run_id,
        as_of_date=as_of,
        scope=scope,
        check_window=20,
        rmse=1.0,
        naive_rmse=1.0,
        ratio=1.2 if decision != "keep" else 0.9,
        threshold=1.05,
        decision=decision,
        reason="test",
        train_seconds=seconds,
        promoted=True if decision != "keep" else None,
        created_at=T0,
    )


def populate(engine: Engine) -> None:
    """Two tickers, closes on D0..D2, one live forecast path of two horizons each from D0,
    plus rows that must not count: a superseded older forecast, a target without a close, an
    as_of before the range, and a backfill lineage's forecast and refit.

    By hand (live lineage, as_of in [D0, D2]):

    ============  ====  =====  ======  =====  ======  ======  =======  =====
    ticker, h     base  yhat   band    close  error   naive   covered  dir
    ============  ====  =====  ======  =====  ======  ======  =======  =====
    AAA.SH, 1     10    10.5   10..11  11     -0.5    -1      yes      hit
    AAA.SH, 2     10    10.2   9.5..11  9     +1.2    +1      no       miss
    BBB.SZ, 1     20    19     18..21  20     -1       0      yes      miss
    BBB.SZ, 2     20    21     19..23  22     -1      -2      yes      hit
    ============  ====  =====  ======  =====  ======  ======  =======  =====
    """
    with engine.begin() as conn:
        for ticker, closes in {
            "AAA.SH": {D_BEFORE: 9.8, D0: 10.0, D1: 11.0, D2: 9.0},
            "BBB.SZ": {D_BEFORE: 19.0, D0: 20.0, D1: 20.0, D2: 22.0},
        }.items():
            conn.execute(
                insert(prices),
                [
                    dict(ticker=ticker, trade_date=d, close=c, source="test", ingested_at=T0)
                    for d, c in closes.items()
                ],
            )
        old = _version(conn, "global", D_BEFORE, "retired")
        live = _version(conn, "global", D0)
        bf = _version(conn, f"{BACKFILL}/global", D0)
        _run(conn, "run-before", D_BEFORE)
        _run(conn, "run-d0", D0)
        _run(conn, "run-bf", D0, BACKFILL)
        conn.execute(
            insert(forecasts),
            [
                # as_of before the range: excluded by start=D0
                _fc("AAA.SH", D_BEFORE, 1, D0, 50.0, 40.0, 60.0, 9.8, old, "run-before"),
                # superseded: an older row for the same key from another version
                _fc("AAA.SH", D0, 1, D1, 100.0, 90.0, 110.0, 10.0, old, "run-before", -5),
                _fc("AAA.SH", D0, 1, D1, 10.5, 10.0, 11.0, 10.0, live, "run-d0"),
                _fc("AAA.SH", D0, 2, D2, 10.2, 9.5, 11.0, 10.0, live, "run-d0"),
                # target day without a close yet: not evaluable
                _fc("AAA.SH", D0, 3, D3, 10.0, 9.0, 11.0, 10.0, live, "run-d0"),
                _fc("BBB.SZ", D0, 1, D1, 19.0, 18.0, 21.0, 20.0, live, "run-d0"),
                _fc("BBB.SZ", D0, 2, D2, 21.0, 19.0, 23.0, 20.0, live, "run-d0"),
                # a backfill lineage's forecast, written later than the live one
                _fc("AAA.SH", D0, 1, D1, 10.9, 10.0, 12.0, 10.0, bf, "run-bf", 5),
            ],
        )
        conn.execute(
            insert(model_checks),
            [
                _check(D_BEFORE, "global", "retrain", 100.0, "run-before"),
                _check(D0, "global", "retrain", 12.5, "run-d0"),
                _check(D1, "global", "keep", None, None),
                _check(D2, "global", "finetune", 3.0, None),
                _check(D0, f"{BACKFILL}/global", "retrain", 7.0, "run-bf"),
            ],
        )


def test_metrics_match_the_hand_computed_case(engine: Engine) -> None:
    """RMSE, MAE, MAPE, ratio to naive, direction, coverage and width match the table in
    populate(), overall and per horizon and per ticker."""
    populate(engine)
    with engine.connect() as conn:
        rep = evaluate(conn, start=D0, end=D2, lineage="live")
    o = rep.overall
    assert o["n"] == 4
    assert o["rmse"] == pytest.approx(math.sqrt((0.25 + 1.44 + 1 + 1) / 4))
    assert o["mae"] == pytest.approx((0.5 + 1.2 + 1 + 1) / 4)
    assert o["mape"] == pytest.approx(100 * (0.5 / 11 + 1.2 / 9 + 1 / 20 + 1 / 22) / 4)
    assert o["naive_rmse"] == pytest.approx(math.sqrt((1 + 1 + 0 + 4) / 4))
    assert o["rmse_ratio"] == pytest.approx(math.sqrt(3.69 / 4) / math.sqrt(6 / 4))
    assert o["directional_accuracy"] == pytest.approx(0.5)
    assert o["n_directional"] == 4
    assert o["coverage"] == pytest.approx(0.75)
    assert o["mean_width"] == pytest.approx((1 + 1.5 + 3 + 4) / 4)

    h = rep.by_horizon.set_index("horizon")
    assert list(h.index) == [1, 2]
    assert h.loc[1, "rmse"] == pytest.approx(math.sqrt((0.25 + 1) / 2))
    assert h.loc[1, "rmse_ratio"] == pytest.approx(math.sqrt(1.25 / 2) / math.sqrt(1 / 2))
    assert h.loc[1, "directional_accuracy"] == pytest.approx(0.5)
    assert h.loc[2, "coverage"] == pytest.approx(0.5)
    assert h.loc[2, "naive_rmse"] == pytest.approx(math.sqrt((1 + 4) / 2))

    t = rep.by_ticker.set_index("ticker")
    assert t.loc["AAA.SH", "mae"] == pytest.approx(0.85)
    assert t.loc["BBB.SZ", "rmse_ratio"] == pytest.approx(1 / math.sqrt(2))
    assert t.loc["BBB.SZ", "mean_width"] == pytest.approx(3.5)


def test_refits_in_range_are_counted_with_their_training_seconds(engine: Engine) -> None:
    """Decisions other than keep with as_of in range count, each with its training seconds;
    a lineage keeps its own scopes only."""
    populate(engine)
    with engine.connect() as conn:
        live = evaluate(conn, start=D0, end=D2, lineage="live")
        everything = evaluate(conn, start=D0, end=D2)
        backfill = evaluate(conn, start=D0, end=D2, lineage=BACKFILL)
    assert (live.n_retrains, live.n_finetunes, live.train_seconds) == (1, 1, 15.5)
    assert (everything.n_retrains, everything.n_finetunes) == (2, 1)
    assert everything.train_seconds == pytest.approx(22.5)
    assert (backfill.n_retrains, backfill.n_finetunes, backfill.train_seconds) == (1, 0, 7.0)


def test_lineages_do_not_mix_and_the_view_shows_the_newest(engine: Engine) -> None:
    """A lineage is evaluated on its own forecasts; without one, the forecast_errors view
    decides, and it shows the live lineage only: a backfill's row written later for the same
    key does not replace the live one there."""
    populate(engine)
    with engine.connect() as conn:
        bf = evaluate(conn, lineage=BACKFILL)
        view = evaluate(conn, start=D0, end=D2)
        only_b = evaluate(conn, start=D0, end=D2, tickers=["bbb.sz"], lineage="live")
    assert bf.overall["n"] == 1
    assert bf.overall["rmse"] == pytest.approx(0.1)
    assert view.overall["n"] == 4
    assert view.by_ticker.set_index("ticker").loc["AAA.SH", "mae"] == pytest.approx((0.5 + 1.2) / 2)
    assert list(only_b.by_ticker["ticker"]) == ["BBB.SZ"]
    assert only_b.overall["n"] == 2


def test_text_and_frames(engine: Engine) -> None:
    """to_text prints the three tables and the refit line; to_frames gives DataFrames; an
    empty range says what to do instead of printing NaNs."""
    populate(engine)
    with engine.connect() as conn:
        rep = evaluate(conn, start=D0, end=D2, lineage="live")
        empty = evaluate(conn, start=dt.date(2030, 1, 1))
    text = rep.to_text()
    for needle in ("Overall", "By horizon", "By ticker", "AAA.SH", "1 retrains, 1 fine-tunes"):
        assert needle in text
    frames = rep.to_frames()
    assert set(frames) == {"overall", "by_horizon", "by_ticker", "refits"}
    assert frames["overall"].loc[0, "train_seconds"] == pytest.approx(15.5)
    assert len(frames["refits"]) == 2
    assert "no forecasts" in empty.to_text()


def test_directional_accuracy_scores_only_forecasts_that_call_a_direction() -> None:
    """A forecast equal to persistence calls no direction: it is left out of directional
    accuracy instead of counting as a miss; with none calling one, the figure is NaN."""
    base = [10.0, 10.0, 10.0, 10.0]
    frame = pd.DataFrame(
        {
            "yhat": [10.5, 9.5, 10.0, 10.0],  # up, down, flat, flat
            "actual": [11.0, 10.2, 9.0, 10.0],  # up (hit), up (miss), -, -
            "base_close": base,
            "yhat_lower": [9.0] * 4,
            "yhat_upper": [11.0] * 4,
            "covered": [1, 1, 1, 1],
        }
    )
    frame["error"] = frame["yhat"] - frame["actual"]
    frame["naive_error"] = frame["base_close"] - frame["actual"]
    m = metrics(frame)
    assert m["n_directional"] == 2
    assert m["directional_accuracy"] == pytest.approx(0.5)
    flat = metrics(frame.assign(yhat=base))
    assert flat["n_directional"] == 0
    assert math.isnan(flat["directional_accuracy"])


def test_proper_scores_match_the_hand_computed_case() -> None:
    """The interval (Winkler) score adds 2/alpha times a miss to the width, the pinball losses
    weigh misses by their quantile, all in percent of the as_of close."""
    frame = pd.DataFrame(
        {
            "yhat": [10.0, 20.0],
            "yhat_lower": [9.0, 19.0],
            "yhat_upper": [11.0, 21.0],
            "actual": [10.5, 22.0],  # inside; 1.0 above the upper bound
            "base_close": [10.0, 20.0],
            "covered": [1, 0],
        }
    )
    frame["error"] = frame["yhat"] - frame["actual"]
    frame["naive_error"] = frame["base_close"] - frame["actual"]
    m = metrics(frame)
    # width 2 (20% of 10; 10% of 20), the miss costs 2/0.2 * 1.0 = 10 (50% of 20)
    assert m["interval_score"] == pytest.approx((20.0 + (10.0 + 50.0)) / 2)
    assert m["mean_width_pct"] == pytest.approx((20.0 + 10.0) / 2)
    assert m["pinball_lower"] == pytest.approx((0.1 * 1.5 * 10 + 0.1 * 3.0 * 5) / 2)
    assert m["pinball_median"] == pytest.approx((0.5 * 0.5 * 10 + 0.5 * 2.0 * 5) / 2)
    assert m["pinball_upper"] == pytest.approx((0.1 * 0.5 * 10 + 0.9 * 1.0 * 5) / 2)
