"""Forecast horizons 1..H for the eligible tickers of a run's scopes, and stage a shard's rows."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

from forecasting.data.calendar import (
    SERIES_CALENDAR,
    SOURCE_RANK,
    TradingCalendar,
    ticker_calendar,
)
from forecasting.data.prices import load_bars
from forecasting.data.schema import prices, securities
from forecasting.model import registry
from forecasting.model.inference import predict
from forecasting.model.windows import SeriesLike
from forecasting.pipeline.config import RunSettings
from forecasting.pipeline.forecast_store import (
    stage_forecasts,
)
from forecasting.pipeline.listings import load_listing_events
from forecasting.pipeline.scopes import (
    lookback_start,
    scope_name,
)

log = logging.getLogger(__name__)


@dataclass
class ForecastBatch:
    """A run's forecast rows (plain dicts, price units) and the tickers skipped with reasons.

    Rows either travel in ``rows`` or were staged in ``forecast_staging`` by a shard
    (:func:`forecast_shard`); then only their tickers and count travel, in ``staged`` and
    ``n_staged``.
    """

    as_of: dt.date
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    staged: list[str] = field(default_factory=list)
    n_staged: int = 0

    def merge(self, other: ForecastBatch) -> ForecastBatch:
        return ForecastBatch(
            self.as_of,
            self.rows + other.rows,
            {**self.skipped, **other.skipped},
            {**self.versions, **other.versions},
            self.staged + other.staged,
            self.n_staged + other.n_staged,
        )

    @property
    def tickers(self) -> list[str]:
        return sorted({r["ticker"] for r in self.rows} | set(self.staged))

    @property
    def n_rows(self) -> int:
        return len(self.rows) + self.n_staged


def target_dates(
    calendar: TradingCalendar, as_of: dt.date, horizon: int
) -> list[tuple[dt.date, str]]:
    """The h-th trading day after ``as_of`` for h = 1..H, each with the weakest calendar source
    (``database`` < ``xshg`` < ``weekdays``) among the days walked to reach it: a holiday
    guessed by the weekday rule moves every later target as much as a guessed open day."""
    dates = calendar.next_trading_days(as_of, horizon).dates
    out = []
    weakest = "database"
    day = as_of
    for target in dates:
        while day < target:
            day += dt.timedelta(days=1)
            src = calendar.source_for(day)
            if SOURCE_RANK[src] > SOURCE_RANK[weakest]:
                weakest = src
        out.append((target, weakest))
    return out


def forecast(
    engine: Engine,
    settings: RunSettings,
    as_of: dt.date,
    units: Mapping[str, Sequence[str]],
    *,
    lineage: str = "live",
    versions: Mapping[str, int | None] | None = None,
    calendar: TradingCalendar | None = None,
) -> ForecastBatch:
    """Forecast horizons 1..H for every eligible ticker of the given scope units, with the
    model version ``versions`` names for each scope (a run's refitted candidate, before its
    publish makes it active), else the scope's active version.

    A ticker with too little history, stale prices or no model is skipped with a reason; it
    never fails the batch.
    """
    policy = settings.policy
    batch = ForecastBatch(as_of)
    with engine.connect() as conn:
        cal = calendar or TradingCalendar.load(conn, exchange=settings.exchange)
        for unit, tickers in units.items():
            scope = scope_name(lineage, unit)
            if versions is not None:
                version_id = versions.get(scope)
            else:
                info = registry.active_version(conn, scope)
                version_id = info.id if info is not None else None
            if version_id is None:
                for t in tickers:
                    batch.skipped[t] = (
                        f"no active model for scope {scope!r}; run `forecasting train --full`"
                    )
                continue
            model = registry.load_model(conn, version_id)
            cfg = model.config
            need = max(policy.min_history, cfg.input_len + 1)
            start = lookback_start(as_of, max(need, cfg.input_len) + 5)
            series = load_bars(conn, tickers=list(tickers), through=as_of, start=start)
            # A ticker whose loaded window already holds `need` bars has enough history; only
            # the others are counted over their whole history (a scan of years of rows each).
            short = [t for t, b in series.items() if len(b) < need]
            counts = _history_counts(conn, short, as_of)
            # Delisted, suspended and newly listed tickers (forecasting.pipeline.listings).
            events = load_listing_events(
                conn, list(tickers), as_of, {t: s.index[-1] for t, s in series.items()}, cal
            )
            eligible: dict[str, pd.DataFrame] = {}
            for t in tickers:
                s = series.get(t)
                if s is None or s.empty:
                    batch.skipped[t] = f"{t}: no prices on or before {as_of}"
                    continue
                if t in events.skipped:
                    batch.skipped[t] = events.skipped[t]
                    continue
                last = s.index[-1]
                if (as_of - last).days > policy.stale_days:
                    batch.skipped[t] = (
                        f"{t}: stale, last price on {last} is {(as_of - last).days} days before "
                        f"{as_of} (stale_days={policy.stale_days}); ingest newer prices"
                    )
                    continue
                need_t = cfg.input_len + 1 if t in events.newly_listed else need
                if len(s) < need_t and counts.get(t, 0) < need_t:
                    batch.skipped[t] = (
                        f"{t}: only {counts.get(t, 0)} trading days of history up to {as_of}, needs {need_t}"
                    )
                    continue
                eligible[t] = s
            if not eligible:
                continue
            calendars = ticker_calendars(conn, eligible, cal)
            gaps = {t: bars_missed(calendars[t], eligible[t].index[-1], as_of) for t in eligible}
            paths = predict(model, eligible, gaps=gaps)
            dates_by_cal: dict[int, list[tuple[dt.date, str]]] = {}
            for t in eligible:
                p = paths.get(t)
                if p is None:
                    batch.skipped[t] = (
                        f"{t}: the model for scope {scope!r} cannot forecast it (not in its training universe); it joins at the next retrain"
                    )
                    continue
                tcal = calendars[t]
                if id(tcal) not in dates_by_cal:
                    dates_by_cal[id(tcal)] = target_dates(tcal, as_of, cfg.horizon)
                for h, (target, src) in enumerate(dates_by_cal[id(tcal)], start=1):
                    batch.rows.append(
                        {
                            "ticker": t,
                            "as_of_date": as_of,
                            "target_date": target,
                            "horizon": h,
                            "yhat": float(p.yhat[h - 1]),
                            "yhat_lower": float(p.lower[h - 1]),
                            "yhat_upper": float(p.upper[h - 1]),
                            "base_close": float(p.base_close),
                            "model_version_id": version_id,
                            "calendar_source": src,
                        }
                    )
            batch.versions[scope] = version_id
    return batch


def ticker_calendars(
    conn: Connection, series: Mapping[str, SeriesLike], a_shares: TradingCalendar
) -> dict[str, TradingCalendar]:
    """Each ticker's own calendar (:func:`forecasting.data.calendar.ticker_calendar`): the
    run's A-share calendar for XSHG tickers, the library's XNYS for US ones, and for a ticker
    on an unknown exchange one made from its own bars. ``securities.exchange`` decides where
    it is set; the ticker's code otherwise."""
    tickers = list(series)
    exchanges: dict[str, str | None] = {}
    for i in range(0, len(tickers), 500):
        stmt = select(securities.c.ticker, securities.c.exchange).where(
            securities.c.ticker.in_(tickers[i : i + 500])
        )
        exchanges.update({t: e for t, e in conn.execute(stmt)})
    shared: dict[str, TradingCalendar] = {a_shares.exchange: a_shares}
    out: dict[str, TradingCalendar] = {}
    for t, s in series.items():
        key = ticker_calendar(t, exchanges.get(t))
        if key == SERIES_CALENDAR:
            out[t] = TradingCalendar.from_series(s.index)
        else:
            if key not in shared:
                shared[key] = TradingCalendar.load(conn, exchange=key)
            out[t] = shared[key]
    return out


def bars_missed(calendar: TradingCalendar, last_bar: dt.date, as_of: dt.date) -> int:
    """Trading days of ``calendar`` after a ticker's last bar up to ``as_of`` (a suspension, a
    late price): its forecast is made from an older close, and its band widens for them."""
    if last_bar >= as_of:
        return 0
    return len(calendar.trading_days(last_bar + dt.timedelta(days=1), as_of))


def _history_counts(conn: Connection, tickers: Sequence[str], as_of: dt.date) -> dict[str, int]:
    out: dict[str, int] = {}
    tickers = list(tickers)
    for i in range(0, len(tickers), 500):
        chunk = tickers[i : i + 500]
        stmt = (
            select(prices.c.ticker, func.count())
            .where(prices.c.ticker.in_(chunk), prices.c.trade_date <= as_of)
            .group_by(prices.c.ticker)
        )
        out.update({t: int(n) for t, n in conn.execute(stmt)})
    return out


def forecast_shard(
    engine: Engine,
    settings: RunSettings,
    as_of: dt.date,
    units: Mapping[str, Sequence[str]],
    run_id: str,
    *,
    lineage: str = "live",
    versions: Mapping[str, int | None] | None = None,
) -> ForecastBatch:
    """Forecast one shard and stage its rows for ``run_id`` in a transaction of its own, so
    that shards write in parallel (on Dask workers: straight to the database); the run's
    publish makes them all visible at once. Returns the batch without its rows."""
    batch = forecast(engine, settings, as_of, units, lineage=lineage, versions=versions)
    with engine.begin() as conn:
        n = stage_forecasts(conn, run_id, batch.rows)
    return ForecastBatch(as_of, [], batch.skipped, batch.versions, batch.tickers, n)
