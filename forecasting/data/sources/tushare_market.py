"""The whole A-share market from tushare: listings, index members, and one call per day.

:class:`TushareMarketSource` is the :class:`~forecasting.data.sources.tushare.TushareSource`
(history by ``ts_code``, paged) plus what a market needs:

* :meth:`~TushareMarketSource.listings`: every stock of ``stock_basic`` (listed, delisted and
  paused: three calls, once per source object) as :class:`~forecasting.data.listings.Listing`;
* :meth:`~TushareMarketSource.index_members`: an index's constituents at each rebalance date in
  a span, from ``index_weight``;
* :meth:`~TushareMarketSource.fetch_day`: the bars of *every* stock on one trading day, from one
  ``daily`` and one ``adj_factor`` call by ``trade_date`` (tushare serves up to 6,000 rows a call,
  more than the ~5,300 listed A-shares; a full page asks for the rest with ``offset``).

The ingest uses :meth:`fetch_day` for the daily increment (see :mod:`forecasting.data.increment`)
and the per-ticker path for a ticker's history, so both land through the same validation and
upsert.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import pandas as pd

from forecasting.data.listings import Listing, board_of
from forecasting.data.sources.base import BAR_COLUMNS, Security, SourceError, empty_bars
from forecasting.data.sources.tushare import TushareSource
from forecasting.data.sources.tushare_client import TushareClient, parse_dates, require_columns

_BASIC_FIELDS = "ts_code,name,industry,market,list_date,delist_date,list_status"
_WEIGHT_FIELDS = "index_code,con_code,trade_date,weight"
_DAY_FIELDS = "ts_code,trade_date,open,high,low,close,vol,amount"
_ADJ_FIELDS = "ts_code,trade_date,adj_factor"
_NAME_FIELDS = "ts_code,name,start_date,end_date"

#: Rows per reply of ``daily``/``adj_factor`` by trade date and of ``index_weight``.
MARKET_PAGE_ROWS = 6000
#: stock_basic's list statuses: listed, delisted, paused listing.
LIST_STATUSES = ("L", "D", "P")
#: How far before a day the last rebalance is looked for: index_weight is published monthly.
REBALANCE_LOOKBACK = dt.timedelta(days=62)


class TushareMarketSource(TushareSource):
    """A :class:`TushareSource` that also serves the whole market (see the module docstring).

    Takes the same arguments; ``page_rows`` is the row cap of the whole-market calls (tests
    lower it to exercise the ``offset`` paging).
    """

    def __init__(self, token: str, *, page_rows: int = MARKET_PAGE_ROWS, **kw: object) -> None:
        super().__init__(token, **kw)  # type: ignore[arg-type]
        self._page_rows = page_rows
        self._listings: dict[str, Listing] | None = None

    @property
    def client(self) -> TushareClient:
        return self._client

    # ------------------------------------------------------------------------ reference

    def listings(self) -> dict[str, Listing]:
        """Every stock ``stock_basic`` knows, by ticker (fetched once per source object)."""
        if self._listings is None:
            out: dict[str, Listing] = {}
            for status in LIST_STATUSES:
                what = f"the stock list (list_status {status})"
                raw = self._client.query(
                    "stock_basic", {"list_status": status}, _BASIC_FIELDS, what
                )
                if raw.empty:
                    continue
                require_columns(raw, ("ts_code", "list_date"), "stock_basic", what)
                listed = _dates(raw, "list_date", what)
                delisted = _dates(raw, "delist_date", what)
                for i, row in enumerate(raw.to_dict("records")):
                    ticker = str(row["ts_code"]).strip().upper()
                    out[ticker] = Listing(
                        ticker=ticker,
                        name=_text(row.get("name")),
                        board=board_of(ticker, _text(row.get("market"))),
                        industry=_text(row.get("industry")),
                        list_date=listed[i],
                        delist_date=delisted[i],
                    )
            self._listings = out
        return dict(self._listings)

    def security(self, ticker: str) -> Security:
        base = super().security(ticker)
        known = (self._listings or {}).get(base.ticker)
        if known is None or base.name is not None:
            return base
        return Security(base.ticker, known.name, base.kind, base.exchange)

    def name_changes(self) -> list[tuple[str, str, dt.date, dt.date | None]]:
        """Every stock's names in time from ``namechange`` (``(ticker, name, start, end)``,
        end None while in use): whether a stock was ST on a past day. Paged with ``offset``."""
        what = "the names of every stock in time"
        raw = self._paged("namechange", {}, _NAME_FIELDS, what)
        if raw.empty:
            return []
        require_columns(raw, ("ts_code", "name", "start_date"), "namechange", what)
        starts = _dates(raw, "start_date", what)
        ends = _dates(raw, "end_date", what)
        out = []
        for i, (code, name) in enumerate(zip(raw["ts_code"], raw["name"], strict=True)):
            start = starts[i]
            if start is not None and _text(name) is not None:
                out.append((str(code).strip().upper(), str(_text(name)), start, ends[i]))
        return out

    def index_members(
        self, index_code: str, start: dt.date, end: dt.date
    ) -> dict[dt.date, list[str]]:
        """Constituents of ``index_code`` at each rebalance date from ``start - 62 days`` to
        ``end`` (so the members in force on ``start`` are included), oldest first."""
        code = index_code.strip().upper()
        what = f"the members of {code} from {start} to {end}"
        first = start - REBALANCE_LOOKBACK
        frames: list[pd.DataFrame] = []
        page_end = end
        while True:
            params = {"index_code": code, "start_date": _ymd(first), "end_date": _ymd(page_end)}
            page = self._client.query("index_weight", params, _WEIGHT_FIELDS, what)
            if page.empty:
                break
            require_columns(page, ("con_code", "trade_date"), "index_weight", what)
            days = parse_dates(page["trade_date"], "index_weight", what)
            page = page.assign(trade_date=days)
            if len(page) < self._page_rows:
                frames.append(page)
                break
            # Rows come newest first: the oldest date of a full page may be cut short, so its
            # rows are dropped here and asked for again with the next page, which ends there.
            oldest = min(days)
            if oldest == max(days):
                raise SourceError(
                    f"tushare index_weight for {what}: one rebalance date ({oldest}) has more "
                    f"rows than a reply holds ({self._page_rows}); raise page_rows"
                )
            frames.append(page[page["trade_date"] > oldest])
            page_end = oldest
        members: dict[dt.date, set[str]] = {}
        for frame in frames:
            for day, ticker in zip(frame["trade_date"], frame["con_code"], strict=True):
                members.setdefault(day, set()).add(str(ticker).strip().upper())
        if not members:
            raise SourceError(
                f"tushare index_weight has no members of {code} from {first} to {end}; check "
                "the index code (e.g. 000300.SH) and that the account may call index_weight"
            )
        return {d: sorted(members[d]) for d in sorted(members)}

    # ------------------------------------------------------------------------------ bars

    def fetch_day(self, day: dt.date) -> pd.DataFrame:
        """Normalized bars (:data:`BAR_COLUMNS`) of every stock that traded on ``day``, sorted
        by ticker: one ``daily`` and one ``adj_factor`` call (plus one per further 6,000 rows).
        Indices are not in ``daily``; they keep the per-ticker path."""
        what = f"every stock on {day}"
        raw = self._all_rows("daily", day, _DAY_FIELDS, what)
        if raw.empty:
            return empty_bars()
        require_columns(raw, ("ts_code", "trade_date", "close"), "daily", what)
        # Sorted as _to_bars sorts (stably, by date), so its rows line up with these tickers.
        raw = raw.sort_values("trade_date", kind="stable", ignore_index=True)
        bars = self._to_bars(raw, "", "daily", what)
        bars["ticker"] = raw["ts_code"].astype(str).str.strip().str.upper().to_numpy()
        adj = self._all_rows("adj_factor", day, _ADJ_FIELDS, what)
        if adj.empty:
            bars["adj_factor"] = float("nan")
        else:
            require_columns(adj, ("ts_code", "trade_date", "adj_factor"), "adj_factor", what)
            key = pd.MultiIndex.from_arrays(
                [
                    adj["ts_code"].astype(str).str.strip().str.upper(),
                    parse_dates(adj["trade_date"], "adj_factor", what),
                ]
            )
            factors = pd.Series(pd.to_numeric(adj["adj_factor"], errors="coerce").to_numpy(), key)
            factors = factors[~factors.index.duplicated(keep="first")]
            wanted = pd.MultiIndex.from_arrays([bars["ticker"], bars["trade_date"]])
            bars["adj_factor"] = factors.reindex(wanted).astype("float64").to_numpy()
        bars = bars.loc[:, list(BAR_COLUMNS)].sort_values(["ticker"], kind="stable")
        return bars.reset_index(drop=True)

    def _all_rows(self, api_name: str, day: dt.date, fields: str, what: str) -> pd.DataFrame:
        return self._paged(api_name, {"trade_date": _ymd(day)}, fields, what)

    def _paged(self, api_name: str, base: dict[str, str], fields: str, what: str) -> pd.DataFrame:
        """Every row of ``api_name`` for ``base``: pages of ``page_rows`` asked with ``offset``
        until one comes back short."""
        pages: list[pd.DataFrame] = []
        offset = 0
        while True:
            params = dict(base)
            if offset:
                params["offset"] = str(offset)
            page = self._client.query(api_name, params, fields, what)
            if page.empty:
                break
            pages.append(page)
            offset += len(page)
            if len(page) < self._page_rows:
                break
        if not pages:
            return pd.DataFrame()
        return pd.concat(pages, ignore_index=True).drop_duplicates().reset_index(drop=True)


def split_by_ticker(bars: pd.DataFrame, tickers: Iterable[str]) -> dict[str, pd.DataFrame]:
    """``bars`` of many tickers as one frame per ticker of ``tickers`` that has rows."""
    wanted = set(tickers)
    out: dict[str, pd.DataFrame] = {}
    for ticker, group in bars.groupby("ticker", sort=False):
        if ticker in wanted:
            out[str(ticker)] = group.reset_index(drop=True)
    return out


def _ymd(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


def _text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def _dates(raw: pd.DataFrame, column: str, what: str) -> list[dt.date | None]:
    """A column of YYYYMMDD dates, None where empty, parsed in one call."""
    if column not in raw.columns:
        return [None] * len(raw)
    text = raw[column].map(_text)
    present = text.notna().to_numpy()
    out: list[dt.date | None] = [None] * len(raw)
    if present.any():
        parsed = parse_dates(text[present], "stock_basic", what)
        for i, day in zip(present.nonzero()[0], parsed, strict=True):
            out[int(i)] = day
    return out
