"""Scopes and the universe: which tickers a run covers, which model units cover them, and the
as-of day a run resolves to."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

from forecasting.data.schema import prices
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
