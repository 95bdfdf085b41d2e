"""What the database holds, per ticker: the ``forecasting prices`` listing.

A module of its own, with no pandas or numpy, so that ``forecasting prices`` answers without
loading them (they take a second or more to import); :mod:`forecasting.data.prices` re-exports
it.
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from forecasting.data.schema import prices, securities


class PriceSummaryRow(NamedTuple):
    """One line of the ``prices`` command: what is stored for a ticker."""

    ticker: str
    kind: str | None
    first_date: dt.date
    last_date: dt.date
    rows: int


def price_summary(conn: Connection) -> list[PriceSummaryRow]:
    """Per ticker: kind (from ``securities``), first and last stored date, row count."""
    c = prices.c
    query = (
        select(
            c.ticker,
            securities.c.kind,
            func.min(c.trade_date),
            func.max(c.trade_date),
            func.count(),
        )
        .select_from(prices.outerjoin(securities, securities.c.ticker == c.ticker))
        .group_by(c.ticker, securities.c.kind)
        .order_by(c.ticker)
    )
    return [PriceSummaryRow(t, k, lo, hi, int(n)) for t, k, lo, hi, n in conn.execute(query)]
