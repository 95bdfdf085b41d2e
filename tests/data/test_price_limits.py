"""A-share price limits by board: one table of rules, read by the ingest's plausibility check."""

from __future__ import annotations

import datetime as dt

import pytest

from forecasting.data.price_limits import board_of, daily_limit, is_st, limit_prices

D = dt.date(2024, 3, 1)


@pytest.mark.parametrize(
    ("ticker", "board"),
    [
        ("600519.SH", "main"),
        ("601318.sh", "main"),
        ("688981.SH", "star"),
        ("000001.SZ", "main"),
        ("002415.SZ", "main"),
        ("300750.SZ", "chinext"),
        ("301001.SZ", "chinext"),
        ("430047.BJ", "bse"),
        ("830799.BJ", "bse"),
        ("920002.BJ", "bse"),
        ("000300.SH", "other"),  # CSI 300, an index
        ("399006.SZ", "other"),  # ChiNext index
        ("AAPL", "other"),
    ],
)
def test_board_of_a_code(ticker: str, board: str) -> None:
    """The board follows from the code's prefix and exchange suffix; indices are 'other'."""
    assert board_of(ticker) == board


@pytest.mark.parametrize(
    ("ticker", "on", "st", "day", "limit"),
    [
        ("600519.SH", D, False, None, 0.10),
        ("600519.SH", D, True, None, 0.05),
        ("688981.SH", D, True, None, 0.20),  # ST on STAR keeps 20%
        ("300750.SZ", dt.date(2020, 8, 21), False, None, 0.10),
        ("300750.SZ", dt.date(2020, 8, 24), False, None, 0.20),
        ("830799.BJ", D, False, None, 0.30),
        ("600519.SH", D, False, 5, None),  # fifth trading day after listing: no limit
        ("600519.SH", D, False, 6, 0.10),
        ("000300.SH", D, False, None, None),
        ("600601.SH", dt.date(1996, 12, 13), False, None, None),  # before limits existed
    ],
)
def test_daily_limit(
    ticker: str, on: dt.date, st: bool, day: int | None, limit: float | None
) -> None:
    """Main 10%, ST 5% (main boards only), ChiNext 20% from 2020-08-24, STAR 20%, BSE 30%, no
    limit in the first five trading days, before 1996-12-16 and for indices."""
    assert daily_limit(ticker, on, st=st, trading_day_since_listing=day) == limit


@pytest.mark.parametrize(
    ("name", "st"),
    [
        ("ST康美", True),
        ("*ST康美", True),
        ("S*ST前锋", True),
        ("SST华新", True),
        ("贵州茅台", False),
        (None, False),
        ("Stellar", False),
    ],
)
def test_is_st(name: str | None, st: bool) -> None:
    """ST, *ST, S*ST and SST names are special treatment; other names are not."""
    assert is_st(name) is st


def test_limit_prices_round_to_the_fen() -> None:
    """The limit prices are the previous close times 1 -/+ limit, rounded half up to 0.01."""
    assert limit_prices(10.05, 0.10) == (9.05, 11.06)
