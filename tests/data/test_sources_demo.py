"""DemoSource: a deterministic synthetic market on the XSHG calendar."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import exchange_calendars as xc
import numpy as np
import pandas as pd
import pytest

from forecasting.data.sources import make_source
from forecasting.data.sources.base import BAR_COLUMNS, PriceSource, SourceError
from forecasting.data.sources.demo import DEMO_END, DEMO_INDEX, DemoSource

EVERYTHING = (dt.date(2000, 1, 1), dt.date(2100, 1, 1))


@pytest.fixture(scope="module")
def demo() -> DemoSource:
    return DemoSource()


def test_it_is_a_price_source_with_tushare_style_tickers(demo: DemoSource) -> None:
    """Several stocks on both exchanges plus the CSI 300 index; no calendar of its own."""
    assert isinstance(demo, PriceSource)
    tickers = demo.tickers()
    assert len(tickers) == 9 and tickers[-1] == DEMO_INDEX
    assert any(t.endswith(".SH") for t in tickers[:-1]) and any(t.endswith(".SZ") for t in tickers)
    assert demo.security(DEMO_INDEX).kind == "index"
    assert (
        demo.security("600000.SH").kind == "stock" and demo.security("000001.SZ").exchange == "SZSE"
    )
    assert demo.trading_calendar(dt.date(2020, 1, 1), dt.date(2020, 12, 31)) is None


def test_same_seed_same_market_other_seed_other_market() -> None:
    """A fresh instance with the same seed gives identical bars; another seed does not."""
    a = DemoSource(seed=3).fetch_bars("600519.SH", *EVERYTHING)
    b = DemoSource(seed=3).fetch_bars("600519.SH", *EVERYTHING)
    c = DemoSource(seed=4).fetch_bars("600519.SH", *EVERYTHING)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["close"], c["close"])


def test_a_slice_equals_the_same_dates_of_the_full_history(demo: DemoSource) -> None:
    """The bar for a date does not depend on the range requested (incremental ingest is safe)."""
    full = demo.fetch_bars("600000.SH", *EVERYTHING).set_index("trade_date")
    lo, hi = dt.date(2019, 6, 3), dt.date(2019, 6, 28)
    part = demo.fetch_bars("600000.SH", lo, hi).set_index("trade_date")
    assert part.index.min() >= lo and part.index.max() <= hi and len(part) == 19
    pd.testing.assert_frame_equal(part, full.loc[part.index])


def test_adding_tickers_leaves_existing_ones_unchanged() -> None:
    """A larger universe is the smaller one plus new tickers, bar for bar."""
    small, large = DemoSource(n_tickers=2), DemoSource(n_tickers=14)
    assert large.tickers()[:2] == small.tickers()[:2] and len(large.tickers()) == 15
    for ticker in small.tickers():
        pd.testing.assert_frame_equal(
            small.fetch_bars(ticker, *EVERYTHING), large.fetch_bars(ticker, *EVERYTHING)
        )


def test_bars_are_normalized_and_ohlc_consistent(demo: DemoSource) -> None:
    """Exactly BAR_COLUMNS, ascending dates, low <= open, close <= high, positive volume."""
    for ticker in demo.tickers():
        bars = demo.fetch_bars(ticker, *EVERYTHING)
        assert list(bars.columns) == list(BAR_COLUMNS)
        assert all(type(d) is dt.date for d in bars["trade_date"].head())
        assert bars["trade_date"].is_monotonic_increasing and bars["trade_date"].is_unique
        assert bars["trade_date"].iloc[0] == dt.date(2016, 1, 4)
        assert bars["trade_date"].iloc[-1] == DEMO_END
        assert (bars["low"] > 0).all()
        assert (bars["low"] <= bars[["open", "close"]].min(axis=1)).all(), ticker
        assert (bars["high"] >= bars[["open", "close"]].max(axis=1)).all(), ticker
        assert (bars["volume"] > 0).all() and (bars["amount"] > 0).all()
        assert bars["adj_factor"].isna().all()
        returns = np.log(bars["close"]).diff()
        # The +-10% price limit binds between adjacent weekdays (a holiday folds several days'
        # moves into one); the 0.01 allows for rounding prices to the cent.
        days = np.array(bars["trade_date"], dtype="datetime64[D]")
        adjacent = np.r_[False, np.busday_count(days[:-1], days[1:]) == 1]
        assert returns[adjacent].between(np.log(0.9) - 0.01, np.log(1.1) + 0.01).all(), ticker
        returns = returns.dropna()
        assert 0.12 < returns.std() * np.sqrt(250) < 0.6  # a plausible annual volatility


def test_returns_are_fat_tailed_and_share_a_market_factor(demo: DemoSource) -> None:
    """Excess kurtosis above 1 and positive correlation between every stock and the index."""
    index = np.log(demo.fetch_bars(DEMO_INDEX, *EVERYTHING)["close"]).diff()
    for ticker in demo.tickers()[:-1]:
        returns = np.log(demo.fetch_bars(ticker, *EVERYTHING)["close"]).diff()
        assert returns.kurt() > 1.0, ticker
        assert returns.corr(index) > 0.3, ticker


def test_sessions_follow_the_xshg_calendar(demo: DemoSource) -> None:
    """No weekends, no Golden Week (2026-10-01), XSHG sessions exactly up to its last one."""
    dates = pd.DatetimeIndex(demo.fetch_bars("600000.SH", *EVERYTHING)["trade_date"])
    assert (dates.day_of_week < 5).all()
    assert pd.Timestamp("2026-10-01") not in dates and pd.Timestamp("2026-10-09") in dates
    assert pd.Timestamp("2024-02-12") not in dates  # Spring Festival
    calendar = xc.get_calendar("XSHG")
    known = dates[dates <= calendar.last_session]
    assert known.equals(calendar.sessions_in_range(known[0], calendar.last_session))
    after = dates[dates > calendar.last_session]
    assert after.equals(pd.bdate_range(calendar.last_session + pd.Timedelta(days=1), DEMO_END))


def test_volatility_differs_across_regimes(demo: DemoSource) -> None:
    """Market moves in the turbulent regime are at least twice as large as in the calm one."""
    regimes = demo.regimes()
    assert set(regimes.unique()) == {0, 1} and 0.05 < regimes.mean() < 0.5
    closes = demo.fetch_bars(DEMO_INDEX, *EVERYTHING).set_index("trade_date")["close"]
    returns = np.log(closes).diff().iloc[1:]
    by_regime = returns.groupby(regimes.loc[returns.index].to_numpy()).std()
    assert by_regime[1] > 2.0 * by_regime[0]


def test_unknown_ticker_is_a_clear_error(demo: DemoSource) -> None:
    """The error names the ticker, the dates and the tickers on offer."""
    with pytest.raises(SourceError, match=r"688999\.SH.*2020-01-01.*600000\.SH"):
        demo.fetch_bars("688999.SH", dt.date(2020, 1, 1), dt.date(2020, 2, 1))


def test_a_range_past_the_span_returns_what_exists(demo: DemoSource) -> None:
    """Nothing after DEMO_END, and an empty (but well-formed) frame for a range entirely after it."""
    bars = demo.fetch_bars("600000.SH", dt.date(2029, 1, 1), dt.date(2029, 12, 31))
    assert bars.empty and list(bars.columns) == list(BAR_COLUMNS)


def test_make_source_builds_each_source(tmp_path: Path) -> None:
    """make_source knows tushare, csv and demo, and lists them for an unknown name."""
    demo = make_source("demo", seed=1, n_tickers=2, start="2020-01-02")
    assert isinstance(demo, DemoSource) and demo.tickers() == ["600000.SH", "600036.SH", DEMO_INDEX]
    (tmp_path / "600519.SH.csv").write_text("date,close\n2020-01-02,10\n", encoding="utf-8")
    assert make_source("csv", path=tmp_path).tickers() == ["600519.SH"]
    with pytest.raises(SourceError, match="--path"):
        make_source("csv")
    with pytest.raises(SourceError, match="TUSHARE_TOKEN"):
        make_source("tushare", token="")
    with pytest.raises(SourceError, match="tushare, csv, demo"):
        make_source("yahoo")
