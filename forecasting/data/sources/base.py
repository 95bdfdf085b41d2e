"""The one small interface every price source implements.

A source hands back *normalized bars*: a DataFrame with exactly :data:`BAR_COLUMNS`,
``trade_date`` as ``datetime.date``, prices as float (NaN where the source sent nothing),
sorted oldest first. Validation (bad closes, conflicting duplicates, non-trading days) is the
ingest's job, not the source's: a source passes on what it was sent, so nothing is silently lost.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import pandas as pd

from forecasting.errors import ForecastingError

BAR_COLUMNS: tuple[str, ...] = (
    "ticker",
    "trade_date",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "amount",
    "adj_factor",
)
VALUE_COLUMNS: tuple[str, ...] = BAR_COLUMNS[2:]  # a bar's values, after ticker and trade_date


class SourceError(ForecastingError, RuntimeError):
    """A source could not deliver; the message names the ticker, the dates and the fix."""


@dataclass(frozen=True)
class Security:
    ticker: str
    name: str | None = None
    kind: str = "stock"  # stock | index
    exchange: str | None = None
    # The last day the source was asked for this ticker's bars and answered, bar or none; the
    # ingest stores it with the bars (see forecasting.data.increment).
    checked_through: dt.date | None = None


@runtime_checkable
class PriceSource(Protocol):
    name: str

    def tickers(self) -> list[str]:
        """Tickers this source offers by default (its universe)."""
        ...

    def security(self, ticker: str) -> Security:
        """Reference data for one ticker."""
        ...

    def fetch_bars(self, ticker: str, start: dt.date, end: dt.date) -> pd.DataFrame:
        """Normalized bars for ``ticker`` with ``start <= trade_date <= end``."""
        ...

    def trading_calendar(self, start: dt.date, end: dt.date) -> pd.DataFrame | None:
        """``cal_date, is_open`` rows for the exchange, or None if the source has no calendar."""
        ...


def empty_bars() -> pd.DataFrame:
    return pd.DataFrame(
        {
            c: pd.Series(dtype="object" if c in ("ticker", "trade_date") else "float64")
            for c in BAR_COLUMNS
        }
    )


def exchange_of(ticker: str) -> str | None:
    """``600519.SH`` -> ``SSE``; ``000001.SZ`` -> ``SZSE``; ``None`` when the suffix is unknown."""
    suffix = ticker.rsplit(".", 1)[-1].upper() if "." in ticker else ""
    return {"SH": "SSE", "SZ": "SZSE", "BJ": "BSE"}.get(suffix)
