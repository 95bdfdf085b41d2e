"""Daily bars from tushare pro, through the real ``tushare`` client.

This module is the boundary to tushare: it parses tushare's payloads (``YYYYMMDD`` strings,
newest-first rows, ``vol``) into normalized bars once, and translates tushare's failure modes
into :class:`~forecasting.data.sources.base.SourceError` once:

* a nonzero reply code arrives as a bare ``Exception(msg)`` from ``DataApi.query``; the message
  decides whether it is a bad token (no retry), a rate limit (retry with backoff) or anything
  else (no retry);
* an HTTP 4xx/5xx arrives as an *empty* DataFrame, which must not be mistaken for "no data".
  We observe the HTTP status of every request (see :class:`_ResponseRecorder`), and as a second
  guard treat a frame without columns as a failed request: a real code-0 reply always carries its
  field names, even with no rows;
* network errors (``requests.RequestException``) are retried with backoff.

The token is never put in an exception message or a log line: every text that leaves this module
passes through :meth:`TushareSource._scrub`.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

from forecasting.data.sources.base import (
    BAR_COLUMNS,
    Security,
    SourceError,
    empty_bars,
    exchange_of,
)

if TYPE_CHECKING:  # the real import is deferred: ``import tushare`` takes about a second
    import requests

log = logging.getLogger(__name__)

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

#: Rows tushare returns at most per call; a full page means there may be older rows.
DEFAULT_PAGE_SIZE: Mapping[str, int] = {
    "daily": 6000,
    "index_daily": 8000,
    "adj_factor": 6000,
    "trade_cal": 10000,
}

_TOKEN_FIX = (
    "set the TUSHARE_TOKEN environment variable to the token shown at "
    "https://tushare.pro/user/token (or use --source demo / --source csv)"
)

# "抱歉，您每分钟最多访问该接口500次" (per minute) or "...每小时..." (per hour) passes with time;
# "...每天最多访问..." (daily quota) does not, so it is not retried.
_RATE_LIMIT = re.compile(r"每(分钟|小时)最多访问|访问频率|too many requests", re.IGNORECASE)
_DAILY_QUOTA = re.compile(r"每天最多访问")
_NO_PERMISSION = re.compile(r"没有(访问)?该接口的?权限|权限不足|积分")

_DAILY_FIELDS = "ts_code,trade_date,open,high,low,close,vol,amount"
_ADJ_FIELDS = "ts_code,trade_date,adj_factor"
_CAL_FIELDS = "exchange,cal_date,is_open"


class _Retryable(Exception):
    """A failure that may pass: rate limit, network error, HTTP 5xx."""


class _ResponseRecorder:
    """Stands in for the ``requests`` module inside tushare's ``DataApi.query``.

    ``DataApi.query`` calls ``requests.post`` and, on an HTTP error status, returns an empty
    DataFrame without telling anyone why. This stand-in forwards to the real ``requests.post``
    and remembers the response per thread, so the caller can tell "HTTP 500" from "no rows".
    """

    def __init__(self) -> None:
        import requests as real

        self._requests = real
        self._local = threading.local()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._requests, name)

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        self._local.response = None
        response = self._requests.post(*args, **kwargs)
        self._local.response = response
        return response

    def last_status(self) -> int | None:
        response = getattr(self._local, "response", None)
        return None if response is None else int(response.status_code)


def _observed_query(api: Any, recorder: _ResponseRecorder) -> Callable[..., pd.DataFrame]:
    """``api.query`` with tushare's own code, but its ``requests`` global bound to ``recorder``.

    Rebinding the function's globals (not patching the ``tushare.pro.client`` module) keeps the
    change local to this source and leaves every other user of tushare untouched.
    """
    from tushare.pro import client

    query = client.DataApi.query
    if "requests" not in query.__code__.co_names:  # a future client: fall back to the column guard
        return api.query  # type: ignore[no-any-return]
    namespace = dict(vars(client))
    namespace["requests"] = recorder
    rebound = types.FunctionType(
        query.__code__, namespace, query.__name__, query.__defaults__, query.__closure__
    )
    rebound.__kwdefaults__ = query.__kwdefaults__
    return types.MethodType(rebound, api)


def _yyyymmdd(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


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
    ) -> None:
        token = (token or "").strip()
        if not token:
            raise SourceError(f"no tushare token: {_TOKEN_FIX}")
        if retries < 0 or backoff < 0 or (page_size is not None and page_size < 1):
            raise ValueError("retries and backoff must be >= 0 and page_size >= 1")
        self.__token = token
        self._tickers = [t.strip().upper() for t in tickers]
        self._securities = {s.ticker.upper(): s for s in securities}
        self._indices = {t.upper() for t in index_tickers} | {
            t for t, s in self._securities.items() if s.kind == "index"
        }
        self._retries = retries
        self._backoff = backoff
        self._page_size = page_size
        self._exchange = exchange

        import tushare

        try:
            api = tushare.pro_api(token, timeout=timeout)
        except Exception as exc:  # the client only fails here on an empty token
            raise SourceError(self._scrub(f"tushare client did not start: {exc}")) from None
        if http_url is not None:
            # DataApi keeps its URL in a private (name-mangled) attribute and offers no setter.
            api._DataApi__http_url = http_url.rstrip("/")
        self._recorder = _ResponseRecorder()
        self._query = _observed_query(api, self._recorder)

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
        raw = self._paged(api_name, {"ts_code": ticker}, _DAILY_FIELDS, start, end, what)
        if raw.empty:
            return empty_bars()
        bars = self._to_bars(raw, ticker, api_name, what)
        if is_index:
            bars["adj_factor"] = float("nan")
        else:
            adj = self._paged("adj_factor", {"ts_code": ticker}, _ADJ_FIELDS, start, end, what)
            bars["adj_factor"] = self._adj_factors(adj, bars["trade_date"], what)
        return bars.loc[:, list(BAR_COLUMNS)].reset_index(drop=True)

    def trading_calendar(self, start: dt.date, end: dt.date) -> pd.DataFrame:
        """``cal_date`` (date), ``is_open`` (bool) for the exchange, oldest first."""
        what = f"the {self._exchange} calendar from {start} to {end}"
        if start > end:
            return pd.DataFrame(
                {"cal_date": pd.Series(dtype=object), "is_open": pd.Series(dtype=bool)}
            )
        raw = self._paged(
            "trade_cal", {"exchange": self._exchange}, _CAL_FIELDS, start, end, what, "cal_date"
        )
        self._require(raw, ("cal_date", "is_open"), "trade_cal", what)
        cal = pd.DataFrame(
            {
                "cal_date": self._dates(raw["cal_date"], "trade_cal", what),
                "is_open": pd.to_numeric(raw["is_open"], errors="coerce").fillna(0).astype(bool),
            }
        )
        cal = cal.drop_duplicates("cal_date").sort_values("cal_date", kind="stable")
        return cal.reset_index(drop=True)

    # ------------------------------------------------------------------------------ parsing

    def _to_bars(self, raw: pd.DataFrame, ticker: str, api_name: str, what: str) -> pd.DataFrame:
        self._require(raw, ("trade_date", "close"), api_name, what)
        bars = pd.DataFrame(
            {"ticker": ticker, "trade_date": self._dates(raw["trade_date"], api_name, what)}
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
        self._require(adj, ("trade_date", "adj_factor"), "adj_factor", what)
        factors = pd.Series(
            pd.to_numeric(adj["adj_factor"], errors="coerce").astype("float64").to_numpy(),
            index=self._dates(adj["trade_date"], "adj_factor", what),
        )
        # Pages never overlap, so a repeated date is a server quirk; the newest reply wins.
        factors = factors[~factors.index.duplicated(keep="first")]
        return pd.Series(dates.map(factors).astype("float64").to_numpy(), index=dates.index)

    def _dates(self, values: pd.Series, api_name: str, what: str) -> list[dt.date]:
        parsed = pd.to_datetime(values.astype(str), format="%Y%m%d", errors="coerce")
        bad = values[parsed.isna()]
        if not bad.empty:
            raise SourceError(
                f"tushare {api_name} for {what} sent a date {bad.iloc[0]!r} that is not YYYYMMDD; "
                "check the tushare client version (this code expects tushare 1.4)"
            )
        return [ts.date() for ts in parsed]

    @staticmethod
    def _require(raw: pd.DataFrame, columns: Iterable[str], api_name: str, what: str) -> None:
        missing = [c for c in columns if c not in raw.columns]
        if missing:
            raise SourceError(
                f"tushare {api_name} for {what} replied without the columns {missing} "
                f"(got {list(raw.columns)}); check the tushare client version"
            )

    # ------------------------------------------------------------------------------ network

    def _paged(
        self,
        api_name: str,
        params: Mapping[str, str],
        fields: str,
        start: dt.date,
        end: dt.date,
        what: str,
        date_field: str = "trade_date",
    ) -> pd.DataFrame:
        """All rows in ``[start, end]``; tushare caps rows per call, newest first, so page back."""
        limit = self._page_size or DEFAULT_PAGE_SIZE.get(api_name, 5000)
        pages: list[pd.DataFrame] = []
        page_end = end
        while page_end >= start:
            call = {**params, "start_date": _yyyymmdd(start), "end_date": _yyyymmdd(page_end)}
            page = self._call(api_name, call, fields, what)
            if page.empty:
                break
            pages.append(page)
            if len(page) < limit:
                break
            if date_field not in page.columns:
                self._require(page, (date_field,), api_name, what)
            oldest = self._dates(page[date_field], api_name, what)
            next_end = min(oldest) - dt.timedelta(days=1)
            if next_end >= page_end:  # the server ignored end_date: stop rather than loop forever
                raise SourceError(
                    f"tushare {api_name} for {what}: paging made no progress at {page_end}; "
                    "the server did not honour end_date"
                )
            page_end = next_end
        if not pages:
            return pd.DataFrame()
        rows = pd.concat(pages, ignore_index=True) if len(pages) > 1 else pages[0]
        # Identical rows are paging artefacts; differing rows for one date are passed on for
        # the ingest to judge, so nothing is silently lost.
        return rows.drop_duplicates().reset_index(drop=True)

    def _call(
        self, api_name: str, params: Mapping[str, str], fields: str, what: str
    ) -> pd.DataFrame:
        """One tushare request, retried with exponential backoff when the failure may pass."""
        attempts = self._retries + 1
        reason = ""
        for attempt in range(attempts):
            try:
                return self._call_once(api_name, params, fields, what)
            except _Retryable as exc:
                reason = str(exc)
            if attempt + 1 < attempts:
                delay = self._backoff * 2**attempt
                log.warning(
                    "%s",
                    self._scrub(
                        f"tushare {api_name} for {what}: {reason}; "
                        f"retry {attempt + 1} of {self._retries} in {delay:.2f}s"
                    ),
                )
                time.sleep(delay)
        raise SourceError(
            self._scrub(
                f"tushare {api_name} for {what} failed after {attempts} attempts: {reason}; "
                "try again later, or raise the retry count/backoff"
            )
        )

    def _call_once(
        self, api_name: str, params: Mapping[str, str], fields: str, what: str
    ) -> pd.DataFrame:
        import requests

        try:
            frame = self._query(api_name, fields=fields, **params)
        except requests.RequestException as exc:
            raise _Retryable(self._scrub(f"network error ({type(exc).__name__}: {exc})")) from None
        except (ValueError, KeyError, TypeError) as exc:
            # HTTP 200 but not tushare's JSON (a proxy page, a captive portal, ...).
            raise SourceError(
                self._scrub(
                    f"tushare {api_name} for {what}: the reply was not tushare JSON "
                    f"({type(exc).__name__}: {exc}); check the API URL and any proxy"
                )
            ) from None
        except Exception as exc:  # DataApi raises a bare Exception(msg) for a nonzero code
            raise self._server_error(api_name, what, str(exc)) from None
        status = self._recorder.last_status()
        if (status is not None and status >= 400) or len(frame.columns) == 0:
            shown = f"HTTP {status}" if status is not None else "an HTTP error"
            if status is None or status >= 500 or status == 429:
                raise _Retryable(f"tushare answered {shown}")
            raise SourceError(
                f"tushare {api_name} for {what}: the server answered {shown}; "
                "check the API URL and the tushare client version"
            )
        return frame

    def _server_error(self, api_name: str, what: str, message: str) -> Exception:
        message = self._scrub(message)
        if "token" in message.lower():
            return SourceError(
                f"tushare rejected the token while fetching {api_name} for {what} "
                f"({message}); {_TOKEN_FIX}"
            )
        if _RATE_LIMIT.search(message):
            return _Retryable(f"rate limited ({message})")
        if _DAILY_QUOTA.search(message):
            return SourceError(
                f"tushare {api_name} for {what}: daily quota used up ({message}); "
                "run again tomorrow or upgrade the tushare account"
            )
        if _NO_PERMISSION.search(message):
            return SourceError(
                f"tushare {api_name} for {what}: the account may not call {api_name} "
                f"({message}); see https://tushare.pro/document/1?doc_id=108"
            )
        return SourceError(f"tushare {api_name} for {what} failed: {message}")

    def _scrub(self, text: str) -> str:
        return text.replace(self.__token, "********")
