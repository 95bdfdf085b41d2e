"""Scopes and the universe: which tickers a run covers, which model units cover them, and the
as-of day a run resolves to."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Mapping, Sequence

from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

from forecasting.data.schema import prices, securities
from forecasting.data.universe import Universe, members_on
from forecasting.pipeline.config import RunSettings

log = logging.getLogger(__name__)


GLOBAL = "global"


# --------------------------------------------------------------------------------------------
# Scopes and universe


def scope_name(lineage: str, unit: str) -> str:
    """``global`` / ``600519.SH`` for the live lineage; prefixed for backfill lineages, whose
    models must never be mixed with live ones (they are trained on different cutoffs)."""
    return unit if lineage == "live" else f"{lineage}/{unit}"


def lineage_of(scope: str) -> str:
    """The lineage a model scope belongs to (the inverse of :func:`scope_name`)."""
    return scope.rsplit("/", 1)[0] if "/" in scope else "live"


def universe(
    conn: Connection,
    settings: RunSettings,
    tickers: Sequence[str] | None = None,
    day: dt.date | None = None,
) -> list[str]:
    """The tickers to work on: the explicit list, else the configured universe (``all`` and
    ``index:CODE`` as of ``day``, see :func:`forecasting.data.universe.members_on`), else every
    ticker with prices."""
    if tickers:
        return sorted({t.upper() for t in tickers})
    configured = Universe.parse(settings.universe or settings.tickers)
    if configured.kind != "list":
        return members_on(conn, configured, day or dt.date.max)
    if configured.tickers:
        return sorted(configured.tickers)
    return sorted(r[0] for r in conn.execute(select(prices.c.ticker).distinct()))


def scoped_lineage(
    conn: Connection, settings: RunSettings, lineage: str, tickers: Sequence[str] | None
) -> str:
    """The lineage of a run restricted to ``tickers``: ``lineage`` itself when they are the
    whole universe (or none are given), else one of its own, ``live[600519.SH]`` (one ticker)
    or ``live[3:1a2b3c4d]`` (several), so that a restricted run never completes the day for
    everyone nor trains or replaces the lineage's model on a subset. A lineage that is already
    restricted stays as it is."""
    if not tickers or lineage.endswith("]"):
        return lineage
    chosen = universe(conn, settings, tickers)
    if chosen == universe(conn, settings):
        return lineage
    if len(chosen) == 1:
        return f"{lineage}[{chosen[0]}]"
    digest = hashlib.sha1(",".join(chosen).encode()).hexdigest()[:8]
    return f"{lineage}[{len(chosen)}:{digest}]"


def scope_units(settings: RunSettings, tickers: Sequence[str]) -> dict[str, list[str]]:
    """Model unit -> the tickers it covers: one global model, or one model per ticker."""
    if settings.model.per_ticker:
        return {t: [t] for t in tickers}
    return {GLOBAL: list(tickers)}


def resolve_as_of(
    engine: Engine, today: dt.date, tickers: Sequence[str] | None = None
) -> dt.date | None:
    """The latest trading day with prices on or before ``today`` (Asia/Shanghai date)."""
    stmt = select(func.max(prices.c.trade_date)).where(prices.c.trade_date <= today)
    if tickers:
        stmt = stmt.where(prices.c.ticker.in_(list(tickers)))
    with engine.connect() as conn:
        return conn.execute(stmt).scalar()


def lookback_start(end: dt.date, trading_days: int) -> dt.date:
    # Calendar days covering `trading_days` sessions, with room for holidays and suspensions.
    return end - dt.timedelta(days=int(trading_days * 1.5) + 30)


def input_skips(
    conn: Connection,
    tickers: Sequence[str],
    as_of: dt.date,
    ingest_errors: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The tickers a run as of ``as_of`` must not forecast because of their inputs, with the
    reason: ``ingest failed: ...`` (this run's ingest of it failed), or ``stale since D`` (its
    newest price is older than the as-of day, and no listing data explains why). A ticker with
    listing data (a ``list_date``) is left to the listing rules of the forecast step, which
    name a delisting or a suspension (:mod:`forecasting.pipeline.listings`); one without any
    price by then is left to the forecast step too, which says so."""
    errors = dict(ingest_errors or {})
    last: dict[str, dt.date] = {}
    listed: set[str] = set()
    names = list(tickers)
    for i in range(0, len(names), 500):
        chunk = names[i : i + 500]
        newest = (
            select(prices.c.ticker, func.max(prices.c.trade_date))
            .where(prices.c.ticker.in_(chunk), prices.c.trade_date <= as_of)
            .group_by(prices.c.ticker)
        )
        last.update((t, d) for t, d in conn.execute(newest))
        known = select(securities.c.ticker).where(
            securities.c.ticker.in_(chunk), securities.c.list_date.is_not(None)
        )
        listed.update(conn.execute(known).scalars())
    out: dict[str, str] = {}
    for t in names:
        if t in errors:
            out[t] = f"ingest failed: {errors[t]}"
        elif t in last and last[t] < as_of and t not in listed:
            out[t] = f"stale since {last[t]}"
    return out
