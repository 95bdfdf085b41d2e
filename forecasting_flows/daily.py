"""Flow ``daily``: ingest, then the library's composition of a day's run as tasks: plan the day,
check and refit each scope, forecast in shards, publish, summarize.

Run by the ``daily`` deployment after the A-share close (Asia/Shanghai). The steps and their
order are ``forecasting.pipeline.daily``'s (:func:`~forecasting.pipeline.daily.run_pipeline`
runs the same functions without Prefect); this module only makes them tasks. Tasks exchange
plain dataclasses, never torch objects. Only tasks that write to the database retry (ingest,
the forecast shards, which stage their rows, and the publish); their writes are idempotent, so
a retry cannot duplicate. Caching is off and results are not persisted on purpose: every input
lives in the database, and a stale cached forecast would be worse than recomputing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote, unmapped

from forecasting.clock import real_clock, trading_today
from forecasting.data.locks import LockToken, scope_lock
from forecasting.pipeline import daily as pipeline
from forecasting.pipeline import runs
from forecasting.pipeline.check import ScopeCheck, check_scope
from forecasting.pipeline.config import RunConfig
from forecasting.pipeline.forecast import ForecastBatch, forecast_shard
from forecasting.pipeline.forecast_store import WriteResult
from forecasting.pipeline.refit import ScopeOutcome, apply_decision
from forecasting.pipeline.scopes import scoped_lineage
from forecasting.pipeline.summary import RunSummary, SummaryStatus
from forecasting_flows.common import (
    FlowDate,
    SettingsTaskRunner,
    engine_for,
    existing_engine,
    flush_run_logs,
    settings,
)
from forecasting_flows.ingest import ingest_own_sources

TASK_OPTS: dict[str, Any] = dict(cache_policy=NO_CACHE, persist_result=False)
#: Scheduled and manual daily runs share the live lineage; backfills have their own.
LINEAGE = "live"


@task(name="plan", task_run_name="plan", **TASK_OPTS)
def plan_task(
    cfg: RunConfig,
    as_of: dt.date | None,
    today: dt.date,
    tickers: list[str] | None,
    ingest_errors: dict[str, str],
    lineage: str,
) -> pipeline.DayPlan | RunSummary:
    return pipeline.plan_day(
        engine_for(cfg.database_url),
        cfg,
        as_of=as_of,
        today=today,
        lineage=lineage,
        tickers=tickers,
        ingest_errors=ingest_errors,
    )


@task(name="check", task_run_name="check-{scope}", **TASK_OPTS)
def check_task(
    cfg: RunConfig, as_of: dt.date, scope: str, tickers: list[str], force_retrain: bool
) -> ScopeCheck:
    return check_scope(
        engine_for(cfg.database_url), cfg, as_of, scope, tickers, force_retrain=force_retrain
    )


@task(name="refit", task_run_name="refit-{scope}", **TASK_OPTS)
def refit_task(cfg: RunConfig, as_of: dt.date, scope: str, check: ScopeCheck) -> ScopeOutcome:
    """Carry out the check's decision for ``scope``: keep, fine-tune or retrain; the publish
    commits it. Compute task: no retries (a failed training is a bug or bad data)."""
    return apply_decision(engine_for(cfg.database_url), cfg, as_of, check)


@task(
    name="forecast-shard",
    task_run_name="forecast-shard-{shard}",
    retries=2,
    retry_delay_seconds=5,
    **TASK_OPTS,
)
def forecast_task(
    cfg: RunConfig,
    as_of: dt.date,
    units: dict[str, list[str]],
    run_id: str,
    versions: dict[str, int | None],
    shard: int,
    lineage: str,
) -> ForecastBatch:
    """Forecast one shard and stage its rows in the database; returns counts and skips, not
    rows. Retried like the other database writers: a retry re-stages the same tickers, and the
    forward pass it repeats is deterministic and cheap next to training."""
    batch = forecast_shard(
        engine_for(cfg.database_url), cfg, as_of, units, run_id, lineage=lineage, versions=versions
    )
    get_run_logger().info(
        "shard %d: %d tickers forecast, %d rows staged, %d skipped",
        shard,
        len(batch.tickers),
        batch.n_staged,
        len(batch.skipped),
    )
    return batch


@task(name="publish", task_run_name="publish", retries=2, retry_delay_seconds=5, **TASK_OPTS)
def publish_task(
    cfg: RunConfig,
    run_id: str,
    batch: ForecastBatch,
    outcomes: list[ScopeOutcome],
    lock: LockToken,
    skipped: dict[str, str],
) -> WriteResult:
    """I/O task: one transaction; the upsert is idempotent, so a retry cannot duplicate. It
    publishes nothing once the run has lost its lineage lock."""
    return pipeline.publish(engine_for(cfg.database_url), run_id, batch, outcomes, lock, skipped)


@task(name="summary", task_run_name="summary", **TASK_OPTS)
def summary_task(summary: RunSummary) -> str:
    md = summary.markdown()
    create_markdown_artifact(key="daily-summary", markdown=md, description="Daily forecast run")
    if summary.next_day:
        create_table_artifact(
            key="next-day-forecasts",
            table=[
                {k: (str(v) if isinstance(v, dt.date) else v) for k, v in row.items()}
                for row in summary.next_day
            ],
            description=f"Next-day forecasts as of {summary.as_of}",
        )
    return md


def shards(units: dict[str, list[str]], size: int) -> list[dict[str, list[str]]]:
    """Split the forecast work into shards of at most ``size`` tickers; the global model is
    trained once, its inference is what spreads."""
    out: list[dict[str, list[str]]] = []
    current: dict[str, list[str]] = {}
    n = 0
    for unit, tickers in units.items():
        for i in range(0, len(tickers), size):
            chunk = tickers[i : i + size]
            if n + len(chunk) > size and current:
                out.append(current)
                current, n = {}, 0
            current.setdefault(unit, []).extend(chunk)
            n += len(chunk)
    if current:
        out.append(current)
    return out


def _today() -> dt.date:
    scheduled = flow_run.scheduled_start_time
    # Under a deployment, today is the scheduled date (a late run still forecasts its day).
    return trading_today(scheduled or real_clock())


@flow(name="daily", log_prints=True, task_runner=SettingsTaskRunner())
def daily(
    as_of: FlowDate | None = None,
    force_retrain: bool = False,
    rerun: bool = False,
    tickers: Sequence[str] | None = None,
    ingest: bool = True,
    shard_size: int = 250,
    universe: str | None = None,
) -> RunSummary:
    """Forecast the next H trading days for every eligible ticker and write them to the
    forecasts table, after ingesting the day's prices and checking the model for drift.

    Args:
        as_of: The trading day to forecast from, YYYY-MM-DD (or YYYYMMDD). Default: the latest
            trading day with prices on or before today in Asia/Shanghai (under the schedule,
            the scheduled date); on a day the exchange is closed the run records that and stops.
        force_retrain: Retrain the model from scratch whatever the drift check says.
        rerun: Recompute a day that is already complete (otherwise a rerun writes nothing).
        tickers: Restrict to these tickers, e.g. ["600519.SH"] (default: the configured
            universe, else every ticker with prices); a restricted run has a lineage of its
            own (``live[600519.SH]``), with its own model.
        ingest: Ingest new prices first, each ticker from its own source (the configured
            source for tickers that have none yet; with none configured, nothing).
        shard_size: Tickers per forecast task (the unit that spreads over Dask workers).
        universe: "all", "index:000300.SH" or a ticker list (default: the universe setting).
    """
    log = get_run_logger()
    s = settings()
    if universe:
        s = s.with_overrides(universe=universe)
    cfg = RunConfig.of(s)  # what the tasks get: no token
    engine = existing_engine(s.database_url)
    today = as_of or _today()
    if as_of is None:
        closed = pipeline.closed_day(engine, cfg, today, LINEAGE)
        if closed is not None:
            return _finish(closed)
    names = list(tickers) if tickers else None
    ingest_errors: dict[str, str] = {}
    if ingest:
        result = ingest_own_sources(s, names, today)
        try:
            ingest_errors = pipeline.ingest_skips(
                result["status"], result["errors"], result["summary"]
            )
        except pipeline.IngestFailedError as exc:
            _finish(RunSummary(None, as_of, LINEAGE, SummaryStatus.FAILED, message=str(exc)))
            raise
    with engine.connect() as conn:
        lineage = scoped_lineage(conn, cfg, LINEAGE, names)
    plan = plan_task(cfg, as_of, today, names, ingest_errors, lineage)
    if isinstance(plan, RunSummary):
        return _finish(plan)
    scopes = plan.scopes
    with scope_lock(engine, pipeline.lineage_lock(lineage)) as lock:
        opened = pipeline.open_run(
            engine,
            plan.as_of,
            lineage=lineage,
            kind="daily",
            redo=rerun or force_retrain,
            flow_run_id=flow_run.id,
            scopes=list(scopes),
            abandon_after=dt.timedelta(seconds=cfg.policy.abandon_after_s),
        )
        if isinstance(opened, RunSummary):
            return _finish(opened)
        run_id = opened
        with runs.beating(engine, run_id):
            try:
                checks = [
                    check_task.submit(cfg, plan.as_of, scope, t, force_retrain)
                    for scope, t in scopes.items()
                ]
                # Each check's value, not its future, goes to its refit: a failed check then raises
                # its own error here, instead of leaving the refit pending ("UnfinishedRun").
                refits = [
                    refit_task.submit(cfg, plan.as_of, scope, c.result())
                    for scope, c in zip(scopes, checks, strict=True)
                ]
                outcomes = [o.result() for o in refits]
                versions = pipeline.forecast_versions(outcomes)
                parts_in = shards(plan.forecast_units, shard_size)
                parts = forecast_task.map(
                    cfg,
                    plan.as_of,
                    parts_in,
                    run_id,
                    unmapped(versions),
                    range(1, len(parts_in) + 1),
                    unmapped(lineage),
                )
                batch = ForecastBatch(plan.as_of)
                for part in parts.result():
                    batch = batch.merge(part)
                # quote(): Prefect would otherwise walk every ticker and skip reason in the batch
                # looking for futures; it unwraps it before the call (its stubs don't model that).
                written = publish_task(cfg, run_id, quote(batch), outcomes, lock, plan.skipped)  # type: ignore[call-overload]
            except BaseException as exc:
                pipeline.fail_run(engine, run_id, exc, list(scopes))
                raise
    summary = pipeline.finished_summary(
        engine, run_id, plan.as_of, lineage, outcomes, batch, written, plan.skipped
    )
    log.info(
        "as of %s: %s; %d tickers forecast, %d skipped",
        plan.as_of,
        summary.decision,
        len(batch.tickers),
        len(batch.skipped),
    )
    return _finish(summary)


def _finish(summary: RunSummary) -> RunSummary:
    """Publish the summary artifact and return the summary (every way out of the flow)."""
    if summary.message:
        get_run_logger().info(summary.message)
    summary_task(quote(summary))  # type: ignore[call-overload]
    flush_run_logs()
    return summary
