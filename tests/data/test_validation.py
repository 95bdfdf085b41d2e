"""validate_bars: what is refused at the boundary, and why, before anything is stored."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from forecasting.data.sources.base import BAR_COLUMNS
from forecasting.data.validation import Checks, Stored, validate_bars

D = dt.date
TODAY = D(2024, 3, 1)


def bars(ticker: str = "600519.SH", days: int = 10, start: str = "2024-01-02") -> pd.DataFrame:
    """Weekday bars, close rising 1% a day from 100, consistent OHLC."""
    dates = [d.date() for d in pd.bdate_range(start, periods=days)]
    close = 100 * 1.01 ** np.arange(days)
    return pd.DataFrame(
        {
            "ticker": ticker,
            "trade_date": dates,
            "open": close * 0.995,
            "high": close * 1.01,
            "low": close * 0.99,
            "close": close,
            "volume": 1e5,
            "amount": 1e6,
            "adj_factor": np.nan,
        },
        columns=list(BAR_COLUMNS),
    )


def reasons(frame: pd.DataFrame, **kw: object) -> dict[dt.date | None, str]:
    ticker = str(frame["ticker"].iloc[0])
    _, rejected = validate_bars(frame, ticker, None, **kw)  # type: ignore[arg-type]
    return {r.trade_date: r.reason for r in rejected}


def test_clean_bars_pass_untouched() -> None:
    """A consistent batch inside the asked range, before today: every row is clean."""
    frame = bars()
    clean, rejected = validate_bars(
        frame, "600519.SH", None, Checks(ranges=[(D(2024, 1, 1), D(2024, 1, 31))], today=TODAY)
    )
    assert rejected == [] and len(clean) == len(frame)


def test_rows_after_today_or_outside_the_asked_range_are_rejected() -> None:
    """A row dated after today at the exchange, and one outside the requested range, each say so."""
    frame = bars(days=3)
    frame.loc[2, "trade_date"] = D(2030, 1, 4)
    frame.loc[1, "trade_date"] = D(2023, 12, 29)
    got = reasons(frame, checks=Checks(ranges=[(D(2024, 1, 1), D(2024, 1, 31))], today=TODAY))
    assert "2030-01-04 is after today (2024-03-01 at the exchange)" in got[D(2030, 1, 4)]
    assert "outside the dates asked for (2024-01-01..2024-01-31)" in got[D(2023, 12, 29)]
    assert set(got) == {D(2030, 1, 4), D(2023, 12, 29)}


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("close", np.inf, "close is inf, not a finite number"),
        ("high", -np.inf, "high is -inf, not a finite number"),
        ("open", -1.0, "open is -1, not a positive price"),
        ("volume", -5.0, "volume is -5, below 0"),
        ("amount", -1.0, "amount is -1, below 0"),
        ("adj_factor", 0.0, "adj_factor is 0, not a positive price"),
        ("close", 150.0, "close 150 is outside low..high"),
        ("open", 1.0, "open 1 is outside low..high"),
    ],
)
def test_values_must_be_finite_non_negative_and_consistent(
    column: str, value: float, reason: str
) -> None:
    """inf, a negative open or volume or amount, a close above the high, an open below the low."""
    frame = bars(days=3)
    frame.loc[1, column] = value
    got = reasons(frame)
    assert list(got) == [frame.loc[1, "trade_date"]]
    assert reason in got[frame.loc[1, "trade_date"]]


def test_inf_keeps_its_text_in_raw() -> None:
    """The raw JSON of a rejected row stays valid JSON: inf is kept as the text 'inf'."""
    frame = bars(days=3)
    frame.loc[1, "close"] = np.inf
    _, rejected = validate_bars(frame, "600519.SH")
    assert rejected[0].raw["close"] == "inf"


def test_a_move_beyond_the_board_limit_is_implausible_but_one_spike_costs_one_row() -> None:
    """A 1000x close on a main-board stock (10% limit) is refused; the next day, back at the
    old level, is fine: each row is compared with the last accepted close."""
    frame = bars(days=10)  # the first five bars are exempt (maybe the listing days)
    frame.loc[7, ["open", "high", "low", "close"]] = frame.loc[7, "close"] * 1000
    got = reasons(frame)
    (day,) = got
    assert day == frame.loc[7, "trade_date"]
    assert "beyond the 10% daily limit of 600519.SH" in got[day] and "implausible" in got[day]


def test_limits_differ_by_board() -> None:
    """+15% is implausible on the main board, fine on ChiNext (20%); +25% fine on the BSE."""
    for ticker, move, refused in [
        ("600519.SH", 1.15, True),
        ("300750.SZ", 1.15, False),
        ("300750.SZ", 1.25, True),
        ("830799.BJ", 1.25, False),
    ]:
        frame = bars(ticker, days=8)
        frame.loc[7:, ["open", "high", "low", "close"]] = frame.loc[6, "close"] * move
        assert bool(reasons(frame)) is refused, (ticker, move)


def test_limit_days_with_rounding_are_plausible() -> None:
    """A real limit-up close (the limit price rounded to the fen) is never refused."""
    frame = bars(days=8)
    frame.loc[7, ["open", "high", "low", "close"]] = round(frame.loc[6, "close"] * 1.1, 2)
    assert reasons(frame) == {}


def test_an_adj_factor_change_explains_a_split() -> None:
    """A 50% drop with adj_factor doubling is a 1:1 bonus issue, not a data error."""
    frame = bars(days=8)
    frame["adj_factor"] = 1.0
    frame.loc[7, ["open", "high", "low", "close"]] = frame.loc[6, "close"] / 2
    frame.loc[7, "adj_factor"] = 2.0
    assert reasons(frame) == {}
    frame["adj_factor"] = np.nan
    assert reasons(frame)


def test_first_days_after_listing_are_exempt() -> None:
    """A new listing may triple on day 1: no limit in its first five bars (listing unknown:
    the first bars of the history; with a listing date long before, no exemption)."""
    frame = bars(days=8)
    frame.loc[1:, ["open", "high", "low", "close"]] *= 3
    assert reasons(frame) == {}
    assert reasons(frame, checks=Checks(listed=D(2010, 1, 4)))


def test_indices_and_other_markets_use_max_move() -> None:
    """An index has no exchange limit: +60% passes the default bound (2x), +150% does not."""
    for move, refused in [(1.6, False), (2.5, True)]:
        frame = bars("000300.SH", days=8)
        frame.loc[7, ["open", "high", "low", "close"]] = frame.loc[6, "close"] * move
        assert bool(reasons(frame)) is refused, move
    frame = bars("000300.SH", days=8)
    frame.loc[7, ["open", "high", "low", "close"]] = frame.loc[6, "close"] * 1.6
    assert reasons(frame, checks=Checks(max_move=0.2))


def test_a_move_against_the_stored_history_is_checked() -> None:
    """The first incoming close is compared with the last stored one (23.52 -> 23520)."""
    frame = bars(days=1, start="2024-01-10")
    frame.loc[0, ["open", "high", "low", "close"]] = [23500.0, 23600.0, 23400.0, 23520.0]
    stored = pd.DataFrame(
        {"trade_date": [D(2024, 1, 8), D(2024, 1, 9)], "close": [23.4, 23.52], "adj_factor": np.nan}
    )
    got = reasons(frame, stored=Stored(stored, n_before=5))
    assert "moved +99900.0% from 23.52 on 2024-01-09" in got[D(2024, 1, 10)]


def test_a_long_suspension_resumes_without_the_board_limit() -> None:
    """After three months suspended (a restructuring), a +50% first day is plausible."""
    frame = bars(days=8)
    frame.loc[7, "trade_date"] = D(2024, 6, 3)
    frame.loc[7, ["open", "high", "low", "close"]] = frame.loc[6, "close"] * 1.5
    assert reasons(frame) == {}


def test_a_source_problem_is_the_reason_and_the_raw_text_is_kept() -> None:
    """Rows a source could not parse carry its problem and raw text into the rejection."""
    frame = bars(days=2)
    frame["problem"] = [None, "close 'abc' is not a number"]
    frame["raw_text"] = [None, "2024-01-03,abc"]
    frame.loc[1, "close"] = np.nan
    _, rejected = validate_bars(frame, "600519.SH")
    (r,) = rejected
    assert "close 'abc' is not a number" in r.reason and "missing (NaN)" not in r.reason
    assert r.raw["text"] == "2024-01-03,abc"
