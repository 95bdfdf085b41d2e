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
        self.extra: dict[str, pd.DataFrame] = {}

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
        # ``extra`` rows come whatever the dates asked: a vendor sending what it was not asked.
        extra = self.extra.get(ticker)
        rows = frame.loc[inside]
        return (
            pd.concat([rows, extra], ignore_index=True)
            if extra is not None
            else rows.reset_index(drop=True)
        )

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
    frame["close"] = [10.123456789012345, 10 + 1 / 3, 10 + 2 / 3, 1e-7 + 10, 11.23456789]
    frame["open"], frame["high"], frame["low"] = frame["close"], frame["close"] + 1, 1 / 3
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


# -- integrity: nothing wrong gets in, nothing right gets lost, every change on record ---------


def rejected(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(rejected_rows).order_by(rejected_rows.c.id)).all())


def closes(engine: Engine, ticker: str = "A.SH") -> dict[dt.date, float]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(prices.c.trade_date, prices.c.close).where(prices.c.ticker == ticker)
        ).all()
    return {d: c for d, c in rows}


def test_a_future_row_is_rejected_and_does_not_block_later_days(engine: Engine) -> None:
    """A row dated 2030 that the source sends unasked is rejected (outside the range asked,
    after today); the ticker's last date stays real, so the next ingest fetches new days."""
    frame = bars("A.SH", 30)
    source = FrameSource({"A.SH": frame})
    source.extra["A.SH"] = bars("A.SH", 1, start="2030-01-07")
    first = go(engine, source, end=D(2024, 1, 19), today=D(2024, 1, 19))
    assert (first.inserted, first.rejected) == (15, 1)
    (row,) = rejected(engine)
    assert row.trade_date == D(2030, 1, 7)
    assert "after today (2024-01-19 at the exchange)" in row.reason
    assert "outside the dates asked for" in row.reason
    assert max(closes(engine)) == D(2024, 1, 19)
    second = go(engine, source, end=END, today=END)
    assert second.inserted == 15 and max(closes(engine)) == END
    assert run_row(engine, second)["rows_rejected"] == 1


def test_inf_never_lands_nor_replaces_a_good_close(engine: Engine) -> None:
    """An inf close is rejected as not finite, as new data and over a stored close alike."""
    frame = bars("A.SH", 10)
    source = FrameSource({"A.SH": frame})
    go(engine, source)
    good = closes(engine)
    bad = frame.copy()
    bad.loc[4, "close"] = np.inf
    source.frames["A.SH"] = bad
    report = go(engine, source, start=D(2024, 1, 1))
    assert (report.updated, report.rejected) == (0, 1)
    assert closes(engine) == good
    assert "close is inf, not a finite number" in rejected(engine)[0].reason
    assert json.loads(rejected(engine)[0].raw)["close"] == "inf"


def test_a_blank_cell_never_replaces_a_stored_value(engine: Engine) -> None:
    """Blank open/high/low in a re-ingest keep the stored values; nothing counts as changed."""
    frame = bars("A.SH", 10)
    source = FrameSource({"A.SH": frame})
    go(engine, source)
    before = snapshot(engine)
    blank = frame.copy()
    blank[["open", "high", "low", "volume"]] = np.nan
    source.frames["A.SH"] = blank
    report = go(engine, source, start=D(2024, 1, 1))
    assert (report.updated, report.unchanged, report.rejected) == (0, 10, 0)
    assert snapshot(engine) == before


def test_an_implausible_jump_over_stored_data_is_held_back(engine: Engine) -> None:
    """23.52 corrected to 23520 (a unit error) is rejected as implausible against the stored
    neighbours; the stored close stays, and no revision is recorded."""
    frame = bars("600519.SH", 20, base=23.52)
    source = FrameSource({"600519.SH": frame})
    go(engine, source)
    wrong = frame.copy()
    wrong.loc[12, ["open", "high", "low", "close"]] *= 1000
    source.frames["600519.SH"] = wrong
    report = go(engine, source, start=D(2024, 1, 1))
    assert (report.updated, report.rejected) == (0, 1)
    assert closes(engine, "600519.SH")[frame.loc[12, "trade_date"]] == frame.loc[12, "close"]
    assert "implausible" in rejected(engine)[0].reason


def test_the_same_bad_row_is_recorded_once(engine: Engine) -> None:
    """Rerunning the same bad input adds no second rejected_rows row; the row names the last
    run that refused it, and each run still counts it."""
    frame = bars("A.SH", 10)
    frame.loc[3, "close"] = -1.0
    source = FrameSource({"A.SH": frame})
    first = go(engine, source)
    second = go(engine, source, start=D(2024, 1, 1))
    assert first.rejected == second.rejected == 1
    assert second.tickers["A.SH"].rejected_before == 1
    (row,) = rejected(engine)
    assert (row.run_id, row.last_run_id) == (first.run_id, second.run_id)
    assert run_row(engine, second)["rows_rejected"] == 1


def test_a_ticker_the_source_has_nothing_for_fails(engine: Engine) -> None:
    """An empty reply for a ticker with no history is a failure naming it, never a success
    with 0 rows; the run is partial and the others land."""
    source = FrameSource({"A.SH": bars("A.SH"), "ZZZ.SH": bars("ZZZ.SH", 0)})
    report = go(engine, source)
    assert report.status == "partial"
    assert "returned no bars for ZZZ.SH" in (report.tickers["ZZZ.SH"].error or "")
    assert report.summary().splitlines()[-1].startswith("ingest partial: 1 of 2 failed (ZZZ.SH)")
    assert run_row(engine, report)["status"] == "partial"


def test_no_tickers_is_an_input_error(engine: Engine) -> None:
    """An ingest with nothing to ingest says what to pass instead of 'success, 0 tickers'."""
    from forecasting.errors import InputError

    with pytest.raises(InputError, match="no tickers to ingest.*--tickers"):
        go(engine, FrameSource({}))


def test_a_stale_running_row_is_marked_abandoned(engine: Engine) -> None:
    """A 'running' ingest whose heartbeat is older than abandon_after (its process died) is
    closed as abandoned by the next ingest; a fresh one is left alone."""
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        for run_id, beat in (("old", now - dt.timedelta(hours=2)), ("live", now)):
            conn.execute(
                ingest_runs.insert().values(
                    run_id=run_id,
                    started_at=beat,
                    heartbeat_at=beat,
                    source="frames",
                    tickers="[]",
                    status="running",
                    rows_inserted=7,
                )
            )
    report = go(engine, FrameSource({"A.SH": bars("A.SH", 3)}))
    assert report.abandoned == ["old"]
    with engine.connect() as conn:
        rows = dict(conn.execute(select(ingest_runs.c.run_id, ingest_runs.c.status)).all())
        old = conn.execute(select(ingest_runs).where(ingest_runs.c.run_id == "old")).one()
    assert rows["old"] == "abandoned" and rows["live"] == "running"
    assert old.rows_inserted == 7 and "no heartbeat since" in old.error
    assert "closed abandoned run old" in report.summary()


def test_each_ticker_commit_updates_the_runs_counts(engine: Engine) -> None:
    """The run row carries the counts so far with every ticker's commit (and a heartbeat), so
    a process killed outright leaves true counts behind."""
    seen: list[tuple[int, Any]] = []

    class Watching(FrameSource):
        def fetch_bars(self, ticker: str, start: dt.date, end: dt.date) -> pd.DataFrame:
            with engine.connect() as conn:
                row = conn.execute(
                    select(ingest_runs.c.rows_inserted, ingest_runs.c.heartbeat_at).where(
                        ingest_runs.c.status == "running"
                    )
                ).one()
            seen.append((row.rows_inserted, row.heartbeat_at))
            return super().fetch_bars(ticker, start, end)

    go(engine, Watching({"A.SH": bars("A.SH", 5), "B.SH": bars("B.SH", 7)}))
    assert [n for n, _ in seen] == [0, 5]
    assert all(beat is not None for _, beat in seen)


def test_a_history_starting_long_after_the_listing_is_reported(engine: Engine) -> None:
    """With the listing date known (reference data in securities), stored history that starts
    months after it and after the start asked for is reported as a gap; a ticker whose history
    starts at its listing is not."""
    with engine.begin() as conn:
        for ticker, listed in (("A.SH", D(2023, 6, 1)), ("B.SH", D(2024, 1, 1))):
            conn.execute(securities.insert().values(ticker=ticker, kind="stock", list_date=listed))
    source = FrameSource({"A.SH": bars("A.SH"), "B.SH": bars("B.SH")})
    report = go(engine, source, history_start=D(2023, 1, 1))
    assert report.status == "success"
    assert report.tickers["A.SH"].note == (
        "gap: stored history starts 2024-01-01, 214 days after 2023-06-01 (listed 2023-06-01); "
        "check the source for the missing days"
    )
    assert report.tickers["B.SH"].note is None
    assert "A.SH: 2023-01-01..2024-02-09" in report.summary()
