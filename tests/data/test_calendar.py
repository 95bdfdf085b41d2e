"""The trading calendar: database rows first, then XSHG sessions, then weekdays, flagged."""

from __future__ import annotations

import datetime as dt
import logging

import pandas as pd
import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from forecasting.data.calendar import CalendarError, TradingCalendar, calendar_exchange
from forecasting.data.schema import trading_calendar
from forecasting.data.trade_cal import load_trade_cal, normalize_trade_cal

D = dt.date


@pytest.fixture(scope="module")
def xshg() -> TradingCalendar:
    """No database rows: XSHG sessions through 2026-12-31, weekdays after."""
    return TradingCalendar()


@pytest.mark.parametrize(
    ("day", "open_"),
    [
        (D(2026, 9, 30), True),  # Wednesday before Golden Week
        *[(D(2026, 10, d), False) for d in range(1, 8)],  # National Day holiday
        (D(2026, 10, 8), True),
        (D(2026, 10, 10), False),  # a Saturday: the exchange never trades weekends
        (D(2026, 12, 31), True),  # the last XSHG session exchange_calendars knows
        (D(2027, 1, 1), True),  # past it: a Friday, so "open" by the weekday rule
        (D(2027, 1, 2), False),
    ],
)
def test_is_trading_day(xshg: TradingCalendar, day: dt.date, open_: bool) -> None:
    """Weekends and XSHG holidays are closed; past the XSHG bound weekdays are open."""
    assert xshg.is_trading_day(day) is open_


@pytest.mark.parametrize(
    ("day", "after"),
    [
        (D(2026, 9, 30), D(2026, 10, 8)),  # skips the whole Golden Week
        (D(2026, 10, 9), D(2026, 10, 12)),  # Friday -> Monday
        (D(2026, 12, 30), D(2026, 12, 31)),
        (D(2026, 12, 31), D(2027, 1, 1)),  # across the XSHG bound: a weekday guess
        (D(2027, 1, 1), D(2027, 1, 4)),
    ],
)
def test_next_trading_day(xshg: TradingCalendar, day: dt.date, after: dt.date) -> None:
    """The next trading day is strictly after the given day."""
    assert xshg.next_trading_day(day) == after


@pytest.mark.parametrize(
    ("day", "before"),
    [
        (D(2026, 10, 8), D(2026, 9, 30)),
        (D(2026, 10, 12), D(2026, 10, 9)),
        (D(2027, 1, 4), D(2027, 1, 1)),
    ],
)
def test_previous_trading_day(xshg: TradingCalendar, day: dt.date, before: dt.date) -> None:
    """The previous trading day is strictly before the given day, holidays skipped."""
    assert xshg.previous_trading_day(day) == before


@pytest.mark.parametrize(
    ("day", "n", "expected"),
    [
        (D(2026, 9, 29), 1, D(2026, 9, 30)),
        (D(2026, 9, 29), 2, D(2026, 10, 8)),
        (D(2026, 9, 29), 5, D(2026, 10, 13)),
        (D(2026, 12, 30), 3, D(2027, 1, 4)),
    ],
)
def test_nth_trading_day_after(
    xshg: TradingCalendar, day: dt.date, n: int, expected: dt.date
) -> None:
    """n=1 is the next trading day; each later n skips closed days again."""
    assert xshg.nth_trading_day_after(day, n) == expected


def test_nth_trading_day_needs_a_positive_n(xshg: TradingCalendar) -> None:
    """n=0 is not a trading day after anything: it is refused with the date in the message."""
    with pytest.raises(CalendarError, match="2026-01-05"):
        xshg.nth_trading_day_after(D(2026, 1, 5), 0)


def test_trading_days_skip_golden_week(xshg: TradingCalendar) -> None:
    """The range is inclusive and lists only sessions."""
    assert xshg.trading_days(D(2026, 9, 28), D(2026, 10, 12)) == [
        D(2026, 9, 28),
        D(2026, 9, 29),
        D(2026, 9, 30),
        D(2026, 10, 8),
        D(2026, 10, 9),
        D(2026, 10, 12),
    ]


@pytest.mark.parametrize(
    ("day", "source"),
    [
        (D(2026, 6, 1), "xshg"),
        (D(2026, 12, 31), "xshg"),
        (D(2027, 1, 1), "weekdays"),
        (D(1985, 1, 2), "weekdays"),
    ],
)
def test_source_for_without_database_rows(xshg: TradingCalendar, day: dt.date, source: str) -> None:
    """XSHG answers inside its bounds; weekdays before 1991 and after its last session."""
    assert xshg.source_for(day) == source


def test_database_rows_take_precedence() -> None:
    """A database row overrides XSHG (and the weekday rule), open or closed."""
    cal = TradingCalendar.from_rows(
        {D(2026, 10, 8): False, D(2027, 1, 1): False, D(2027, 1, 4): True}
    )
    assert cal.source_for(D(2026, 10, 8)) == "database"
    assert not cal.is_trading_day(D(2026, 10, 8))
    assert cal.next_trading_day(D(2026, 9, 30)) == D(2026, 10, 9)
    assert cal.next_trading_day(D(2026, 12, 31)) == D(2027, 1, 4)
    assert cal.source_for(D(2026, 10, 9)) == "xshg"


def test_target_dates_carry_the_weakest_source() -> None:
    """Every date walked counts: a range decided by database rows says database; one that
    crosses into guessed weekdays says weekdays."""
    jan = {D(2027, 1, d): D(2027, 1, d).weekday() < 5 and d != 1 for d in range(1, 32)}
    cal = TradingCalendar.from_rows(jan)
    assert cal.next_trading_days(D(2026, 12, 30), 1).source == "xshg"
    decided = cal.next_trading_days(D(2026, 12, 31), 3)
    assert decided.dates == [D(2027, 1, 4), D(2027, 1, 5), D(2027, 1, 6)]
    assert decided.source == "database"
    bare = TradingCalendar()
    guessed = bare.next_trading_days(D(2026, 12, 30), 2)
    assert guessed.dates == [D(2026, 12, 31), D(2027, 1, 1)]
    assert guessed.source == "weekdays"
    assert bare.trading_days_with_source(D(2026, 12, 1), D(2026, 12, 31)).source == "xshg"


def test_weekday_fallback_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    """The first weekday guess logs a warning; later ones on the same calendar stay quiet."""
    cal = TradingCalendar()
    with caplog.at_level(logging.WARNING, logger="forecasting.data.calendar"):
        cal.trading_days(D(2027, 1, 1), D(2027, 3, 1))
        cal.next_trading_day(D(2027, 5, 1))
    warnings = [r for r in caplog.records if "Monday-Friday" in r.getMessage()]
    assert len(warnings) == 1
    assert "2027-01-01" in warnings[0].getMessage()


def test_without_xshg_everything_is_weekdays() -> None:
    """use_xshg=False skips the library: holidays it knows are treated as weekdays."""
    cal = TradingCalendar(use_xshg=False)
    assert cal.source_for(D(2026, 10, 1)) == "weekdays"
    assert cal.is_trading_day(D(2026, 10, 1))


def test_known_closed_is_only_weekends_and_database_holidays() -> None:
    """Only certain closures count: a weekend, or a database row saying closed."""
    cal = TradingCalendar.from_rows({D(2027, 2, 8): False, D(2027, 2, 9): True})
    days = [D(2027, 2, 6), D(2027, 2, 8), D(2027, 2, 9), D(2026, 10, 1)]
    assert cal.known_closed_mask(days).tolist() == [True, True, False, False]
    assert [cal.is_known_closed(d) for d in days] == [True, True, False, False]
    assert not cal.may_trade_between(D(2027, 2, 6), D(2027, 2, 8))
    assert cal.may_trade_between(D(2027, 2, 6), D(2027, 2, 9))


def test_all_closed_database_rows_fail_loudly() -> None:
    """A calendar with a year of closed days is broken; the walk stops and says so."""
    rows = {D(2030, 1, 1) + dt.timedelta(days=i): False for i in range(400)}
    cal = TradingCalendar.from_rows(rows)
    with pytest.raises(CalendarError, match="re-ingest the calendar"):
        cal.next_trading_day(D(2029, 12, 31))


def test_coverage_lists_each_source_range() -> None:
    """Database runs cut holes in the fallback ranges; the list is ordered and gap-free."""
    cal = TradingCalendar.from_rows(
        {D(2026, 10, 1) + dt.timedelta(days=i): i > 6 for i in range(10)}
    )
    cov = cal.coverage()
    assert [(r.source, r.start, r.end) for r in cov] == [
        ("weekdays", None, D(1990, 12, 31)),
        ("xshg", D(1991, 1, 1), D(2026, 9, 30)),
        ("database", D(2026, 10, 1), D(2026, 10, 10)),
        ("xshg", D(2026, 10, 11), D(2026, 12, 31)),
        ("weekdays", D(2027, 1, 1), None),
    ]
    assert cov[2].open_days == 3
    assert "2026-10-01 to 2026-10-10: database (3 trading days)" in str(cov)


@pytest.mark.parametrize(
    ("name", "key"),
    [("SSE", "XSHG"), ("szse", "XSHG"), (None, "XSHG"), ("XSHG", "XSHG"), ("XHKG", "XHKG")],
)
def test_calendar_exchange_key(name: str | None, key: str) -> None:
    """All A-share venues share one stored calendar; other exchanges keep their own name."""
    assert calendar_exchange(name) == key


def test_normalize_trade_cal_accepts_tushare_strings() -> None:
    """YYYYMMDD strings and "0"/"1" flags, newest first with a repeat, become one sorted row
    per date."""
    frame = pd.DataFrame(
        {
            "cal_date": ["20270105", "20270104", "20270101", "20270104"],
            "is_open": ["1", "1", "0", "1"],
        }
    )
    out = normalize_trade_cal(frame)
    assert out["cal_date"].tolist() == [D(2027, 1, 1), D(2027, 1, 4), D(2027, 1, 5)]
    assert out["is_open"].tolist() == [False, True, True]


def test_load_trade_cal_upserts_and_load_reads_back(engine: Engine) -> None:
    """Rows land under the XSHG key whatever the source called the exchange; a rerun writes
    nothing, a changed day is updated, and the loaded calendar answers from the database."""
    frame = pd.DataFrame(
        {"cal_date": [D(2027, 1, 1), D(2027, 1, 4), D(2027, 1, 5)], "is_open": [0, 1, 1]}
    )
    assert load_trade_cal(engine, frame, "SSE") == (3, 0)
    assert load_trade_cal(engine, frame, "SSE") == (0, 0)
    frame.loc[2, "is_open"] = 0  # tushare later declares an extra holiday
    assert load_trade_cal(engine, frame, "XSHG") == (0, 1)
    with engine.connect() as conn:
        keys = set(conn.execute(select(trading_calendar.c.exchange)).scalars())
        cal = TradingCalendar.load(conn, exchange="SSE")
    assert keys == {"XSHG"}
    assert cal.source_for(D(2027, 1, 5)) == "database"
    assert not cal.is_trading_day(D(2027, 1, 5))
    assert cal.next_trading_day(D(2026, 12, 31)) == D(2027, 1, 4)
    windowed = TradingCalendar.load(engine, start=D(2027, 1, 4), end=D(2027, 1, 4))
    assert windowed.source_for(D(2027, 1, 4)) == "database"
    assert windowed.source_for(D(2027, 1, 5)) == "weekdays"
