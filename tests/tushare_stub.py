"""A local HTTP server that speaks tushare pro's wire format, for tests of the real client.

``tushare.pro.client.DataApi`` POSTs ``{api_name, token, params, fields}`` as JSON to
``{url}/{api_name}`` and expects ``{code, msg, data: {fields, items}}``. This stub answers
``daily``, ``index_daily``, ``adj_factor``, ``trade_cal`` (and the market calls: ``stock_basic``, ``index_weight``, ``namechange``) from deterministic data, newest
first, capped at ``row_limit`` rows per call like the real service; it can be told to answer the
next calls with the rate-limit message or an HTTP error, rejects any token but its own, and
records every request it received.

Faults a test injects (each shows how a real vendor misbehaves): ``extra`` rows sent with every
reply for a ticker whatever the dates asked (a future-dated row, a row under another
``ts_code``, an ``inf`` close); ``revise`` changes a stored day's values (a vendor correction);
``known`` limits the tickers it has data for (an unknown code gets an empty reply);
``delay_next`` makes replies hang (a deadline); ``row_limit`` below the client's assumed page
size (a short page that must not end the paging).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

RATE_LIMIT_MESSAGE = "抱歉，您每分钟最多访问该接口500次，权限的具体详情访问：https://tushare.pro/document/1?doc_id=108。"
BAD_TOKEN_MESSAGE = "您的token不对，请确认。"
STUB_INDICES = frozenset({"000300.SH", "000905.SH", "000852.SH", "000016.SH", "000001.SH"})
#: Bars from this trading-day index on carry adj_factor 2.0 (a 1:1 bonus issue), before it 1.0.
SPLIT_INDEX = 100


def _closed(day: dt.date) -> bool:
    """Weekends plus a few fixed SSE-style holidays, so the calendar is not just weekdays."""
    return (
        day.weekday() >= 5
        or (day.month, day.day) in {(1, 1), (5, 1), (5, 2), (5, 3)}
        or (day.month == 10 and day.day <= 7)
    )


# -- the whole market: reference data, index members, one call per trading day -----------------

#: Calls answered from the market handlers below rather than per ticker.
MARKET_APIS = frozenset({"stock_basic", "index_weight", "namechange"})
#: Calls that, given ``trade_date``, answer for every stock of that day.
BY_DATE_APIS = frozenset({"daily", "adj_factor"})


@dataclass
class StubListing:
    """One stock as ``stock_basic`` lists it; it trades from ``list_date`` up to the day before
    ``delist_date``, except on the days of its ``suspended`` spans (inclusive)."""

    ticker: str
    name: str
    market: str = "主板"  # tushare's board names: 主板, 创业板, 科创板, 北交所
    industry: str | None = "银行"
    list_date: dt.date | None = None
    delist_date: dt.date | None = None
    suspended: tuple[tuple[dt.date, dt.date], ...] = ()


@dataclass
class StubMarket:
    """The stub's market: listings, index members by rebalance date, and optionally the rows of
    a day from elsewhere (a benchmark's generated market) instead of :meth:`TushareStub.bars`."""

    listings: dict[str, StubListing] = field(default_factory=dict)
    index_weights: dict[str, dict[dt.date, list[str]]] = field(default_factory=dict)
    day_rows: Callable[[dt.date], list[dict[str, Any]]] | None = None
    day_row_limit: int = 6000
    #: ``namechange`` rows: ``(ticker, name, start, end)``, end None while in use.
    name_changes: list[tuple[str, str, dt.date, dt.date | None]] = field(default_factory=list)


class _MarketStub:
    """The whole-market handlers of :class:`TushareStub`: ``stock_basic``, ``index_weight`` and
    ``daily`` / ``adj_factor`` by ``trade_date`` (paged with ``offset`` past the row limit)."""

    first: dt.date
    last: dt.date
    listed: dict[str, dt.date]
    requests: list[dict[str, Any]]
    _lock: threading.Lock

    # Provided by TushareStub, the class this one is mixed into: one ticker's bars.
    bars: Callable[[str], list[dict[str, Any]]]

    @property
    def market(self) -> StubMarket:
        """The market this stub serves; set its fields, or assign a new one."""
        market = self.__dict__.get("_market")
        if market is None:
            market = self.__dict__["_market"] = StubMarket()
        return market  # type: ignore[no-any-return]

    @market.setter
    def market(self, value: StubMarket) -> None:
        self.__dict__["_market"] = value

    def list_stocks(self, *listings: StubListing) -> None:
        """Add ``listings`` to the market (their list dates also bound :meth:`bars`)."""
        for listing in listings:
            self.market.listings[listing.ticker] = listing

    def call_counts(self) -> Counter[str]:
        """Requests received per ``api_name``: the call budget as the server saw it."""
        with self._lock:
            return Counter(str(r.get("api_name")) for r in self.requests)

    def trades_on(self, ticker: str, day: dt.date) -> bool:
        """Whether ``ticker`` has a bar on ``day`` (listed, not yet delisted, not suspended)."""
        listing = self.market.listings.get(ticker)
        if listing is None:
            return True
        if listing.list_date is not None and day < listing.list_date:
            return False
        if listing.delist_date is not None and day >= listing.delist_date:
            return False
        return not any(a <= day <= b for a, b in listing.suspended)

    def _status(self, listing: StubListing) -> str:
        return "D" if listing.delist_date is not None and listing.delist_date <= self.last else "L"

    def _answer_market(self, api_name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        if api_name == "stock_basic":
            wanted = str(params.get("list_status") or "L")
            return [
                {
                    "ts_code": s.ticker,
                    "symbol": s.ticker[:6],
                    "name": s.name,
                    "area": None,
                    "industry": s.industry,
                    "market": s.market,
                    "exchange": {"SH": "SSE", "SZ": "SZSE", "BJ": "BSE"}[s.ticker[-2:]],
                    "list_date": _ymd(s.list_date or self.listed.get(s.ticker) or self.first),
                    "delist_date": _ymd(s.delist_date),
                    "list_status": self._status(s),
                }
                for s in sorted(self.market.listings.values(), key=lambda s: s.ticker)
                if self._status(s) == wanted
            ]
        if api_name == "namechange":
            rows = [
                {
                    "ts_code": t,
                    "name": name,
                    "start_date": _ymd(start),
                    "end_date": _ymd(end),
                    "ann_date": _ymd(start),
                    "change_reason": "ST" if "ST" in name else "撤销ST",
                }
                for t, name, start, end in self.market.name_changes
                if not params.get("ts_code") or params["ts_code"] == t
            ]
            offset = int(params.get("offset") or 0)
            return rows[offset : offset + self.market.day_row_limit]
        if api_name == "index_weight":
            code = str(params.get("index_code") or "")
            start = str(params.get("start_date") or params.get("trade_date") or "00000000")
            end = str(params.get("end_date") or params.get("trade_date") or "99999999")
            rows = [
                {"index_code": code, "con_code": t, "trade_date": _ymd(day), "weight": 1.0}
                for day, members in self.market.index_weights.get(code, {}).items()
                if start <= _ymd(day) <= end
                for t in members
            ]
            rows.sort(key=lambda r: (r["trade_date"], r["con_code"]), reverse=True)
            return rows[: self.market.day_row_limit]
        day = dt.datetime.strptime(str(params["trade_date"]), "%Y%m%d").date()
        if self.market.day_rows is not None:
            rows = self.market.day_rows(day)
        else:
            rows = [
                r
                for t in sorted(self.market.listings)
                if t not in STUB_INDICES
                for r in self.bars(t)
                if r["trade_date"] == _ymd(day)
            ]
        offset = int(params.get("offset") or 0)
        return rows[offset : offset + self.market.day_row_limit]


def _ymd(day: dt.date | None) -> str | None:
    return None if day is None else day.strftime("%Y%m%d")


class TushareStub(_MarketStub):
    """A tushare pro look-alike on ``127.0.0.1`` (a free port); use as a context manager.

    Args:
        token: the one token it accepts.
        row_limit: rows per reply at most (newest first), like tushare's 6000 for ``daily``.
        first, last: the span its data covers.
        listed: first trading date per ticker, for tickers listed after ``first``.
    """

    def __init__(
        self,
        token: str = "stub-token-5f3a9c0e1d2b4a6f8e7d",
        *,
        row_limit: int = 50,
        first: dt.date = dt.date(2019, 1, 1),
        last: dt.date = dt.date(2020, 6, 30),
        listed: dict[str, dt.date] | None = None,
    ) -> None:
        self.token = token
        self.row_limit = row_limit
        self.first = first
        self.last = last
        self.listed = dict(listed or {})
        self.requests: list[dict[str, Any]] = []
        #: Rows added to every daily/adj_factor reply for a ticker, whatever the dates asked.
        self.extra: dict[str, list[dict[str, Any]]] = {}
        #: Values that replace a day's generated ones: ``{(ticker, "YYYYMMDD"): {"close": 1.0}}``.
        self.revise: dict[tuple[str, str], dict[str, Any]] = {}
        #: When set, only these tickers have data; any other gets a code-0 reply with no rows.
        self.known: set[str] | None = None
        self._delays: list[float] = []
        #: When set, the bad-token reply quotes the token it received (a careless server).
        self.echo_token = False
        self._rate_limited = 0
        self._http_errors: list[int] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------- control

    @property
    def url(self) -> str:
        assert self._server is not None, "start the stub first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/dataapi"

    def rate_limit_next(self, calls: int) -> None:
        """Answer the next ``calls`` requests with tushare's per-minute rate-limit message."""
        with self._lock:
            self._rate_limited = calls

    def http_error_next(self, calls: int, status: int = 500) -> None:
        """Answer the next ``calls`` requests with HTTP ``status`` and a non-JSON body."""
        with self._lock:
            self._http_errors.extend([status] * calls)

    def delay_next(self, calls: int, seconds: float) -> None:
        """Hold each of the next ``calls`` replies for ``seconds`` (a hanging server)."""
        with self._lock:
            self._delays.extend([seconds] * calls)

    def clear_delays(self) -> None:
        """Answer at once again."""
        with self._lock:
            self._delays.clear()

    def calls(self, api_name: str | None = None) -> list[dict[str, Any]]:
        """Recorded request bodies, optionally only those for ``api_name``."""
        with self._lock:
            return [r for r in self.requests if api_name is None or r.get("api_name") == api_name]

    # ---------------------------------------------------------------------------- data

    def trading_days(self) -> list[dt.date]:
        days = []
        day = self.first
        while day <= self.last:
            if not _closed(day):
                days.append(day)
            day += dt.timedelta(days=1)
        return days

    def bars(self, ticker: str) -> list[dict[str, Any]]:
        """The full deterministic history of ``ticker``, oldest first, in tushare's columns."""
        base = 10.0 + zlib.crc32(ticker.encode()) % 50
        listed = self.listed.get(ticker, self.first)
        rows = []
        for i, day in enumerate(self.trading_days()):
            if day < listed or not self.trades_on(ticker, day):
                continue
            close = round(base + 0.01 * i + 0.1 * (i % 7), 2)
            vol = 1000.0 + i
            rows.append(
                {
                    "ts_code": ticker,
                    "trade_date": day.strftime("%Y%m%d"),
                    "open": round(close - 0.05, 2),
                    "high": round(close + 0.2, 2),
                    "low": round(close - 0.25, 2),
                    "close": close,
                    "pre_close": None,
                    "change": None,
                    "pct_chg": None,
                    "vol": vol,
                    "amount": round(vol * close / 10, 3),
                    "adj_factor": 1.0 if i < SPLIT_INDEX else 2.0,
                }
            )
            rows[-1].update(self.revise.get((ticker, rows[-1]["trade_date"]), {}))
        return rows

    def _answer(self, api_name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        start = str(params.get("start_date") or self.first.strftime("%Y%m%d"))
        end = str(params.get("end_date") or self.last.strftime("%Y%m%d"))
        rows: list[dict[str, Any]] = []
        if api_name == "trade_cal":
            day = self.first
            while day <= self.last:
                rows.append(
                    {
                        "exchange": params.get("exchange") or "SSE",
                        "cal_date": day.strftime("%Y%m%d"),
                        "is_open": 0 if _closed(day) else 1,
                        "pretrade_date": None,
                    }
                )
                day += dt.timedelta(days=1)
            key = "cal_date"
        elif api_name in MARKET_APIS or (api_name in BY_DATE_APIS and "trade_date" in params):
            return self._answer_market(api_name, params)
        elif api_name in ("daily", "index_daily", "adj_factor"):
            ticker = str(params.get("ts_code", ""))
            is_index = ticker in STUB_INDICES
            wanted = api_name == "index_daily" if is_index else api_name != "index_daily"
            if self.known is not None and ticker not in self.known:
                wanted = False
            rows = self.bars(ticker) if wanted and ticker else []
            key = "trade_date"
        else:
            raise KeyError(api_name)
        rows = [r for r in rows if start <= str(r[key]) <= end]
        if api_name != "trade_cal":
            rows += [dict(r) for r in self.extra.get(str(params.get("ts_code", "")), [])]
        rows.sort(key=lambda r: str(r[key]), reverse=True)  # tushare sends newest first
        return rows[: self.row_limit]

    # -------------------------------------------------------------------------- server

    def _handle(self, path: str, body: bytes) -> tuple[int, bytes]:
        try:
            request = json.loads(body)
        except ValueError:
            return 400, b"bad request"
        with self._lock:
            self.requests.append({**request, "path": path})
            if self._http_errors:
                return self._http_errors.pop(0), b"<html>Internal Server Error</html>"
            rate_limited = self._rate_limited > 0
            self._rate_limited -= 1 if rate_limited else 0
            delay = self._delays.pop(0) if self._delays else 0.0
        if delay:
            time.sleep(delay)
        api_name = str(request.get("api_name", ""))
        if request.get("token") != self.token:
            quoted = f" ({request.get('token')})" if self.echo_token else ""
            return 200, _reply(40101, BAD_TOKEN_MESSAGE + quoted)
        if rate_limited:
            return 200, _reply(40203, RATE_LIMIT_MESSAGE)
        if not path.endswith("/" + api_name):
            return 200, _reply(40102, f"请求路径与接口名不符: {path}")
        try:
            rows = self._answer(api_name, dict(request.get("params") or {}))
        except KeyError:
            return 200, _reply(40102, f"请指定正确的接口名: {api_name}")
        fields = [f for f in str(request.get("fields") or "").split(",") if f]
        columns = [f for f in fields if not rows or f in rows[0]] if fields else None
        if columns is None:
            columns = list(rows[0]) if rows else ["ts_code", "trade_date"]
        items = [[row.get(c) for c in columns] for row in rows]
        return 200, _reply(0, "", {"fields": columns, "items": items, "has_more": False})

    def __enter__(self) -> TushareStub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                status, payload = stub._handle(self.path, self.rfile.read(length))
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _reply(code: int, msg: str, data: dict[str, Any] | None = None) -> bytes:
    return json.dumps(
        {"request_id": "stub", "code": code, "msg": msg, "data": data}, ensure_ascii=False
    ).encode("utf-8")


@contextmanager
def running_stub(**kwargs: Any) -> Iterator[TushareStub]:
    """``with running_stub(row_limit=50) as stub: ...``"""
    with TushareStub(**kwargs) as stub:
        yield stub
