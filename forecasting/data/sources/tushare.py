"""Daily bars and the trading calendar from tushare pro, as :class:`TushareSource`.

This module maps tushare's payloads (``YYYYMMDD`` strings, newest-first rows, ``vol``, the
separate ``adj_factor`` reply) into normalized bars and calendar rows once; the requests
themselves (paging, retries, translating tushare's failures into
:class:`~forecasting.data.sources.base.SourceError`, keeping the token out of every message) go
through :class:`~forecasting.data.sources.tushare_client.TushareClient`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import pandas as pd

from forecasting.data.sources.base import (
    BAR_COLUMNS,
    Security,
    empty_bars,
    exchange_of,
)
from forecasting.data.sources.rate_limit import TokenBucket
from forecasting.data.sources.tushare_client import TushareClient, parse_dates, require_columns

#: Tickers fetched with ``index_daily`` rather than ``daily``.
KNOWN_INDEX_TICKERS: frozenset[str] = frozenset(
    {
        "000300.SH",  # CSI 300
        "000905.SH",  # CSI 500
        "000852.SH",  # CSI 1000
        "000016.SH",  # SSE 50
        "000001.SH",  # SSE Composite (000001.SZ is Ping An Bank, a stock)
        "399001.SZ",  # SZSE Component
        "399006.SZ",  # ChiNext
    }
)

_DAILY_FIELDS = "ts_code,trade_date,open,high,low,close,vol,amount"
_ADJ_FIELDS = "ts_code,trade_date,adj_factor"
_CAL_FIELDS = "exchange,cal_date,is_open"


class TushareSource:
    """Daily bars, adjustment factors and the SSE calendar from tushare pro.

    Args:
        token: the tushare token (from ``TUSHARE_TOKEN``); never logged nor shown in errors.
        tickers: the default universe returned by :meth:`tickers`.
        securities: reference data; a ``Security`` with ``kind="index"`` is fetched with
            ``index_daily`` and its name is reported by :meth:`security`.
        index_tickers: further tickers to treat as indices (defaults to the well-known ones).
        http_url: the API root; ``None`` keeps tushare's own (tests point it at a local stub).
        retries: retries after the first attempt on rate limits, network errors and HTTP 5xx.
        backoff: first retry delay in seconds; it doubles on each further retry.
        timeout: HTTP timeout per request in seconds.
        page_size: rows per call after which another (older) page is requested; ``None`` uses
            tushare's documented limits (6000 for ``daily``). It must not exceed the server's
            real limit, or older rows would be missed.
        exchange: the exchange whose calendar :meth:`trading_calendar` returns.
        calls_per_minute: the account's rate limit; requests wait for a token of a
            :class:`~forecasting.data.sources.rate_limit.TokenBucket` (``None``: no limit).
    """

    name = "tushare"

    def __init__(
        self,
        token: str,
        *,
        tickers: Iterable[str] = (),
        securities: Iterable[Security] = (),
        index_tickers: Iterable[str] = KNOWN_INDEX_TICKERS,
        http_url: str | None = None,
        retries: int = 5,
        backoff: float = 2.0,
        timeout: float = 30.0,
        page_size: int | None = None,
        exchange: str = "SSE",
        calls_per_minute: float | None = None,
    ) -> None:
        self._client = TushareClient(
            token,
            http_url=http_url,
            retries=retries,
            backoff=backoff,
            timeout=timeout,
            page_size=page_size,
            limiter=TokenBucket(calls_per_minute) if calls_per_minute else None,
        )
        self._tickers = [t.strip().upper() for t in tickers]
        self._securities = {s.ticker.upper(): s for s in securities}
        self._indices = {t.upper() for t in index_tickers} | {
            t for t, s in self._securities.items() if s.kind == "index"
        }
        self._exchange = exchange

    def __repr__(self) -> str:
        return f"TushareSource(token='********', tickers={self._tickers!r})"

    # ----------------------------------------------------------------------------- protocol

    def tickers(self) -> list[str]:
        """The configured universe (tushare itself has thousands of tickers)."""
        return list(self._tickers)

    def security(self, ticker: str) -> Security:
        """Reference data from the ``securities`` hint, else kind from the index list."""
        ticker = ticker.strip().upper()
        known = self._securities.get(ticker)
        kind = "index" if ticker in self._indices else "stock"
        if known is not None:
            return Security(ticker, known.name, kind, known.exchange or exchange_of(ticker))
        return Security(ticker, None, kind, exchange_of(ticker))

    def fetch_bars(self, ticker: str, start: dt.date, end: dt.date) -> pd.DataFrame:
        """Bars from ``daily`` (stocks, with ``adj_factor`` merged) or ``index_daily``."""
        ticker = ticker.strip().upper()
        if start > end:
            return empty_bars()
        what = f"{ticker} from {start} to {end}"
        is_index = self.security(ticker).kind == "index"
        api_name = "index_daily" if is_index else "daily"
        raw = self._client.paged(api_name, {"ts_code": ticker}, _DAILY_FIELDS, start, end, what)
        if raw.empty:
            return empty_bars()
        bars = self._to_bars(raw, ticker, api_name, what)
        if is_index:
            bars["adj_factor"] = float("nan")
        else:
            adj = self._client.paged(
                "adj_factor", {"ts_code": ticker}, _ADJ_FIELDS, start, end, what
            )
            bars["adj_factor"] = self._adj_factors(adj, bars["trade_date"], what)
        return bars.loc[:, list(BAR_COLUMNS)].reset_index(drop=True)

    def set_deadline(self, deadline: float | None) -> None:
        """No request, retry or wait after ``deadline`` (``time.monotonic()``); the ingest's."""
        self._client.set_deadline(deadline)

    def trading_calendar(self, start: dt.date, end: dt.date) -> pd.DataFrame:
        """``cal_date`` (date), ``is_open`` (bool) for the exchange, oldest first."""
        what = f"the {self._exchange} calendar from {start} to {end}"
        if start > end:
            return pd.DataFrame(
                {"cal_date": pd.Series(dtype=object), "is_open": pd.Series(dtype=bool)}
            )
        raw = self._client.paged(
            "trade_cal", {"exchange": self._exchange}, _CAL_FIELDS, start, end, what, "cal_date"
        )
        require_columns(raw, ("cal_date", "is_open"), "trade_cal", what)
        cal = pd.DataFrame(
            {
                "cal_date": parse_dates(raw["cal_date"], "trade_cal", what),
                "is_open": pd.to_numeric(raw["is_open"], errors="coerce").fillna(0).astype(bool),
            }
        )
        cal = cal.drop_duplicates("cal_date").sort_values("cal_date", kind="stable")
        return cal.reset_index(drop=True)

    # ------------------------------------------------------------------------------ parsing

    def _to_bars(self, raw: pd.DataFrame, ticker: str, api_name: str, what: str) -> pd.DataFrame:
        require_columns(raw, ("trade_date", "close"), api_name, what)
        bars = pd.DataFrame(
            {
                "ticker": _reply_tickers(raw, ticker),
                "trade_date": parse_dates(raw["trade_date"], api_name, what),
            }
        )
        for column, source in (
            ("open", "open"),
            ("high", "high"),
            ("low", "low"),
            ("close", "close"),
            ("volume", "vol"),
            ("amount", "amount"),
        ):
            values = (
                raw[source] if source in raw.columns else pd.Series(float("nan"), index=raw.index)
            )
            bars[column] = pd.to_numeric(values, errors="coerce").astype("float64").to_numpy()
        return bars.sort_values("trade_date", kind="stable").reset_index(drop=True)

    def _adj_factors(self, adj: pd.DataFrame, dates: pd.Series, what: str) -> pd.Series:
        if adj.empty:
            return pd.Series(float("nan"), index=dates.index, dtype="float64")
        require_columns(adj, ("trade_date", "adj_factor"), "adj_factor", what)
        factors = pd.Series(
            pd.to_numeric(adj["adj_factor"], errors="coerce").astype("float64").to_numpy(),
            index=parse_dates(adj["trade_date"], "adj_factor", what),
        )
        # Pages never overlap, so a repeated date is a server quirk; the newest reply wins.
        factors = factors[~factors.index.duplicated(keep="first")]
        return pd.Series(dates.map(factors).astype("float64").to_numpy(), index=dates.index)


def _reply_tickers(raw: pd.DataFrame, ticker: str) -> pd.Series:
    """The ``ts_code`` each reply row carries (the requested ticker where it carries none): a
    row for another ticker is passed on as such, for the ingest to reject, never relabelled."""
    if "ts_code" not in raw.columns:
        return pd.Series(ticker, index=raw.index, dtype=object)
    codes = raw["ts_code"].astype("string").str.strip().str.upper()
    return pd.Series(codes.fillna(ticker).to_numpy(dtype=object), index=raw.index, dtype=object)
