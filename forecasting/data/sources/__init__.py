"""Price sources behind one interface, :class:`~forecasting.data.sources.base.PriceSource`.

``make_source`` is the one place that turns a source name (from settings or the CLI) into a
source; everything downstream sees only the protocol.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, get_args

from forecasting.data.sources.base import (
    BAR_COLUMNS,
    PriceSource,
    Security,
    SourceError,
    empty_bars,
    exchange_of,
)
from forecasting.data.sources.demo import DemoSource
from forecasting.data.sources.files import FileSource
from forecasting.data.sources.tushare import KNOWN_INDEX_TICKERS, TushareSource
from forecasting.data.sources.tushare_market import TushareMarketSource
from forecasting.settings import Secret, SourceName

SOURCE_NAMES: tuple[str, ...] = get_args(SourceName)

__all__ = [
    "BAR_COLUMNS",
    "KNOWN_INDEX_TICKERS",
    "SOURCE_NAMES",
    "DemoSource",
    "FileSource",
    "PriceSource",
    "Security",
    "SourceError",
    "TushareMarketSource",
    "TushareSource",
    "empty_bars",
    "exchange_of",
    "make_source",
]


def make_source(
    name: str,
    *,
    token: str | Secret = "",
    path: str | Path | None = None,
    ticker: str | None = None,
    calls_per_minute: float | None = None,
    http_url: str | None = None,
    **kw: Any,
) -> PriceSource:
    """Build the source called ``name``: ``"tushare"``, ``"csv"`` or ``"demo"``.

    Args:
        token: the tushare token (a ``Secret`` from settings or a plain string); tushare only.
        path: the CSV/Parquet file or directory; csv only.
        ticker: the ticker for files without a ``ts_code`` column; csv only.
        calls_per_minute: the tushare account's rate limit (a token bucket); tushare only.
        http_url: the tushare API root (default: tushare's own); tushare only.
        **kw: passed to the source's constructor (e.g. ``http_url``, ``retries``,
            ``calls_per_minute`` for tushare;
            ``seed``, ``n_tickers``, ``start`` for demo).

    Raises:
        SourceError: for an unknown name, a missing token or a missing path.
    """
    key = name.strip().lower()
    if key == "tushare":
        value = token.value if isinstance(token, Secret) else token
        return TushareMarketSource(
            value, calls_per_minute=calls_per_minute, http_url=http_url, **kw
        )
    if key == "csv":
        if path is None:
            raise SourceError("the csv source needs a file or directory: pass --path")
        return FileSource(path, ticker=ticker, **kw)
    if key == "demo":
        if isinstance(kw.get("start"), str):
            kw["start"] = dt.date.fromisoformat(kw["start"])
        return DemoSource(**kw)
    raise SourceError(f"unknown price source {name!r}; choose one of {', '.join(SOURCE_NAMES)}")
