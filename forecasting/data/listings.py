"""Reference data of listed securities: name, board, industry, list and delist dates.

The source's listing (tushare ``stock_basic``) is parsed into :class:`Listing` records once and
stored in ``securities`` by :func:`store_listings`, which writes only what changed, so a daily
refresh of the whole market's ~5,300 rows costs one read and a few writes. The pipeline reads
them back (:func:`load_listings`) to stop forecasting a delisted ticker and to tell a suspension
from a stale feed (:mod:`forecasting.pipeline.listings`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection

from forecasting.data.price_limits import Board, is_st
from forecasting.data.price_limits import board_of as code_board
from forecasting.data.schema import name_changes, securities

#: One name of a stock over a span: ``(ticker, name, start_date, end_date)``, end None: still.
NameSpan = tuple[str, str, dt.date, dt.date | None]


def store_name_changes(conn: Connection, spans: Iterable[NameSpan]) -> int:
    """Replace the stored names in time of every ticker in ``spans`` with ``spans``."""
    rows = {(t, s, n): e for t, n, s, e in spans}
    tickers = sorted({t for t, _, _ in rows})
    for i in range(0, len(tickers), 2000):
        chunk = tickers[i : i + 2000]
        conn.execute(delete(name_changes).where(name_changes.c.ticker.in_(chunk)))
    if rows:
        conn.execute(
            insert(name_changes),
            [
                {"ticker": t, "start_date": s, "name": n, "end_date": e}
                for (t, s, n), e in rows.items()
            ],
        )
    return len(rows)


def st_spans(
    conn: Connection, tickers: Sequence[str]
) -> dict[str, list[tuple[dt.date, dt.date | None]]]:
    """The spans in which each of ``tickers`` carried an ST or *ST name (tickers without one
    are absent)."""
    c = name_changes.c
    out: dict[str, list[tuple[dt.date, dt.date | None]]] = {}
    names = sorted(set(tickers))
    for i in range(0, len(names), 2000):
        rows = conn.execute(
            select(c.ticker, c.name, c.start_date, c.end_date)
            .where(c.ticker.in_(names[i : i + 2000]))
            .order_by(c.ticker, c.start_date)
        )
        for ticker, name, start, end in rows:
            if is_st(name):
                out.setdefault(ticker, []).append((start, end))
    return out


# tushare's ``market`` field of stock_basic, as the boards of forecasting.data.price_limits
# (whose limits differ by board); CDR depositary receipts trade on the main board.
_MARKET_BOARDS: dict[str, Board] = {
    "主板": "main",
    "中小板": "main",  # merged into the SZSE main board in 2021
    "CDR": "main",
    "创业板": "chinext",
    "科创板": "star",
    "北交所": "bse",
}


@dataclass(frozen=True)
class Listing:
    """One security as its exchange lists it."""

    ticker: str
    name: str | None = None
    board: str | None = None  # main | chinext | star | bse (forecasting.data.price_limits)
    industry: str | None = None
    list_date: dt.date | None = None
    delist_date: dt.date | None = None

    def listed_on(self, day: dt.date) -> bool:
        """Listed on ``day``: on or after its list date and before its delist date."""
        if self.list_date is not None and day < self.list_date:
            return False
        return self.delist_date is None or day < self.delist_date


def board_of(ticker: str, market: str | None = None) -> Board:
    """The board of a stock: from the source's market name when it sent one, else from its
    code (:func:`forecasting.data.price_limits.board_of`)."""
    if market and market.strip() in _MARKET_BOARDS:
        return _MARKET_BOARDS[market.strip()]
    return code_board(ticker)


_FIELDS = ("name", "board", "industry", "list_date", "delist_date")


def store_listings(conn: Connection, listings: Iterable[Listing]) -> tuple[int, int]:
    """Insert or update the ``securities`` rows of ``listings``; returns (inserted, updated).

    Rows that match what is stored are not written. ``kind`` stays as it is (a stock listing
    never turns an index into a stock); new rows are stocks. The caller owns the transaction.
    """
    # Imported here: the sources package imports this module (tushare_market builds Listings).
    from forecasting.data.sources.base import exchange_of

    wanted = {x.ticker: x for x in listings}
    if not wanted:
        return 0, 0
    c = securities.c
    stored = {
        row[0]: tuple(row[1:])
        for row in conn.execute(select(c.ticker, *(c[f] for f in _FIELDS), c.exchange))
    }
    new, changed = [], []
    for ticker, x in wanted.items():
        values = {f: getattr(x, f) for f in _FIELDS}
        row = stored.get(ticker)
        if row is None:
            new.append(
                {"ticker": ticker, "kind": "stock", "exchange": exchange_of(ticker), **values}
            )
        elif row[: len(_FIELDS)] != tuple(values.values()):
            changed.append({"b_ticker": ticker, **values})
    if new:
        conn.execute(insert(securities), new)
    if changed:
        conn.execute(
            update(securities)
            .where(c.ticker == bindparam("b_ticker"))
            .values({f: bindparam(f) for f in _FIELDS}),
            changed,
        )
    return len(new), len(changed)


def load_listings(conn: Connection, tickers: Sequence[str] | None = None) -> dict[str, Listing]:
    """The stored reference data of ``tickers`` (default: every security), by ticker; a ticker
    without a ``securities`` row is absent."""
    c = securities.c
    query = select(c.ticker, *(c[f] for f in _FIELDS))
    if tickers is not None:
        query = query.where(c.ticker.in_(sorted(set(tickers))))
    return {row[0]: Listing(*row) for row in conn.execute(query)}
