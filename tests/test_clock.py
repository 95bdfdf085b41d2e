"""One clock: "today" is the date at the exchange, read from an aware datetime."""

from __future__ import annotations

import datetime as dt

import pytest

from forecasting.clock import parse_date, real_clock, trading_today
from forecasting.errors import InputError


@pytest.mark.parametrize(
    ("now", "today"),
    [
        # 02:30 on Saturday in Shanghai is still Friday evening in UTC.
        (dt.datetime(2026, 12, 4, 18, 30, tzinfo=dt.UTC), dt.date(2026, 12, 5)),
        (dt.datetime(2026, 12, 4, 15, 59, tzinfo=dt.UTC), dt.date(2026, 12, 4)),
        (dt.datetime(2026, 12, 4, 16, 0, tzinfo=dt.UTC), dt.date(2026, 12, 5)),
        (
            dt.datetime(2026, 12, 5, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=8))),
            dt.date(2026, 12, 5),
        ),
    ],
)
def test_trading_today_is_the_date_in_shanghai(now: dt.datetime, today: dt.date) -> None:
    """The day turns at midnight in Shanghai, whatever zone the clock reports in."""
    assert trading_today(now) == today


def test_trading_today_in_another_zone() -> None:
    assert trading_today(dt.datetime(2026, 12, 4, 18, 30, tzinfo=dt.UTC), tz="UTC") == dt.date(
        2026, 12, 4
    )


def test_a_naive_datetime_is_refused() -> None:
    """A datetime without a zone would silently take the machine's date; it is an error."""
    with pytest.raises(ValueError, match="no time zone"):
        trading_today(dt.datetime(2026, 12, 4, 18, 30))


def test_the_real_clock_is_aware() -> None:
    assert real_clock().utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize("text", ["2026-12-04", "20261204", " 2026-12-04 "])
def test_dates_as_people_write_them(text: str) -> None:
    assert parse_date(text) == dt.date(2026, 12, 4)


@pytest.mark.parametrize("text", ["2026/12/04", "yesterday", "2026-13-01", ""])
def test_anything_else_says_how_to_write_a_date(text: str) -> None:
    with pytest.raises(InputError, match="write it as YYYY-MM-DD"):
        parse_date(text)
