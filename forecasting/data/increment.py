"""The daily increment by trade date: two calls a day for the whole market.

Fetching each ticker's new days by ``ts_code`` costs two calls per ticker (``daily`` and
``adj_factor``): ~10,600 a day for the A-share market. tushare also serves both for *every*
stock of one trading day in one call, so when the ingest's plan is an increment (tickers with
stored history, asking only for the days after it) over fewer days than tickers,
:func:`by_date_source` fetches those days once for all of them and hands the ingest a source
that answers each ticker's ranges from them. The ingest then validates and upserts each ticker
exactly as on the per-ticker path, so both paths store the same rows.

It also refreshes the reference data in ``securities`` (:mod:`forecasting.data.listings`) from a
source that has a listing, once per ingest.
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import pandas as pd
from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from forecasting.data.calendar import TradingCalendar
from forecasting.data.listings import Listing, load_listings, store_listings, store_name_changes
from forecasting.data.prices import stored_spans
from forecasting.data.schema import securities
from forecasting.data.sources.base import PriceSource, Security, SourceError, empty_bars
from forecasting.data.sources.tushare_market import split_by_ticker

log = logging.getLogger(__name__)

Ranges = Sequence[tuple[dt.date, dt.date]]


@runtime_checkable
class MarketSource(PriceSource, Protocol):
    """A price source that also lists the market and serves all stocks of one day."""

    def listings(self) -> dict[str, Listing]:
        """Every security the source lists, by ticker."""
        ...

    def index_members(
        self, index_code: str, start: dt.date, end: dt.date
    ) -> dict[dt.date, list[str]]:
        """An index's members by rebalance date, including the one in force on ``start``."""
        ...

    def fetch_day(self, day: dt.date) -> pd.DataFrame:
        """Normalized bars of every stock that traded on ``day``."""
        ...


@dataclass(frozen=True)
class Need:
    """The days a ticker's increment needs: from ``start`` (after its last bar, or after the
    last day the market was checked for it) to ``end`` (capped by its delist date); none when
    ``end < start``."""

    ticker: str
    start: dt.date
    end: dt.date


def choose_by_date(
    needs: Sequence[Need], trading_days: Sequence[dt.date], reread: Sequence[dt.date] = ()
) -> tuple[list[Need], list[dt.date]]:
    """The tickers to serve by date, and the days to fetch for them.

    Those needing the fewest days come first, and as many are taken as make the fewest calls:
    two per day fetched (the ``reread`` days included, fetched again for every ticker served),
    against two per ticker left to the per-ticker path. When no choice beats the per-ticker
    path, nothing is served by date. ``trading_days`` must cover every need, oldest first.
    """

    def first_day(need: Need) -> dt.date:  # its first trading day; none: after all of them
        i = bisect.bisect_left(trading_days, need.start)
        if i < len(trading_days) and trading_days[i] <= need.end:
            return trading_days[i]
        return dt.date.max

    ordered = sorted(needs, key=first_day, reverse=True)
    best_k, best_cost = 0, 2 * len(ordered)
    for k, need in enumerate(ordered, start=1):
        first = first_day(need)
        n_days = len(trading_days) - bisect.bisect_left(trading_days, first)
        n_days += sum(1 for d in reread if d < first)
        cost = 2 * n_days + 2 * (len(ordered) - k)
        if cost < best_cost:
            best_k, best_cost = k, cost
    served = ordered[:best_k]
    days = [d for d in trading_days if any(n.start <= d <= n.end for n in served)]
    if served and reread:
        days = sorted({*days, *reread})
    return served, days


def by_date_source(
    engine: Engine,
    source: PriceSource,
    plans: Mapping[str, Ranges],
    calendar: TradingCalendar,
    reread_days: int = 0,
) -> PriceSource:
    """``source``, or — for a :class:`MarketSource` whose plan is cheaper by date — a source
    that serves the increments of ``plans`` from whole-market days fetched once.

    ``plans`` maps each ticker to the ranges the ingest will ask for. A ticker can be served by
    date when it has stored history, every range lies after it, and it is a stock (indices are
    not in ``daily``). Its days start after its last bar or after ``checked_through``, the last
    day a whole-market fetch found no bar for it (a suspension costs no call of its own), and
    stop before its delist date. The tickers needing the fewest days are served by date as long
    as that saves calls; the rest keep the per-ticker path. A day whose fetch fails fails the
    tickers that needed it, with its error.

    ``reread_days`` (calendar days, as on the per-ticker path) re-reads the trading days of
    that window up to the newest day already seen, for every ticker served (vendors revise
    recent bars): two more calls per trading day re-read.
    """
    if not isinstance(source, MarketSource):
        return source
    listings = _refresh_listings(engine, source)
    with engine.connect() as conn:
        stored = stored_spans(conn, list(plans))
        checked = _checked_through(conn, list(plans))
    needs = []
    for t, ranges in plans.items():
        if t not in stored or not ranges or source.security(t).kind != "stock":
            continue
        last = max(stored[t][1], checked.get(t) or stored[t][1])
        if any(a <= stored[t][1] for a, _ in ranges):
            continue  # a re-request or an earlier backfill: the per-ticker path compares it
        end = max(b for _, b in ranges)
        delisted = listings.get(t, Listing(t)).delist_date
        if delisted is not None:
            end = min(end, delisted - dt.timedelta(days=1))
        needs.append(Need(t, last + dt.timedelta(days=1), end))
    if not needs:
        return source
    span = calendar.trading_days(min(n.start for n in needs), max(n.end for n in needs))
    seen_last = max(n.start for n in needs) - dt.timedelta(days=1)
    reread = (
        calendar.trading_days(seen_last + dt.timedelta(days=1 - reread_days), seen_last)
        if reread_days > 0
        else []
    )
    served, days = choose_by_date(needs, span, reread)
    if not served:
        return source
    log.info(
        "ingest: the increment of %d tickers by trade date over %d trading days (%s)",
        len(served),
        len(days),
        f"{days[0]}..{days[-1]}" if days else "none needed",
    )
    parts: list[pd.DataFrame] = []
    wanted = {n.ticker for n in served}
    errors: dict[dt.date, str] = {}
    # The market was seen through the last day before the first day that had no rows at all
    # (not yet published, or failed): a ticker absent until then had no bar.
    seen: dt.date | None = None
    for day in days:
        try:
            frame = source.fetch_day(day)
        except SourceError as exc:
            errors[day] = str(exc)
            log.error("ingest: %s", exc)
            frame = empty_bars()
        if frame.empty:
            break
        seen = day
        parts.append(frame[frame["ticker"].isin(wanted)])
    fetched = pd.concat(parts, ignore_index=True) if parts else empty_bars()
    covered: dict[str, Ranges] = {n.ticker: plans[n.ticker] for n in served}
    if reread:
        for n in served:  # the re-read days, within the stored history
            start = max(stored[n.ticker][0], min(reread[0], n.start))
            covered[n.ticker] = [(start, max(b for _, b in plans[n.ticker]))]
    # Served tickers are checked through the days seen (one needing no day: through its need);
    # the rest through the days seen too, once their own call has answered for their range.
    checked = {n.ticker: n.end for n in served if not days}
    if seen is not None:
        checked.update({n.ticker: min(seen, n.end) for n in needs})
    return DayBatchSource(source, fetched, covered, errors, calendar, checked)


def _checked_through(conn: Connection, tickers: Sequence[str]) -> dict[str, dt.date]:
    c = securities.c
    rows = conn.execute(
        select(c.ticker, c.checked_through).where(
            c.ticker.in_(sorted(set(tickers))), c.checked_through.is_not(None)
        )
    )
    return {t: d for t, d in rows}


def _refresh_listings(engine: Engine, source: MarketSource) -> dict[str, Listing]:
    try:
        listings = source.listings()
    except SourceError as exc:
        # Reference data is refreshed again by the next ingest; prices must not wait for it.
        log.error("ingest: reference data not refreshed: %s", exc)
        with engine.connect() as conn:
            return load_listings(conn)
    with engine.begin() as conn:
        inserted, updated = store_listings(conn, listings.values())
    changes = getattr(source, "name_changes", None)
    if callable(changes):
        try:
            spans = changes()
        except SourceError as exc:
            log.error("ingest: names in time (ST spans) not refreshed: %s", exc)
        else:
            with engine.begin() as conn:
                n = store_name_changes(conn, spans)
            log.info("ingest: %d names in time (namechange) stored", n)
    log.info(
        "ingest: reference data of %d securities: %d new, %d changed",
        len(listings),
        inserted,
        updated,
    )
    return listings


class DayBatchSource:
    """A price source answering the increments it was built for from whole-market days, and
    everything else from the source underneath."""

    def __init__(
        self,
        source: PriceSource,
        bars: pd.DataFrame,
        covered: Mapping[str, Ranges],
        errors: Mapping[dt.date, str],
        calendar: TradingCalendar,
        checked: Mapping[str, dt.date],
    ) -> None:
        self.name = source.name
        self._source = source
        self.bars = bars.sort_values(["ticker", "trade_date"], kind="stable", ignore_index=True)
        self._by_ticker: dict[str, pd.DataFrame] | None = None
        self._covered = covered
        self._errors = errors
        self._calendar = calendar
        self._checked = checked

    def tickers(self) -> list[str]:
        return self._source.tickers()

    def covers(self, ticker: str) -> bool:
        """Whether ``ticker``'s increment is served from the whole-market days."""
        return ticker in self._covered

    def ranges(self, ticker: str) -> list[tuple[dt.date, dt.date]]:
        """The ranges served for ``ticker`` from the whole-market days (re-read days included)."""
        return list(self._covered.get(ticker, ()))

    def failed(self, start: dt.date, end: dt.date) -> str | None:
        """The error of the first day in ``start..end`` whose fetch failed; None if none did."""
        failed = [d for d in self._calendar.trading_days(start, end) if d in self._errors]
        return self._errors[failed[0]] if failed else None

    def security(self, ticker: str) -> Security:
        """The source's, with the day the market was checked through for the ticker (stored
        with its bars, in the same transaction, so only once they have landed)."""
        security = self._source.security(ticker)
        if ticker in self._checked:
            security = replace(security, checked_through=self._checked[ticker])
        return security

    def trading_calendar(self, start: dt.date, end: dt.date) -> pd.DataFrame | None:
        return self._source.trading_calendar(start, end)

    def fetch_bars(self, ticker: str, start: dt.date, end: dt.date) -> pd.DataFrame:
        ranges = self._covered.get(ticker, ())
        if not any(a <= start and end <= b for a, b in ranges):
            return self._source.fetch_bars(ticker, start, end)
        failed = self.failed(start, end) if self._errors else None
        if failed:
            raise SourceError(f"{ticker}: {failed}")
        if self._by_ticker is None:
            self._by_ticker = split_by_ticker(self.bars, self._covered)
        bars = self._by_ticker.get(ticker)
        if bars is None:
            return empty_bars()  # no bar on those days: suspended, or not yet traded
        days = bars["trade_date"]
        return bars[(days >= start) & (days <= end)].reset_index(drop=True)
