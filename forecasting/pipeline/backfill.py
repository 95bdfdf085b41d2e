"""Backfill: replay the daily pipeline over past trading days, point-in-time.

Each day of the range is run exactly as the scheduled run would have run it on that evening:
``run_pipeline(as_of=day)`` reads prices with ``trade_date <= day`` only, and its models live in
a lineage of their own (``backfill:<start>:<end>`` by default, model scopes
``<lineage>/global``), so a backfill never sees a live model trained on later data and never
disturbs one.

Days run in date order, because each day's drift check scores the model the previous days left
behind. A day already completed in the lineage is skipped (``run_pipeline`` answers
``already-complete``), so a killed backfill resumes where it stopped and a finished one reruns
as a no-op. The per-lineage lock inside ``run_pipeline`` plus the unique keys on ``forecasts``
and ``model_checks`` keep it safe next to the scheduled daily run.

A *calendar* policy — retrain from scratch every N trading days whatever the drift check says,
qlib's rolling default — is available as ``retrain_every=N`` for comparison with the
drift-triggered policy (see ``benchmarks/backfill.py``).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

from forecasting.data.calendar import TradingCalendar
from forecasting.data.schema import model_checks, prices
from forecasting.errors import ForecastingError, InputError
from forecasting.model import registry
from forecasting.pipeline import runs
from forecasting.pipeline.config import RunSettings
from forecasting.pipeline.daily import run_pipeline
from forecasting.pipeline.retrain_policy import calendar_due
from forecasting.pipeline.scopes import scope_name, scope_units, scoped_lineage, universe
from forecasting.settings import Settings

log = logging.getLogger(__name__)


class BackfillError(ForecastingError, RuntimeError):
    """A backfill cannot go on without breaking point-in-time; the message says how to fix it."""


def lineage_for(start: dt.date, end: dt.date, *, retrain_every: int | None = None) -> str:
    """The default lineage of a backfill: ``backfill:2018-01-02:2018-12-28`` (with
    ``:every20`` for a calendar policy, whose models must not mix with drift-policy ones)."""
    base = f"backfill:{start.isoformat()}:{end.isoformat()}"
    return f"{base}:every{retrain_every}" if retrain_every else base


def calendar_policy(settings: Settings) -> Settings:
    """``settings`` with the drift check switched off (never breaches, never too old), so that
    with ``retrain_every`` only the calendar decides when to retrain."""
    policy = replace(
        settings.policy,
        rel_threshold=math.inf,
        abs_threshold=None,
        degradation_threshold=None,
        max_age_days=10**6,
    )
    return settings.with_overrides(policy=policy)


def trading_days(
    conn: Connection,
    start: dt.date,
    end: dt.date,
    tickers: Sequence[str] | None = None,
) -> list[dt.date]:
    """The days in ``[start, end]`` with prices in the database for any of ``tickers``
    (default: every ticker): the days a daily run would have had new closes to forecast from."""
    stmt = (
        select(prices.c.trade_date)
        .where(prices.c.trade_date >= start, prices.c.trade_date <= end)
        .distinct()
        .order_by(prices.c.trade_date)
    )
    if tickers:
        stmt = stmt.where(prices.c.ticker.in_(list(tickers)))
    return [r[0] for r in conn.execute(stmt)]


def missing_days(
    conn: Connection, days: Iterable[dt.date], start: dt.date, end: dt.date, exchange: str
) -> list[dt.date]:
    """Open days of the exchange calendar in ``[start, end]`` without any prices: a gap in the
    ingested data, which the backfill cannot replay (there is no close to forecast from)."""
    have = set(days)
    cal = TradingCalendar.load(conn, exchange=exchange, start=start, end=end)
    return [d for d in cal.trading_days(start, end) if d not in have]


@dataclass(frozen=True)
class BackfillDay:
    """The outcome of one backfilled day (picklable: flows pass it between tasks)."""

    as_of: dt.date
    status: str  # success | already-complete | no-data
    run_id: str | None
    decision: str | None
    forced: bool
    n_forecast_rows: int
    n_skipped: int
    train_seconds: float
    message: str = ""

    def line(self) -> str:
        if self.status != "success":
            return f"{self.as_of}: {self.status}"
        forced = " (calendar)" if self.forced else ""
        return (
            f"{self.as_of}: {self.decision}{forced}, {self.n_forecast_rows} forecast rows, "
            f"{self.n_skipped} skipped, {self.train_seconds:.1f}s training"
        )


@dataclass
class BackfillResult:
    """All days of one backfill, with the counts a user asks first."""

    lineage: str
    start: dt.date
    end: dt.date
    days: list[BackfillDay] = field(default_factory=list)
    missing: list[dt.date] = field(default_factory=list)

    @property
    def completed(self) -> int:
        """Days computed by this call."""
        return sum(d.status == "success" for d in self.days)

    @property
    def already_complete(self) -> int:
        """Days skipped because an earlier call had completed them."""
        return sum(d.status == "already-complete" for d in self.days)

    @property
    def refits(self) -> dict[str, int]:
        """Decisions other than ``keep`` taken by this call, by kind."""
        out: dict[str, int] = {}
        for d in self.days:
            if d.status == "success" and d.decision and d.decision != "keep":
                out[d.decision] = out.get(d.decision, 0) + 1
        return out

    @property
    def train_seconds(self) -> float:
        return sum(d.train_seconds for d in self.days)

    @property
    def message(self) -> str:
        refits = ", ".join(f"{n} {k}" for k, n in sorted(self.refits.items())) or "no refits"
        text = (
            f"{self.lineage}: {len(self.days)} trading days from {self.start} to "
            f"{self.end}; {self.completed} computed, {self.already_complete} already complete; "
            f"{refits}; {self.train_seconds:.1f}s training"
        )
        if self.missing:
            shown = ", ".join(str(d) for d in self.missing[:5])
            more = f" and {len(self.missing) - 5} more" if len(self.missing) > 5 else ""
            text += (
                f"\nwarning: {len(self.missing)} open exchange days have no prices and were not "
                f"replayed ({shown}{more}); run `forecasting ingest --start {self.start} "
                f"--end {self.end}` to fill them"
            )
        return text


def check_point_in_time(
    conn: Connection, settings: RunSettings, lineage: str, names: Sequence[str], as_of: dt.date
) -> None:
    """Raise :class:`BackfillError` when an active model of ``lineage`` was trained past
    ``as_of``: using it would leak the future into this day's forecasts."""
    for unit in scope_units(settings, names):
        scope = scope_name(lineage, unit)
        info = registry.active_version(conn, scope)
        if info is not None and info.trained_through > as_of:
            raise BackfillError(
                f"lineage {lineage!r}: the active model of scope {scope!r} (version {info.id}) "
                f"was trained through {info.trained_through}, after the day to replay, {as_of}. "
                "Days of a lineage must be replayed in date order; start this range in a new "
                "lineage (--lineage) or extend the old one forward only"
            )


def days_since_refit(
    conn: Connection, settings: RunSettings, lineage: str, names: Sequence[str], as_of: dt.date
) -> int | None:
    """Trading days in ``(last refit, as_of]`` for the lineage, where the last refit is the
    newest ``model_checks`` row with a decision other than ``keep`` (promoted or not, so a
    rejected challenger does not make the calendar retrain every day after); ``None`` before
    the first one (the pipeline trains the first model anyway)."""
    scopes = [scope_name(lineage, u) for u in scope_units(settings, names)]
    last = conn.execute(
        select(func.max(model_checks.c.as_of_date)).where(
            model_checks.c.scope.in_(scopes),
            model_checks.c.decision != "keep",
            model_checks.c.as_of_date <= as_of,
        )
    ).scalar()
    if last is None:
        return None
    n = conn.execute(
        select(func.count(prices.c.trade_date.distinct())).where(
            prices.c.trade_date > last,
            prices.c.trade_date <= as_of,
            prices.c.ticker.in_(list(names)),
        )
    ).scalar()
    return int(n or 0)


def run_day(
    engine: Engine,
    settings: RunSettings,
    as_of: dt.date,
    *,
    lineage: str,
    tickers: Sequence[str] | None = None,
    retrain_every: int | None = None,
) -> BackfillDay:
    """Run the daily pipeline for one past ``as_of`` in ``lineage``; skip it if already complete.

    With ``retrain_every=N``, force a full retrain when N or more trading days have passed since
    the lineage's last refit (a calendar policy that survives restarts: it counts from the
    record in ``model_checks``, not from the start of the range).
    """
    with engine.connect() as conn:
        lineage = scoped_lineage(conn, settings, lineage, tickers)
        done = runs.completed_run(conn, as_of, lineage)
        if done is not None:
            # Checked here as well as in run_pipeline: a calendar-forced day must not recompute
            # a completed day (force_retrain bypasses run_pipeline's own check).
            return BackfillDay(as_of, "already-complete", done.run_id, None, False, 0, 0, 0.0)
        names = universe(conn, settings, tickers, day=as_of)
        check_point_in_time(conn, settings, lineage, names, as_of)
        age = days_since_refit(conn, settings, lineage, names, as_of) if retrain_every else None
    forced = calendar_due(age, retrain_every)
    summary = run_pipeline(
        engine,
        settings,
        as_of,
        lineage=lineage,
        kind="backfill",
        force_retrain=forced,
        tickers=tickers,
    )
    return BackfillDay(
        as_of=as_of,
        status=summary.status,
        run_id=summary.run_id,
        decision=summary.decision,
        forced=forced,
        n_forecast_rows=summary.n_forecast_rows,
        n_skipped=len(summary.skipped),
        train_seconds=sum(o.train_seconds for o in summary.outcomes),
        message=summary.message,
    )


def plan(
    engine: Engine,
    settings: RunSettings,
    start: dt.date,
    end: dt.date,
    tickers: Sequence[str] | None = None,
) -> tuple[list[dt.date], list[dt.date]]:
    """The days a backfill of ``[start, end]`` replays, and the open exchange days it cannot
    (no prices)."""
    if start > end:
        raise InputError(f"backfill start {start} is after end {end}; swap them")
    with engine.connect() as conn:
        names = universe(conn, settings, tickers, day=end)
        days = trading_days(conn, start, end, names)
        gaps = missing_days(conn, days, start, end, settings.exchange) if names else []
    return days, gaps


def progress_bar(total: int, enabled: bool | None, desc: str) -> Any:
    """A tqdm bar over ``total`` days, or ``None`` when disabled (default: on a terminal,
    unless ``TQDM_DISABLE`` is set)."""
    if enabled is None:
        enabled = sys.stderr.isatty() and not os.environ.get("TQDM_DISABLE")
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="day")


def backfill(
    engine: Engine,
    settings: RunSettings,
    start: dt.date,
    end: dt.date,
    *,
    tickers: Sequence[str] | None = None,
    lineage: str | None = None,
    retrain_every: int | None = None,
    progress: bool | None = None,
    on_day: Callable[[BackfillDay], None] | None = None,
) -> BackfillResult:
    """Replay the daily pipeline for every trading day in ``[start, end]``, point-in-time.

    Args:
        tickers: restrict the universe (default: settings, else every ticker with prices).
        lineage: where models and runs live (default :func:`lineage_for`); reuse one to resume.
            Restricted to some ``tickers``, it is a lineage of its own
            (:func:`~forecasting.pipeline.scopes.scoped_lineage`).
        retrain_every: calendar policy, see :func:`run_day` (combine with
            :func:`calendar_policy` to switch the drift check off).
        progress: a tqdm bar (default: when stderr is a terminal); each day is logged anyway.
        on_day: called after each day (tests inject a crash here; flows report progress).

    Idempotent: completed days are skipped, so rerunning resumes or changes nothing.
    """
    lineage = lineage or lineage_for(start, end, retrain_every=retrain_every)
    with engine.connect() as conn:
        lineage = scoped_lineage(conn, settings, lineage, tickers)
    days, gaps = plan(engine, settings, start, end, tickers)
    result = BackfillResult(lineage, start, end, missing=gaps)
    bar = progress_bar(len(days), progress, lineage)
    try:
        for i, as_of in enumerate(days, start=1):
            day = run_day(
                engine,
                settings,
                as_of,
                lineage=lineage,
                tickers=tickers,
                retrain_every=retrain_every,
            )
            result.days.append(day)
            log.info("%s: day %d/%d %s", lineage, i, len(days), day.line())
            if bar is not None:
                bar.set_postfix_str(day.line(), refresh=False)
                bar.update(1)
            if on_day is not None:
                on_day(day)
    finally:
        if bar is not None:
            bar.close()
    log.info("%s", result.message)
    return result
