"""A seeded synthetic A-share market, so the pipeline runs with no token and no network.

The market is generated once per ``(seed, n_tickers, start, include_index)`` over a fixed span
(``start`` to :data:`DEMO_END`) and then sliced, so the bar for a date never depends on the range
requested: an incremental ingest sees the same history a full one does.

Model, per weekday ``t`` (the path runs on every weekday; only XSHG sessions are reported, so a
holiday simply folds its move into the next session, as news does):

* a two-state Markov regime ``s_t`` (calm / turbulent) scales volatility;
* a GARCH(1,1) variance ``h_t`` (unit mean) adds volatility clustering within a regime;
* market log-return ``m_t = mu + vol[s_t] * sqrt(h_t) * z_t`` with Student-t(4) shocks;
* stock log-return ``r_t = mu_i + beta_i * m_t + idio_i * mult[s_t] * e_t``, clipped to the
  +-10% daily price limit;
* OHLC from an overnight gap and an intraday range, so ``low <= open, close <= high``;
  volume rises with ``|r_t|`` and in turbulent regimes.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from forecasting.data.sources.base import BAR_COLUMNS, Security, SourceError, exchange_of

#: Last date of the generated span; bars end here whatever the request.
DEMO_END = dt.date(2028, 12, 29)
DEMO_INDEX = "000300.SH"
_STOCKS = (
    "600000.SH",
    "600036.SH",
    "600519.SH",
    "000001.SZ",
    "601318.SH",
    "000333.SZ",
    "600276.SH",
    "000858.SZ",
    "601888.SH",
    "002415.SZ",
    "600887.SH",
    "601166.SH",
)
_REGIME_VOL = np.array([0.009, 0.024])  # market daily vol, calm / turbulent
_IDIO_MULT = np.array([1.0, 1.6])  # idiosyncratic vol multiplier, calm / turbulent
_STAY = np.array([0.985, 0.95])  # P(stay in the regime): calm lasts ~67 days, turbulence ~20
_GARCH_A, _GARCH_B = 0.08, 0.90
_T_DF = 4.0
_LIMIT_UP, _LIMIT_DOWN = math.log(1.1), math.log(0.9)


def demo_tickers(n_tickers: int, include_index: bool = True) -> list[str]:
    """The demo universe: ``n_tickers`` stock codes (tushare style), then the index."""
    stocks = [*_STOCKS, *(f"{603100 + i}.SH" for i in range(max(0, n_tickers - len(_STOCKS))))]
    return stocks[:n_tickers] + ([DEMO_INDEX] if include_index else [])


def demo_sessions(start: dt.date, end: dt.date = DEMO_END) -> pd.DatetimeIndex:
    """XSHG sessions from ``start`` to ``end``; weekdays after the calendar's last session.

    exchange_calendars knows China's holidays only a year or so ahead (to 2026-12-31 in 4.13);
    beyond that every weekday is taken as a session.
    """
    import exchange_calendars as xc

    calendar = xc.get_calendar("XSHG")
    first = pd.Timestamp(start)
    if first < calendar.first_session:
        if first < calendar.bound_min():
            raise ValueError(
                f"demo start {start} is before XSHG data ({calendar.bound_min():%Y-%m-%d})"
            )
        calendar = xc.get_calendar("XSHG", start=first)
    last = pd.Timestamp(end)
    known = calendar.sessions_in_range(first, min(last, calendar.last_session))
    after = pd.bdate_range(max(first, calendar.last_session + pd.Timedelta(days=1)), last)
    return pd.DatetimeIndex(known.append(after))


@dataclass(frozen=True)
class _Market:
    bars: dict[str, pd.DataFrame]
    regimes: pd.Series  # 0 calm / 1 turbulent, indexed by session date


def _student_t(rng: np.random.Generator, size: int) -> np.ndarray:
    # Unit-variance Student-t: fat tails without changing the volatility scale.
    return rng.standard_t(_T_DF, size) / math.sqrt(_T_DF / (_T_DF - 2.0))


def _ohlc(
    rng: np.random.Generator,
    first_close: float,
    returns: np.ndarray,
    day_vol: np.ndarray,
    decimals: int,
) -> dict[str, np.ndarray]:
    """Open/high/low/close from close-to-close log-returns; ``low <= open, close <= high``."""
    n = len(returns)
    close = first_close * np.exp(np.cumsum(returns))
    prev_close = np.concatenate([[first_close], close[:-1]])
    # The overnight gap carries part of the day's move plus noise; the rest happens intraday.
    gap = np.clip(0.3 * returns + rng.normal(0.0, 0.3, n) * day_vol, _LIMIT_DOWN, _LIMIT_UP)
    open_ = prev_close * np.exp(gap)
    top = np.maximum(open_, close)
    bottom = np.minimum(open_, close)
    high = np.minimum(top * np.exp(np.abs(rng.normal(0.0, 0.5, n)) * day_vol), prev_close * 1.1)
    low = np.maximum(bottom * np.exp(-np.abs(rng.normal(0.0, 0.5, n)) * day_vol), prev_close * 0.9)
    high = np.maximum(high, top)  # the limit clip may undercut a limit-up close by a rounding hair
    low = np.minimum(low, bottom)
    # Rounding is monotone, so it keeps low <= open, close <= high.
    return {
        "open": np.round(open_, decimals),
        "high": np.round(high, decimals),
        "low": np.round(low, decimals),
        "close": np.round(close, decimals),
    }


@functools.lru_cache(maxsize=8)
def _market(seed: int, n_tickers: int, start: dt.date, include_index: bool) -> _Market:
    days = pd.bdate_range(start, DEMO_END)  # every weekday: the path's clock
    n = len(days)
    if n < 2:
        raise ValueError(f"demo start {start} leaves no span before {DEMO_END}")

    # Market: separate random streams per component, so adding tickers changes nothing else.
    rng = np.random.default_rng([seed, 0])
    uniform = rng.random(n)
    regime = np.zeros(n, dtype=np.int64)
    for t in range(1, n):
        stay = uniform[t] < _STAY[regime[t - 1]]
        regime[t] = regime[t - 1] if stay else 1 - regime[t - 1]
    z = _student_t(rng, n)
    h = np.ones(n)
    for t in range(1, n):
        h[t] = (
            (1.0 - _GARCH_A - _GARCH_B) + _GARCH_A * h[t - 1] * z[t - 1] ** 2 + _GARCH_B * h[t - 1]
        )
    market_vol = _REGIME_VOL[regime] * np.sqrt(h)
    market = 0.00025 + market_vol * z

    sessions = demo_sessions(start)
    keep = days.isin(sessions)
    dates = [ts.date() for ts in days[keep]]
    bars: dict[str, pd.DataFrame] = {}

    for i, ticker in enumerate(demo_tickers(n_tickers, include_index=False)):
        own = np.random.default_rng([seed, 1, i])
        beta = own.uniform(0.7, 1.3)
        idio = own.uniform(0.010, 0.020)
        drift = own.normal(0.0001, 0.0002)
        first_close = float(np.exp(own.uniform(math.log(8.0), math.log(80.0))))
        base_volume = own.uniform(5e4, 5e5)  # lots of 100 shares, as tushare's vol
        idio_vol = idio * _IDIO_MULT[regime]
        returns = np.clip(
            drift + beta * market + idio_vol * _student_t(own, n), _LIMIT_DOWN, _LIMIT_UP
        )
        day_vol = np.sqrt((beta * market_vol) ** 2 + idio_vol**2)
        prices = _ohlc(own, first_close, returns, day_vol, decimals=2)
        volume = base_volume * np.exp(
            0.35 * own.normal(size=n) + 12.0 * np.abs(returns) + 0.4 * regime
        )
        vwap = (prices["open"] + prices["high"] + prices["low"] + prices["close"]) / 4.0
        amount = volume * vwap / 10.0  # lots * 100 shares * yuan / 1000: thousand yuan
        bars[ticker] = _frame(ticker, dates, prices, volume, amount, keep)

    if include_index:
        own = np.random.default_rng([seed, 2])
        returns = np.clip(market + 0.001 * own.normal(size=n), _LIMIT_DOWN, _LIMIT_UP)
        prices = _ohlc(own, 3500.0, returns, market_vol, decimals=3)
        volume = 1.2e8 * np.exp(0.25 * own.normal(size=n) + 10.0 * np.abs(returns) + 0.4 * regime)
        # An index has no share price: turnover uses an average constituent price of ~16 yuan.
        amount = volume * 16.0 * np.exp(0.05 * own.normal(size=n)) / 10.0
        bars[DEMO_INDEX] = _frame(DEMO_INDEX, dates, prices, volume, amount, keep)

    return _Market(bars=bars, regimes=pd.Series(regime[keep], index=dates, name="regime"))


def _frame(
    ticker: str,
    dates: list[dt.date],
    prices: dict[str, np.ndarray],
    volume: np.ndarray,
    amount: np.ndarray,
    keep: np.ndarray,
) -> pd.DataFrame:
    """Sessions only (``keep``), in tushare's units: volume in lots, amount in thousand yuan."""
    frame = pd.DataFrame({"ticker": ticker, "trade_date": pd.Series(dates, dtype=object)})
    for column in ("open", "high", "low", "close"):
        frame[column] = prices[column][keep]
    frame["volume"] = np.round(volume[keep], 2)
    frame["amount"] = np.round(amount[keep], 3)
    frame["adj_factor"] = float("nan")  # prices are already continuous (adjusted)
    return frame.loc[:, list(BAR_COLUMNS)]


class DemoSource:
    """A deterministic synthetic market on the XSHG calendar (no token, no network).

    Args:
        seed: the random seed; the same seed gives the same market, bar for bar.
        n_tickers: how many stocks (``600000.SH``, ``600036.SH``, ... with a few ``.SZ``).
        start: the first date of the generated history.
        include_index: also offer ``000300.SH`` (kind ``index``), the market factor's level.
    """

    name = "demo"

    def __init__(
        self,
        seed: int = 7,
        n_tickers: int = 8,
        start: dt.date = dt.date(2016, 1, 4),
        *,
        include_index: bool = True,
    ) -> None:
        if n_tickers < 1:
            raise ValueError("n_tickers must be at least 1")
        self.seed = seed
        self.n_tickers = n_tickers
        self.start = start
        self.include_index = include_index

    def __repr__(self) -> str:
        return f"DemoSource(seed={self.seed}, n_tickers={self.n_tickers}, start={self.start})"

    @property
    def _market(self) -> _Market:
        return _market(self.seed, self.n_tickers, self.start, self.include_index)

    def tickers(self) -> list[str]:
        return demo_tickers(self.n_tickers, self.include_index)

    def security(self, ticker: str) -> Security:
        ticker = ticker.strip().upper()
        kind = "index" if ticker == DEMO_INDEX and self.include_index else "stock"
        return Security(ticker, f"Demo {ticker}", kind, exchange_of(ticker))

    def fetch_bars(self, ticker: str, start: dt.date, end: dt.date) -> pd.DataFrame:
        """Bars with ``start <= trade_date <= end``; none after :data:`DEMO_END`."""
        ticker = ticker.strip().upper()
        bars = self._market.bars.get(ticker)
        if bars is None:
            raise SourceError(
                f"the demo market has no {ticker} (asked for {start} to {end}); "
                f"it offers {', '.join(self.tickers())}"
            )
        inside = (bars["trade_date"] >= start) & (bars["trade_date"] <= end)
        return bars.loc[inside].reset_index(drop=True)

    def trading_calendar(self, start: dt.date, end: dt.date) -> pd.DataFrame | None:
        """None: the ingest takes sessions from the exchange calendar, as the bars do."""
        return None

    def regimes(self) -> pd.Series:
        """The hidden volatility regime per session (0 calm, 1 turbulent), for diagnostics."""
        return self._market.regimes.copy()
