"""A day's run, composed once: plan the day, then under the lineage lock open the run, check
and refit each scope, forecast in shards, and publish.

:func:`run_pipeline` runs these steps in this order in one process (the CLI's ``run
--no-prefect``, the backfill, benchmarks); ``forecasting_flows.daily`` runs the same functions
in the same order as Prefect tasks, and only adds the ingest before :func:`plan_day`. Every
step takes explicit arguments and returns plain, picklable data, never torch objects.

One unit of commit per run: the shards stage their rows (:func:`forecast.forecast_shard`), a
refit saves its model as a candidate that nothing reads as active, and :func:`publish` makes it
all visible at once: the scopes' decisions and new champions, the forecasts and the run's
completion, in one transaction. A run that fails before that leaves the champion, the check
records and the forecasts as they were (:func:`fail_run` discards its candidates).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import insert
from sqlalchemy.engine import Engine

from forecasting.clock import real_clock, trading_today
from forecasting.data.calendar import TradingCalendar
from forecasting.data.locks import LockToken, scope_lock, verify
from forecasting.data.schema import run_skips
from forecasting.errors import ForecastingError
from forecasting.model import registry
from forecasting.pipeline import runs
from forecasting.pipeline.check import check_scope
from forecasting.pipeline.config import RunSettings
from forecasting.pipeline.forecast import ForecastBatch, forecast_shard
from forecasting.pipeline.forecast_store import (
    WriteResult,
    clear_staging,
    next_day_forecasts,
    staged_rows,
    write_forecasts,
)
from forecasting.pipeline.refit import ScopeOutcome, apply_decision, commit_outcome
from forecasting.pipeline.runs import RunStatus
from forecasting.pipeline.scopes import (
    input_skips,
    resolve_as_of,
    scope_name,
    scope_units,
    scoped_lineage,
    universe,
)
from forecasting.pipeline.summary import RunSummary, SummaryStatus

log = logging.getLogger(__name__)

NO_DATA = "no prices in the database; run `forecasting ingest` first"


class IngestFailedError(ForecastingError, RuntimeError):
    """The run's ingest failed for every ticker: nothing is forecast from old prices."""


def ingest_skips(status: str, errors: Mapping[str, str], summary: str = "") -> dict[str, str]:
    """What a run makes of its ingest: ticker -> error for the tickers whose ingest failed
    (the plan skips them); :class:`IngestFailedError` when it failed altogether."""
    if status == "failed":
        why = "; ".join(f"{t}: {e}" for t, e in list(errors.items())[:3]) or summary
        raise IngestFailedError(
            f"the ingest failed, so nothing was forecast ({why}); fix the source (token, "
            "network, FORECASTING_SOURCE) and run again"
        )
    return dict(errors)


@dataclass(frozen=True)
class DayPlan:
    """What a run covers: its as-of day, each model unit with the tickers it covers, and the
    tickers it must not forecast for their inputs, with the reason."""

    as_of: dt.date
    lineage: str
    units: dict[str, list[str]]
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def scopes(self) -> dict[str, list[str]]:
        """Model scope (the registry's name, lineage-qualified) -> its tickers (all of them:
        a ticker with stale prices still trains on the history it has)."""
        return {scope_name(self.lineage, u): t for u, t in self.units.items()}

    @property
    def forecast_units(self) -> dict[str, list[str]]:
        """Each unit's tickers to forecast: those with current inputs."""
        out = {u: [t for t in ts if t not in self.skipped] for u, ts in self.units.items()}
        return {u: ts for u, ts in out.items() if ts}


def lineage_lock(lineage: str) -> str:
    """The name of the lock that serializes the runs of one lineage."""
    return f"pipeline:{lineage}"


def closed_day(
    engine: Engine, settings: RunSettings, today: dt.date, lineage: str
) -> RunSummary | None:
    """The summary to stop with when ``today`` is not a trading day (a run with no explicit
    as-of day has nothing to do then), else ``None``."""
    with engine.connect() as conn:
        cal = TradingCalendar.load(conn, exchange=settings.exchange)
    if cal.is_trading_day(today):
        return None
    return RunSummary(
        None,
        None,
        lineage,
        SummaryStatus.NOT_A_TRADING_DAY,
        message=f"{today} is not a trading day; nothing to do",
    )


def plan_day(
    engine: Engine,
    settings: RunSettings,
    *,
    as_of: dt.date | None,
    today: dt.date,
    lineage: str,
    tickers: Sequence[str] | None = None,
    ingest_errors: Mapping[str, str] | None = None,
) -> DayPlan | RunSummary:
    """The run's as-of day, the latest day with prices on or before ``as_of`` (default
    ``today``), its scopes, and the tickers it skips for their inputs (:func:`input_skips`:
    the ingest of it failed, delisted, or no price on that day); a no-data summary when there
    are no prices by then."""
    with engine.connect() as conn:
        names = universe(conn, settings, tickers, day=as_of or today)
    resolved = resolve_as_of(engine, as_of or today, names)
    if resolved is None:
        return RunSummary(None, None, lineage, SummaryStatus.NO_DATA, message=NO_DATA)
    with engine.connect() as conn:
        skipped = input_skips(conn, names, resolved, ingest_errors)
    return DayPlan(resolved, lineage, scope_units(settings, names), skipped)


def refit_scope(
    engine: Engine,
    settings: RunSettings,
    as_of: dt.date,
    scope: str,
    tickers: Sequence[str],
    *,
    force_retrain: bool = False,
) -> ScopeOutcome:
    """The drift check of one scope and the decision carried out (nothing committed)."""
    check = check_scope(engine, settings, as_of, scope, tickers, force_retrain=force_retrain)
    return apply_decision(engine, settings, as_of, check)


def forecast_versions(outcomes: Sequence[ScopeOutcome]) -> dict[str, int | None]:
    """Scope -> the version the run forecasts with: its winning candidate, else the champion."""
    return {o.scope: o.active_version_id for o in outcomes}


def publish(
    engine: Engine,
    run_id: str,
    batch: ForecastBatch,
    outcomes: Sequence[ScopeOutcome],
    lock: LockToken | None = None,
    skipped: Mapping[str, str] | None = None,
) -> WriteResult:
    """Make the run visible, in one transaction: each scope's decision and new champion, the
    forecasts its shards staged, the tickers it skipped with the reason (``run_skips``) and
    the run's completion record: ``partial`` when ``skipped`` (the plan's input skips) is not
    empty, else ``success``; empty its stage.

    With ``lock`` (the run's lineage lock), the transaction checks last that the lock is still
    held, first and last, and rolls back with :class:`~forecasting.data.locks.LockLostError`
    when it is not (another run of the lineage may have started since)."""
    with engine.begin() as conn:
        verify(conn, lock)
        for outcome in outcomes:
            commit_outcome(conn, run_id, outcome)
        rows = staged_rows(conn, run_id)
        if len(rows) != batch.n_staged:
            raise RuntimeError(
                f"run {run_id}: {len(rows)} forecast rows staged, its shards reported "
                f"{batch.n_staged}; rerun the day with --rerun"
            )
        result = write_forecasts(conn, run_id, rows)
        clear_staging(conn, run_id)
        input_skipped = dict(skipped or {})
        all_skipped = {**batch.skipped, **input_skipped}
        if all_skipped:
            conn.execute(
                insert(run_skips),
                [{"run_id": run_id, "ticker": t, "reason": r} for t, r in all_skipped.items()],
            )
        actions = [o.action for o in outcomes]
        runs.finish_run(
            conn,
            run_id,
            status=RunStatus.PARTIAL if input_skipped else RunStatus.SUCCESS,
            decision=max(actions, key=lambda a: {"keep": 0, "finetune": 1, "retrain": 2}[a])
            if actions
            else None,
            model_version_id=next(iter(batch.versions.values()), None)
            if len(batch.versions) == 1
            else None,
            n_forecast=len(batch.tickers),
            n_skipped=len(all_skipped),
            counts={
                "rows": len(rows),
                "inserted": result.inserted,
                "replaced": result.replaced,
                "unchanged": result.unchanged,
                "versions": batch.versions,
            },
        )
        verify(conn, lock)
    return result


def fail_run(engine: Engine, run_id: str, error: BaseException, scopes: Sequence[str] = ()) -> None:
    """Record the run as failed with its error; drop its staged rows and discard the
    candidates its refits saved, so the champions and the forecasts stay as they were."""
    with engine.begin() as conn:
        clear_staging(conn, run_id)
        registry.discard_candidates(conn, scopes)
        runs.finish_run(
            conn, run_id, status=RunStatus.FAILED, error=f"{type(error).__name__}: {error}"
        )


def open_run(
    engine: Engine,
    as_of: dt.date,
    *,
    lineage: str,
    kind: str,
    redo: bool = False,
    flow_run_id: str | None = None,
    scopes: Sequence[str] = (),
    abandon_after: dt.timedelta = runs.STALE_AFTER,
) -> RunSummary | str:
    """Start a run for ``as_of`` and return its id — or, when that day is already complete in
    this lineage and ``redo`` is not set, the summary saying so (a rerun writes nothing).
    Runs of other lineages without a heartbeat for ``abandon_after`` are marked abandoned.
    Call it under the lineage's lock (:func:`lineage_lock`)."""
    if not redo:
        with engine.connect() as conn:
            done = runs.completed_run(conn, as_of, lineage)
        if done is not None:
            return RunSummary(
                done.run_id,
                as_of,
                lineage,
                SummaryStatus.ALREADY_COMPLETE,
                message=(
                    f"as of {as_of} was already completed by run {done.run_id}; nothing written "
                    "(use --rerun to recompute)"
                ),
            )
    # Runs of this lineage still marked running, their staged rows and their candidates are
    # left over from a process that died before publishing or failing: the lineage lock this
    # run holds means no other run of the lineage is in flight.
    with engine.begin() as conn:
        runs.mark_abandoned(conn, lineage, stale_after=abandon_after)
        registry.discard_candidates(conn, scopes)
    return runs.start_run(engine, as_of, kind=kind, lineage=lineage, flow_run_id=flow_run_id)


def finished_summary(
    engine: Engine,
    run_id: str,
    as_of: dt.date,
    lineage: str,
    outcomes: list[ScopeOutcome],
    batch: ForecastBatch,
    written: WriteResult,
    input_skipped: Mapping[str, str] | None = None,
) -> RunSummary:
    """The summary of a committed run, with its next-day forecasts read back from the table;
    ``partial`` when tickers were skipped for their inputs."""
    with engine.connect() as conn:
        nd = next_day_forecasts(conn, as_of, version_ids=list(batch.versions.values()))
    message = ""
    if input_skipped:
        message = (
            f"partial: {len(input_skipped)} ticker(s) not forecast for their inputs "
            "(see Skipped, and the run_skips table); once their prices are in, rerun the day "
            "with --rerun"
        )
    return RunSummary(
        run_id,
        as_of,
        lineage,
        SummaryStatus.PARTIAL if input_skipped else SummaryStatus.SUCCESS,
        outcomes,
        n_forecast_rows=batch.n_rows,
        tickers_forecast=batch.tickers,
        skipped={**batch.skipped, **(input_skipped or {})},
        written=written,
        next_day=nd,
        message=message,
    )


def run_pipeline(
    engine: Engine,
    settings: RunSettings,
    as_of: dt.date | None = None,
    *,
    today: dt.date | None = None,
    lineage: str = "live",
    kind: str = "daily",
    force_retrain: bool = False,
    rerun: bool = False,
    tickers: Sequence[str] | None = None,
    flow_run_id: str | None = None,
    on_step: Callable[[str], None] | None = None,
) -> RunSummary:
    """One day's run without Prefect: the steps the ``daily`` flow runs as tasks, in the same
    order (see the module docstring). With no ``as_of``, a day the exchange is closed is
    reported and nothing runs.

    A second call for an ``as_of`` already completed in the same lineage does nothing and says
    so, unless ``rerun`` (or ``force_retrain``) is set. A run restricted to some ``tickers``
    runs in a lineage of its own (:func:`~forecasting.pipeline.scopes.scoped_lineage`).
    """
    step = on_step or (lambda name: log.debug("step %s", name))
    today = today or trading_today(real_clock())
    with engine.connect() as conn:
        lineage = scoped_lineage(conn, settings, lineage, tickers)
    if as_of is None:
        closed = closed_day(engine, settings, today, lineage)
        if closed is not None:
            return closed
    plan = plan_day(engine, settings, as_of=as_of, today=today, lineage=lineage, tickers=tickers)
    if isinstance(plan, RunSummary):
        return plan
    scopes = plan.scopes
    with scope_lock(engine, lineage_lock(lineage)) as lock:
        opened = open_run(
            engine,
            plan.as_of,
            lineage=lineage,
            kind=kind,
            redo=rerun or force_retrain,
            flow_run_id=flow_run_id,
            scopes=list(scopes),
            abandon_after=dt.timedelta(seconds=settings.policy.abandon_after_s),
        )
        if isinstance(opened, RunSummary):
            return opened
        run_id = opened
        with runs.beating(engine, run_id):
            try:
                outcomes = []
                for scope, scope_tickers in scopes.items():
                    step(f"check {scope}")
                    outcomes.append(
                        refit_scope(
                            engine,
                            settings,
                            plan.as_of,
                            scope,
                            scope_tickers,
                            force_retrain=force_retrain,
                        )
                    )
                step("forecast")
                batch = forecast_shard(
                    engine,
                    settings,
                    plan.as_of,
                    plan.forecast_units,
                    run_id,
                    lineage=lineage,
                    versions=forecast_versions(outcomes),
                )
                step("publish")
                written = publish(engine, run_id, batch, outcomes, lock, plan.skipped)
            except BaseException as exc:
                fail_run(engine, run_id, exc, list(scopes))
                raise
    return finished_summary(
        engine, run_id, plan.as_of, lineage, outcomes, batch, written, plan.skipped
    )
