"""The ingest: incremental, idempotent, validating, one transaction per ticker."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from forecasting.data.calendar import TradingCalendar
from forecasting.data.ingest import IngestReport, ingest, plan_ranges
from forecasting.data.schema import ingest_runs, prices, rejected_rows, securities, trading_calendar
from forecasting.data.sources.base import BAR_COLUMNS, Security, SourceError
from forecasting.data.validation import validate_bars

D = dt.date
END = D(2024, 2, 9)


def bars(
    ticker: str, days: int = 30, start: str = "2024-01-01", base: float = 10.0
) -> pd.DataFrame:
    """``days`` weekday bars from ``start``, closes rising from ``base``."""
    dates = [d.date() for d in pd.bdate_range(start, periods=days)]
    close = base + np.arange(days) * 0.25
    return pd.DataFrame(
        {
            "ticker": ticker,
            "trade_date": dates,
            "open": close - 0.1,
            "high": close + 0.5,
            "low": close - 0.5,
            "close": close,
            "volume": 1e5 + np.arange(days),
            "amount": np.nan,  # a column the source never fills must round-trip as NULL
            "adj_factor": np.nan,
        },
        columns=list(BAR_COLUMNS),
    )


class FrameSource:
    """A real PriceSource over in-memory frames; records every fetch and can fail on demand."""

    name = "frames"

    def __init__(
        self,
        frames: dict[str, pd.DataFrame],
        *,
        calendar: pd.DataFrame | None = None,
        failing: set[str] | None = None,
    ) -> None:
        self.frames = frames
        self.calendar = calendar
        self.failing = failing or set()
        self.calls: list[tuple[str, dt.date, dt.date]] = []

    def tickers(self) -> list[str]:
        return sorted(self.frames)

    def security(self, ticker: str) -> Security:
        return Security(ticker, name=f"name of {ticker}", kind="stock", exchange="SSE")

    def fetch_bars(self, ticker: str, start: dt.date, end: dt.date) -> pd.DataFrame:
        self.calls.append((ticker, start, end))
        if ticker in self.failing:
            raise SourceError(f"{ticker}: the server said no for {start} to {end}; try later")
        frame = self.frames[ticker]
        inside = (frame["trade_date"] >= start) & (frame["trade_date"] <= end)
        return frame.loc[inside].reset_index(drop=True)

    def trading_calendar(self, start: dt.date, end: dt.date) -> pd.DataFrame | None:
        return self.calendar


def snapshot(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(select(prices).order_by(prices.c.ticker, prices.c.trade_date))
        ]


def run_row(engine: Engine, report: IngestReport) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(select(ingest_runs).where(ingest_runs.c.run_id == report.run_id)).one()
    return dict(row._mapping)


def go(engine: Engine, source: FrameSource, **kwargs: Any) -> IngestReport:
    kwargs.setdefault("end", END)
    kwargs.setdefault("history_start", D(2024, 1, 1))
    kwargs.setdefault("progress", False)
    return ingest(engine, source, **kwargs)


def test_ingest_twice_changes_nothing(engine: Engine) -> None:
    """A second run inserts and updates nothing and leaves every byte of the table as it was,
    whether it runs incrementally or re-requests the whole range."""
    source = FrameSource({"A.SH": bars("A.SH"), "B.SZ": bars("B.SZ", 20, base=50.0)})
    first = go(engine, source)
    assert (first.status, first.inserted, first.updated, first.rejected) == ("success", 50, 0, 0)
    table = snapshot(engine)
    assert len(table) == 50
    second = go(engine, source)
    assert (second.inserted, second.updated, second.unchanged) == (0, 0, 0)
    again = go(engine, source, start=D(2024, 1, 1))
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 50)
    assert snapshot(engine) == table  # ingested_at included: unchanged rows are not rewritten
    row = run_row(engine, again)
    assert (row["status"], row["rows_unchanged"], row["rows_inserted"]) == ("success", 50, 0)
    assert json.loads(row["tickers"]) == ["A.SH", "B.SZ"]
    assert row["finished_at"] is not None and row["error"] is None


def test_stored_values_round_trip_exactly(engine: Engine) -> None:
    """What is read back is what the source sent: full float precision, NaN as NULL."""
    frame = bars("A.SH", 5)
    frame["close"] = [10.123456789012345, 1 / 3, 2 / 3, 1e-7 + 5, 123456.789]
    go(engine, FrameSource({"A.SH": frame}))
    with engine.connect() as conn:
        rows = conn.execute(
            select(prices.c.close, prices.c.amount).order_by(prices.c.trade_date)
        ).all()
    assert [r.close for r in rows] == frame["close"].tolist()
    assert all(r.amount is None for r in rows)


def test_a_corrected_value_updates_its_row(engine: Engine) -> None:
    """When the source corrects one close, a re-request updates exactly that row and says so."""
    frame = bars("A.SH")
    source = FrameSource({"A.SH": frame})
    go(engine, source)
    fixed = frame.copy()
    fixed.loc[3, "close"] = 99.5
    fixed.loc[3, "high"] = 100.0
    source.frames["A.SH"] = fixed
    report = go(engine, source, start=D(2024, 1, 1))
    assert (report.inserted, report.updated, report.unchanged) == (0, 1, 29)
    assert run_row(engine, report)["rows_updated"] == 1
    with engine.connect() as conn:
        close = conn.execute(
            select(prices.c.close).where(prices.c.trade_date == fixed.loc[3, "trade_date"])
        ).scalar_one()
    assert close == 99.5


def test_bad_rows_are_rejected_with_reasons_and_clean_rows_land(engine: Engine) -> None:
    """NaN, zero and negative closes, high below low, conflicting duplicates, a weekend and a
    database holiday go to rejected_rows with a sentence naming ticker and date; exact
    duplicates collapse to one stored row; the rest of the batch is stored."""
    frame = bars("A.SH", 20)  # 2024-01-01 .. 2024-01-26
    d = list(frame["trade_date"])
    frame.loc[1, "close"] = np.nan
    frame.loc[2, "close"] = 0.0
    frame.loc[3, "close"] = -1.0
    frame.loc[4, ["high", "low"]] = [9.0, 11.0]
    conflict = frame.loc[[5]].assign(close=123.0)
    exact = frame.loc[[6]]
    weekend = frame.loc[[7]].assign(trade_date=D(2024, 1, 13))  # a Saturday
    frame = pd.concat([frame, conflict, exact, weekend], ignore_index=True)
    holiday = d[8]  # a weekday the exchange's calendar says was closed
    calendar = pd.DataFrame({"cal_date": [holiday], "is_open": [0]})
    report = go(engine, FrameSource({"A.SH": frame}, calendar=calendar))

    assert report.status == "success"
    bad_dates = [d[1], d[2], d[3], d[4], d[5], d[5], D(2024, 1, 13), holiday]
    assert report.rejected == len(bad_dates)
    assert report.inserted == 20 - 6  # 20 rows minus 5 bad weekdays minus the holiday
    with engine.connect() as conn:
        rejected = conn.execute(select(rejected_rows).order_by(rejected_rows.c.id)).all()
        stored = set(conn.execute(select(prices.c.trade_date)).scalars())
        cal_rows = conn.execute(
            select(trading_calendar.c.exchange, trading_calendar.c.cal_date)
        ).all()
    assert sorted(r.trade_date for r in rejected) == sorted(bad_dates)
    assert stored == set(d) - set(bad_dates)
    assert cal_rows == [("XSHG", holiday)]
    by_date: dict[dt.date, list[str]] = {}
    for r in rejected:
        assert r.run_id == report.run_id
        assert r.reason.startswith(f"A.SH on {r.trade_date}: rejected because")
        assert json.loads(r.raw)["trade_date"] == r.trade_date.isoformat()
        by_date.setdefault(r.trade_date, []).append(r.reason)
    assert "close is missing (NaN)" in by_date[d[1]][0]
    assert json.loads(rejected[0].raw)["close"] is None
    assert "close is 0, not a positive price" in by_date[d[2]][0]
    assert "close is -1" in by_date[d[3]][0]
    assert "high 9 is below low 11" in by_date[d[4]][0]
    assert all("2 different rows for this date" in r for r in by_date[d[5]])
    assert "Saturday 2024-01-13 is a weekend" in by_date[D(2024, 1, 13)][0]
    assert f"marks {holiday} as closed" in by_date[holiday][0]


def test_incremental_run_fetches_only_new_days(engine: Engine) -> None:
    """A later ``end`` asks the source only for the days after the last stored one."""
    frame = bars("A.SH", 30)  # through 2024-02-09
    source = FrameSource({"A.SH": frame})
    go(engine, source, end=D(2024, 1, 19))
    source.calls.clear()
    report = go(engine, source, end=END)
    assert source.calls == [("A.SH", D(2024, 1, 20), END)]
    assert (report.inserted, report.unchanged) == (15, 0)
    source.calls.clear()
    go(engine, source, end=D(2024, 2, 11))  # Saturday and Sunday only: nothing to ask for
    assert source.calls == []


def test_earlier_start_backfills_only_the_missing_range(engine: Engine) -> None:
    """For a stored ticker an earlier ``start`` fetches the days before its history (and any new
    days), leaving the stored rows untouched; a new ticker gets all of start..end."""
    source = FrameSource({"A.SH": bars("A.SH", 30), "B.SZ": bars("B.SZ", 30)})
    go(engine, source, tickers=["A.SH"], history_start=D(2024, 1, 15))
    before = snapshot(engine)
    source.calls.clear()
    report = go(engine, source, start=D(2024, 1, 1))
    assert source.calls == [("A.SH", D(2024, 1, 1), D(2024, 1, 14)), ("B.SZ", D(2024, 1, 1), END)]
    assert report.tickers["A.SH"].inserted == 10
    assert report.tickers["B.SZ"].inserted == 30
    assert set(before) <= set(snapshot(engine))


def test_one_failing_ticker_does_not_lose_the_others(engine: Engine) -> None:
    """A SourceError is recorded for its ticker; the rest land and the run is partial. When
    every ticker fails the run is failed."""
    source = FrameSource(
        {"A.SH": bars("A.SH"), "B.SZ": bars("B.SZ"), "C.SH": bars("C.SH")}, failing={"B.SZ"}
    )
    report = go(engine, source)
    assert report.status == "partial"
    assert (
        report.tickers["B.SZ"].error
        == f"B.SZ: the server said no for 2024-01-01 to {END}; try later"
    )
    assert report.inserted == 60
    assert "B.SZ: the server said no" in report.summary()
    row = run_row(engine, report)
    assert row["status"] == "partial"
    assert "B.SZ: the server said no" in row["error"]
    with engine.connect() as conn:
        landed = set(conn.execute(select(prices.c.ticker).distinct()).scalars())
        secs = set(conn.execute(select(securities.c.ticker)).scalars())
    assert landed == secs == {"A.SH", "C.SH"}

    source.failing = {"A.SH", "B.SZ", "C.SH"}
    failed = go(engine, source, start=D(2024, 1, 1))
    assert failed.status == "failed"
    assert run_row(engine, failed)["status"] == "failed"


def test_securities_row_is_written_with_the_batch(engine: Engine) -> None:
    """The ticker's reference data lands in securities alongside its prices."""
    go(engine, FrameSource({"A.SH": bars("A.SH", 3)}))
    with engine.connect() as conn:
        c = securities.c
        row = conn.execute(select(c.ticker, c.name, c.kind, c.exchange)).one()
    assert tuple(row) == ("A.SH", "name of A.SH", "stock", "SSE")


def test_without_a_progress_bar_each_ticker_is_logged(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """progress=False logs one line per ticker with its counts."""
    with caplog.at_level(logging.INFO, logger="forecasting.data.ingest"):
        go(engine, FrameSource({"A.SH": bars("A.SH", 3)}))
    assert any(
        "A.SH: 2024-01-01..2024-02-09: fetched 3, inserted 3" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize(
    ("stored", "start", "expected"),
    [
        (None, None, [(D(2020, 1, 1), D(2024, 1, 31))]),
        (None, D(2023, 6, 1), [(D(2023, 6, 1), D(2024, 1, 31))]),
        ((D(2023, 1, 3), D(2024, 1, 10)), None, [(D(2024, 1, 11), D(2024, 1, 31))]),
        ((D(2023, 1, 3), D(2024, 1, 31)), None, []),
        ((D(2023, 1, 3), D(2024, 1, 10)), D(2023, 6, 1), [(D(2023, 6, 1), D(2024, 1, 31))]),
        (
            (D(2023, 1, 3), D(2024, 1, 10)),
            D(2022, 6, 1),
            [(D(2022, 6, 1), D(2023, 1, 2)), (D(2024, 1, 11), D(2024, 1, 31))],
        ),
    ],
)
def test_plan_ranges(
    stored: tuple[dt.date, dt.date] | None, start: dt.date | None, expected: list
) -> None:
    """What to ask the source for, given what is stored and whether start was explicit."""
    assert (
        plan_ranges(stored, start=start, end=D(2024, 1, 31), history_start=D(2020, 1, 1))
        == expected
    )


def test_validate_bars_leaves_guessed_holidays_alone() -> None:
    """A weekday that only the XSHG fallback calls closed is not grounds to reject a real bar."""
    frame = bars("A.SH", 3, start="2026-09-30")  # 09-30, 10-01 (Golden Week), 10-02
    clean, rejections = validate_bars(frame, "A.SH", TradingCalendar())
    assert len(clean) == 3 and rejections == []


def test_ingest_real_shared_csv_files(engine: Engine, shared_data: Any) -> None:
    """Three real tushare CSVs (newest first, leading index column) ingest cleanly through the
    file source, and re-requesting a stored range finds every row unchanged."""
    from forecasting.data.sources.files import FileSource

    panel = shared_data / "ashare_qfq_panel"
    wanted = ["000063.sz.daily.csv", "000333.sz.daily.csv", "000300.sh.daily.csv"]
    files = [panel / f for f in wanted if (panel / f).exists()]
    assert len(files) == 3, f"expected {wanted} in {panel}"
    total = 0
    for path in files:
        source = FileSource(path)
        (ticker,) = source.tickers()
        expected = len(source.fetch_bars(ticker, D(2018, 1, 1), D(2019, 1, 7)))
        report = ingest(engine, source, start=D(2018, 1, 1), end=D(2019, 1, 7), progress=False)
        assert (report.status, report.rejected) == ("success", 0), report.summary()
        assert report.inserted == expected > 200
        total += expected
        recheck = len(source.fetch_bars(ticker, D(2018, 6, 1), D(2019, 1, 7)))
        again = ingest(engine, source, start=D(2018, 6, 1), end=D(2019, 1, 7), progress=False)
        assert (again.inserted, again.updated, again.unchanged) == (0, 0, recheck)
    with engine.connect() as conn:
        assert len(conn.execute(select(prices.c.ticker)).all()) == total
        kinds = dict(conn.execute(select(securities.c.ticker, securities.c.kind)).all())
    if "000300.SH" in kinds:
        assert kinds["000300.SH"] == "index"
