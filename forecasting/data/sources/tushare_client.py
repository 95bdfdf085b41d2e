"""The tushare pro client as this project uses it: paging, retries, and one error translation.

:class:`TushareClient` wraps tushare's own ``DataApi`` and translates its failure modes into
:class:`~forecasting.data.sources.base.SourceError` once: a nonzero reply code arrives as a bare
``Exception(msg)`` whose message decides whether it is a bad token (no retry), a rate limit
(retry with backoff) or anything else (no retry); an HTTP 4xx/5xx arrives as an *empty*
DataFrame, which must not be mistaken for "no data", so the HTTP status of every request is
observed (see :class:`_ResponseRecorder`) and, as a second guard, a frame without columns counts
as a failed request (a real code-0 reply always carries its field names, even with no rows);
network errors (``requests.RequestException``) are retried with backoff. The token is never put
in an exception message or a log line: every text that leaves this module passes through
:meth:`TushareClient._scrub`. Mapping the replies to bars is
:class:`~forecasting.data.sources.tushare.TushareSource`'s job.
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

from forecasting.data.sources.base import SourceError

if TYPE_CHECKING:  # the real import is deferred: ``import tushare`` takes about a second
    import requests

log = logging.getLogger(__name__)

#: Rows tushare documents as its per-call caps; real caps vary, so paging never relies on them.
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


def parse_dates(values: pd.Series, api_name: str, what: str) -> list[dt.date]:
    """``YYYYMMDD`` values as dates; one that is not raises a :class:`SourceError` naming it."""
    parsed = pd.to_datetime(values.astype(str), format="%Y%m%d", errors="coerce")
    bad = values[parsed.isna()]
    if not bad.empty:
        raise SourceError(
            f"tushare {api_name} for {what} sent a date {bad.iloc[0]!r} that is not YYYYMMDD; "
            "check the tushare client version (this code expects tushare 1.4)"
        )
    return [ts.date() for ts in parsed]


def require_columns(raw: pd.DataFrame, columns: Iterable[str], api_name: str, what: str) -> None:
    """Raise a :class:`SourceError` naming the ``columns`` that a reply lacks."""
    missing = [c for c in columns if c not in raw.columns]
    if missing:
        raise SourceError(
            f"tushare {api_name} for {what} replied without the columns {missing} "
            f"(got {list(raw.columns)}); check the tushare client version"
        )


class TushareClient:
    """Paged, retried tushare requests, with every failure a :class:`SourceError`.

    Args:
        token: the tushare token; never logged nor shown in errors.
        http_url: the API root; ``None`` keeps tushare's own (tests point it at a local stub).
        retries: retries after the first attempt on rate limits, network errors and HTTP 5xx.
        backoff: first retry delay in seconds; it doubles on each further retry.
        timeout: HTTP timeout per request in seconds.
        page_size: the rows per call the server is expected to cap replies at (``None``:
            :data:`DEFAULT_PAGE_SIZE`); informational only, since paging continues until a
            reply holds no older row, whatever a page's length.
        limiter: called before every request, and waits as long as needed to keep the rate
            (a :class:`~forecasting.data.sources.rate_limit.TokenBucket`); ``None`` never waits.
    """

    def __init__(
        self,
        token: str,
        *,
        http_url: str | None = None,
        retries: int = 5,
        backoff: float = 2.0,
        timeout: float = 30.0,
        page_size: int | None = None,
        limiter: Callable[[], object] | None = None,
    ) -> None:
        token = (token or "").strip()
        if not token:
            raise SourceError(f"no tushare token: {_TOKEN_FIX}")
        if retries < 0 or backoff < 0 or (page_size is not None and page_size < 1):
            raise ValueError("retries and backoff must be >= 0 and page_size >= 1")
        self.__token = token
        self._retries = retries
        self._backoff = backoff
        self._timeout = timeout
        self._page_size = page_size  # informational: paging never trusts a page's length
        self._deadline: float | None = None
        self._limiter = limiter

        import tushare

        try:
            api = tushare.pro_api(token, timeout=timeout)
        except Exception as exc:  # the client only fails here on an empty token
            raise SourceError(self._scrub(f"tushare client did not start: {exc}")) from None
        if http_url is not None:
            # DataApi keeps its URL in a private (name-mangled) attribute and offers no setter.
            api._DataApi__http_url = http_url.rstrip("/")
        self._api = api
        self._recorder = _ResponseRecorder()
        self._query = _observed_query(api, self._recorder)

    def set_deadline(self, deadline: float | None) -> None:
        """Stop waiting, retrying and requesting at ``deadline`` (``time.monotonic()``)."""
        self._deadline = deadline

    def paged(
        self,
        api_name: str,
        params: Mapping[str, str],
        fields: str,
        start: dt.date,
        end: dt.date,
        what: str,
        date_field: str = "trade_date",
    ) -> pd.DataFrame:
        """All rows in ``[start, end]``. tushare sends the newest rows first and caps each reply
        (at a number that varies by account, API and time), so it pages back, each time up to
        the day before the oldest row so far, until a reply holds no older row: however short
        the server's pages are, no history is cut off."""
        pages: list[pd.DataFrame] = []
        page_end = end
        while page_end >= start:
            call = {**params, "start_date": _yyyymmdd(start), "end_date": _yyyymmdd(page_end)}
            page = self._call(api_name, call, fields, what)
            if page.empty:
                break
            require_columns(page, (date_field,), api_name, what)
            dates = parse_dates(page[date_field], api_name, what)
            pages.append(page)
            # Rows outside what was asked are passed on (the ingest rejects them, saying so);
            # only rows inside it move the paging on.
            inside = [d for d in dates if start <= d <= page_end]
            if not inside:  # nothing older came back (a server ignoring end_date included)
                break
            oldest = min(inside)
            if oldest <= start:  # the range is covered: nothing older was asked for
                break
            page_end = oldest - dt.timedelta(days=1)
        if not pages:
            return pd.DataFrame()
        rows = pd.concat(pages, ignore_index=True) if len(pages) > 1 else pages[0]
        # Identical rows are paging artefacts; differing rows for one date are passed on for
        # the ingest to judge, so nothing is silently lost.
        return rows.drop_duplicates().reset_index(drop=True)

    def query(
        self, api_name: str, params: Mapping[str, str], fields: str, what: str
    ) -> pd.DataFrame:
        """One request, retried like every other (for callers that page in their own way)."""
        return self._call(api_name, params, fields, what)

    def _call(
        self, api_name: str, params: Mapping[str, str], fields: str, what: str
    ) -> pd.DataFrame:
        """One tushare request, retried with exponential backoff when the failure may pass."""
        attempts = self._retries + 1
        reason = ""
        for attempt in range(attempts):
            self._check_deadline(api_name, what, reason)
            try:
                return self._call_once(api_name, params, fields, what)
            except _Retryable as exc:
                reason = str(exc)
            if attempt + 1 < attempts:
                delay = self._backoff * 2**attempt
                if self._deadline is not None:
                    delay = min(delay, max(0.0, self._deadline - time.monotonic()))
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

    def _check_deadline(self, api_name: str, what: str, reason: str) -> None:
        """Raise once the deadline has passed; else bound the next request's HTTP timeout by it."""
        if self._deadline is None:
            return
        left = self._deadline - time.monotonic()
        if left <= 0:
            after = f" (last failure: {reason})" if reason else ""
            raise SourceError(
                self._scrub(
                    f"tushare {api_name} for {what}: the ingest's deadline passed{after}; "
                    "raise the deadline (ingest_deadline_s) or try again later"
                )
            )
        self._api._DataApi__timeout = max(0.1, min(self._timeout, left))  # name-mangled upstream

    def _call_once(
        self, api_name: str, params: Mapping[str, str], fields: str, what: str
    ) -> pd.DataFrame:
        import requests

        if self._limiter is not None:
            self._limiter()
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
