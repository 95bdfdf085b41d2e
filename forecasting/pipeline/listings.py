"""Listing events in a day's run: who is delisted, suspended, or newly listed on the as-of day.

Decided from the reference data the ingest stores (:mod:`forecasting.data.listings`) and each
ticker's bars, for tickers that have reference data (a listing date). Others (a CSV or demo
source) keep the plain stale-price rule of the forecast step.

* **Delisted**: on or after its delist date a ticker is no longer forecast, whatever its last
  price was.
* **Suspended**: a listed ticker without a bar on the as-of day, a day the exchange traded, is
  skipped "suspended since D", D being its first trading day without a bar.
* **Newly listed**: a ticker whose stored history starts at its listing needs only
  ``input_len + 1`` closes (the model's input), not the usual minimum history: the market has
  no more history of it to give.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from forecasting.data.calendar import TradingCalendar
from forecasting.data.listings import Listing, load_listings
from forecasting.data.schema import prices


@dataclass(frozen=True)
class ListingEvents:
    """The tickers to skip (with why) and those forecast from their listing on."""

    skipped: dict[str, str] = field(default_factory=dict)
    newly_listed: frozenset[str] = frozenset()


def listing_events(
    listings: Mapping[str, Listing],
    as_of: dt.date,
    last_bars: Mapping[str, dt.date],
    first_bars: Mapping[str, dt.date],
    calendar: TradingCalendar,
) -> ListingEvents:
    """The events on ``as_of`` of the tickers in ``last_bars`` (their last bar on or before it);
    ``first_bars`` holds their first stored bar. Pure: the caller reads the inputs."""
    skipped: dict[str, str] = {}
    new: set[str] = set()
    for ticker, last in last_bars.items():
        x = listings.get(ticker)
        if x is None or x.list_date is None:
            continue
        if x.delist_date is not None and as_of >= x.delist_date:
            skipped[ticker] = (
                f"{ticker}: delisted on {x.delist_date} (last price {last}); not forecast after "
                "its delist date"
            )
            continue
        if last < as_of:
            missed = calendar.trading_days(last + dt.timedelta(days=1), as_of)
            if missed:
                skipped[ticker] = (
                    f"{ticker}: suspended since {missed[0]} (no bar on {len(missed)} trading "
                    f"day{'s' if len(missed) > 1 else ''} through {as_of}); it is forecast again "
                    "once it trades"
                )
                continue
        first = first_bars.get(ticker)
        if first is not None and first <= _first_session(x.list_date, calendar):
            new.add(ticker)
    return ListingEvents(skipped, frozenset(new))


def _first_session(list_date: dt.date, calendar: TradingCalendar) -> dt.date:
    return list_date if calendar.is_trading_day(list_date) else calendar.next_trading_day(list_date)


def load_listing_events(
    conn: Connection,
    tickers: Sequence[str],
    as_of: dt.date,
    last_bars: Mapping[str, dt.date],
    calendar: TradingCalendar,
) -> ListingEvents:
    """:func:`listing_events` with the listings and first bars of ``tickers`` read from the
    database (two queries)."""
    listings = load_listings(conn, tickers)
    if not any(x.list_date for x in listings.values()):
        return ListingEvents()
    c = prices.c
    rows = conn.execute(
        select(c.ticker, func.min(c.trade_date))
        .where(c.ticker.in_(sorted(listings)))
        .group_by(c.ticker)
    )
    first: dict[str, dt.date] = {t: d for t, d in rows}
    wanted = {t: d for t, d in last_bars.items() if t in listings}
    return listing_events(listings, as_of, wanted, first, calendar)
