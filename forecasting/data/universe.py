"""The universe: which tickers a command works on.

Three forms, parsed by :meth:`Universe.parse` from a setting or the CLI:

* an explicit list (``600519.SH,000001.SZ``), as always;
* ``all``: every listed A-share (tushare ``stock_basic``, list status L);
* ``index:000300.SH``: the members of an index (tushare ``index_weight``).

The last two are point in time: :func:`members_on` answers from the reference data and index
members stored by the ingest (``securities``, ``index_members``), so a backfill of a past day
works on the stocks listed, or the index members published, on that day, not today's.
:func:`tickers_to_ingest` fetches and stores them first, and returns every ticker the span needs.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import and_, delete, func, insert, select
from sqlalchemy.engine import Connection, Engine

from forecasting.data.increment import MarketSource
from forecasting.data.listings import load_listings, store_listings
from forecasting.data.schema import index_members
from forecasting.data.sources.base import PriceSource
from forecasting.errors import InputError

_INDEX = re.compile(r"^index:(\d{6}\.(SH|SZ|CSI|BJ))$", re.IGNORECASE)


@dataclass(frozen=True)
class Universe:
    """An explicit ticker list, ``all`` listed A-shares, or an index's members."""

    tickers: tuple[str, ...] = ()
    index_code: str | None = None
    all: bool = False

    @classmethod
    def parse(cls, spec: str | Sequence[str] | None) -> Universe:
        """``"all"``, ``"index:000300.SH"``, or tickers separated by commas or spaces (a
        sequence of them works too); an empty spec is an empty list."""
        if spec is None:
            items: list[str] = []
        elif isinstance(spec, str):
            items = [p for p in re.split(r"[,\s]+", spec.strip()) if p]
        else:
            items = [p.strip() for p in spec if p.strip()]
        special = [p for p in items if p.lower() == "all" or p.lower().startswith("index:")]
        if special and len(items) > 1:
            raise InputError(
                f"universe {' '.join(items)!r} mixes {special[0]!r} with tickers; give either "
                "a ticker list, 'all', or one 'index:CODE'"
            )
        if special:
            word = special[0]
            if word.lower() == "all":
                return cls(all=True)
            match = _INDEX.match(word)
            if match is None:
                raise InputError(
                    f"universe {word!r} is not an index code; write it like index:000300.SH"
                )
            return cls(index_code=match.group(1).upper())
        return cls(tickers=tuple(dict.fromkeys(p.upper() for p in items)))

    @property
    def kind(self) -> str:
        """``list``, ``all`` or ``index``."""
        return "all" if self.all else "index" if self.index_code else "list"

    def __str__(self) -> str:
        if self.all:
            return "all"
        if self.index_code:
            return f"index:{self.index_code}"
        return ",".join(self.tickers)


def members_on(conn: Connection, universe: Universe, day: dt.date) -> list[str]:
    """The tickers of ``universe`` on ``day``, from what the ingest stored: for ``all`` the
    stocks listed that day, for an index the members of its last rebalance on or before it."""
    if universe.kind == "list":
        return list(universe.tickers)
    if universe.all:
        listings = load_listings(conn)
        dated = {t: x for t, x in listings.items() if x.list_date is not None}
        if not dated:
            raise InputError(
                "universe 'all': no listings are stored; run `forecasting ingest --source "
                "tushare --universe all` first"
            )
        return sorted(t for t, x in dated.items() if x.listed_on(day))
    code = universe.index_code
    m = index_members.c
    last = conn.execute(
        select(func.max(m.trade_date)).where(m.index_code == code, m.trade_date <= day)
    ).scalar()
    if last is None:
        raise InputError(
            f"universe index:{code}: no members stored on or before {day}; run `forecasting "
            f"ingest --source tushare --universe index:{code}` with a start on or before {day}"
        )
    rows = conn.execute(
        select(m.ticker).where(m.index_code == code, m.trade_date == last).order_by(m.ticker)
    )
    return [r[0] for r in rows]


def tickers_to_ingest(
    engine: Engine,
    source: PriceSource,
    universe: Universe,
    *,
    start: dt.date | None,
    end: dt.date,
) -> list[str]:
    """Every ticker of ``universe`` at some point from ``start`` (default ``end``) to ``end``,
    after storing the reference data (and index members) that :func:`members_on` reads."""
    if universe.kind == "list":
        return list(universe.tickers)
    if not isinstance(source, MarketSource):
        raise InputError(
            f"universe {universe} needs a source that lists the market; use --source tushare "
            "(or give the tickers)"
        )
    first = start or end
    if universe.all:
        listings = source.listings()
        with engine.begin() as conn:
            store_listings(conn, listings.values())
        return sorted(
            t
            for t, x in listings.items()
            if (x.list_date is None or x.list_date <= end)
            and (x.delist_date is None or x.delist_date > first)
        )
    assert universe.index_code is not None
    by_date = source.index_members(universe.index_code, first, end)
    with engine.begin() as conn:
        store_index_members(conn, universe.index_code, by_date)
    in_force = [d for d in by_date if d <= first]
    days = [d for d in by_date if d > first] + ([max(in_force)] if in_force else [])
    return sorted({t for d in days for t in by_date[d]})


def ingest_tickers(
    engine: Engine,
    source: PriceSource,
    spec: str | Sequence[str] | None,
    *,
    start: dt.date | None,
    end: dt.date,
) -> list[str] | None:
    """The tickers an ingest of universe ``spec`` covers (see :func:`tickers_to_ingest`);
    ``None`` for an empty list (the source's own default). A market source given no universe
    is refused: it would be every listed A-share by accident."""
    universe = Universe.parse(spec)
    if universe.kind == "list" and not universe.tickers:
        if isinstance(source, MarketSource):
            raise InputError(
                "no tickers to ingest from tushare: give --tickers, or --universe all (every "
                "listed A-share) or --universe index:000300.SH (an index's members)"
            )
        return None
    return tickers_to_ingest(engine, source, universe, start=start, end=end)


def store_index_members(
    conn: Connection, index_code: str, by_date: Mapping[dt.date, Sequence[str]]
) -> int:
    """Store the members of each rebalance date; a date whose stored members differ is
    replaced whole, one that matches is left alone. Returns the dates written."""
    m = index_members.c
    written = 0
    for day, tickers in by_date.items():
        where = and_(m.index_code == index_code, m.trade_date == day)
        stored = {r[0] for r in conn.execute(select(m.ticker).where(where))}
        if stored == set(tickers):
            continue
        conn.execute(delete(index_members).where(where))
        conn.execute(
            insert(index_members),
            [
                {"index_code": index_code, "trade_date": day, "ticker": t}
                for t in sorted(set(tickers))
            ],
        )
        written += 1
    return written
