"""Where each ticker's prices come from: the source recorded per ticker in ``securities``, and
the rule that keeps the synthetic demo market out of real data.

The daily ingest fetches each ticker from its own source (a tushare ticker from tushare, a
file-fed one from its files), so no configured default ever writes one source's bars into
another's series. The demo market writes only into a database of its own: never into a
database that holds prices from any other source.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection

from forecasting.data.schema import prices, securities
from forecasting.data.source_choice import HOW_TO_SET as HOW_TO_SET
from forecasting.data.source_choice import chosen_source as chosen_source
from forecasting.errors import InputError

DEMO = "demo"


def record_source(conn: Connection, ticker: str, source: str) -> None:
    """Remember ``source`` as the source of ``ticker`` (its ``securities`` row exists)."""
    conn.execute(update(securities).where(securities.c.ticker == ticker).values(source=source))


def check_demo_target(conn: Connection) -> None:
    """Refuse to write demo bars into a database that holds prices from another source."""
    others = (
        conn.execute(
            select(prices.c.source, func.count(prices.c.ticker.distinct()))
            .where(prices.c.source != DEMO)
            .group_by(prices.c.source)
            .order_by(prices.c.source)
        )
        .tuples()
        .all()
    )
    if others:
        held = ", ".join(f"{n} ticker(s) from {src}" for src, n in others)
        raise InputError(
            f"the demo market writes only into a database of its own, and this one holds {held}; "
            "point FORECASTING_DATABASE_URL at another database for the demo"
        )


def sources_of(conn: Connection, tickers: Sequence[str]) -> dict[str, str]:
    """Ticker -> its recorded source; a ticker ingested before sources were recorded gets the
    source of its newest price row; one never ingested is absent."""
    names = list(tickers)
    out: dict[str, str] = {}
    for i in range(0, len(names), 500):
        chunk = names[i : i + 500]
        recorded = select(securities.c.ticker, securities.c.source).where(
            securities.c.ticker.in_(chunk), securities.c.source.is_not(None)
        )
        out.update((t, s) for t, s in conn.execute(recorded))
        rest = [t for t in chunk if t not in out]
        if rest:
            newest = (
                select(prices.c.ticker, func.max(prices.c.trade_date).label("d"))
                .where(prices.c.ticker.in_(rest))
                .group_by(prices.c.ticker)
                .subquery()
            )
            rows = conn.execute(
                select(prices.c.ticker, prices.c.source).join(
                    newest,
                    (newest.c.ticker == prices.c.ticker) & (newest.c.d == prices.c.trade_date),
                )
            )
            out.update((t, s) for t, s in rows)
    return out
