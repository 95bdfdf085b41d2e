"""Flow ``daily``: ingest → check → decide → fine-tune / retrain / keep → forecast → write → summary.

Run by the ``daily`` deployment after the A-share close (Asia/Shanghai). Each step is a task
that calls into ``forecasting.pipeline.daily``; tasks exchange plain dataclasses, never torch objects.
Only tasks that write to the database retry (ingest, the forecast shards, which stage their
rows, and the write that publishes them); their writes are idempotent, so a retry cannot
duplicate. Caching is off and results are not persisted on purpose:
every input lives in the database, and a stale cached forecast would be worse than recomputing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from forecasting.data.calendar import TradingCalendar
from forecasting.data.locks import scope_lock
from forecasting.pipeline import daily as pipeline
from forecasting.pipeline.forecast_store import WriteResult
from forecasting.settings import Settings
from forecasting_flows.common import (
    FlowDate,
    SettingsTaskRunner,
    engine_for,
    settings,
    task_runner,
)
from forecasting_flows.ingest import ingest_sharded

TASK_OPTS: dict[str, Any] = dict(cache_policy=NO_CACHE, persist_result=False)


@task(name="resolve-as-of", task_run_name="resolve-as-of", **TASK_OPTS)
def resolve_as_of_task(s: Settings, today: dt.date, tickers: list[str] | None) -> dt.date | None:
    return pipeline.resolve_as_of(engine_for(s.database_url), today, tickers)


@task(name="check", task_run_name="check-{scope}", **TASK_OPTS)
def check_task(
    s: Settings, as_of: dt.date, scope: str, tickers: list[str], force_retrain: bool
) -> pipeline.ScopeCheck:
    return pipeline.check_scope(
        engine_for(s.database_url), s, as_of, scope, tickers, force_retrain=force_retrain
    )


@task(name="refit", task_run_name="refit-{scope}", **TASK_OPTS)
def refit_task(
    s: Settings, as_of: dt.date, scope: str, check: pipeline.ScopeCheck, run_id: str
) -> pipeline.ScopeOutcome:
    """Apply the check's decision to ``scope``: keep, fine-tune or retrain (and record it).
    Compute task: no retries (a failed training is a bug or bad data, not a network blip)."""
    return pipeline.apply_decision(engine_for(s.database_url), s, as_of, check, run_id=run_id)


@task(
    name="forecast-shard",
    task_run_name="forecast-shard-{shard}",
    retries=2,
    retry_delay_seconds=5,
    **TASK_OPTS,
)
def forecast_task(
    s: Settings,
    as_of: dt.date,
    units: dict[str, list[str]],
    run_id: str,
    lineage: str,
    shard: int,
) -> pipeline.ForecastBatch:
    """Forecast one shard and stage its rows in the database; returns counts and skips, not
    rows. Retried like the other database writers: a retry re-stages the same tickers, and the
    forward pass it repeats is deterministic and cheap next to training."""
    batch = pipeline.forecast_shard(
        engine_for(s.database_url), s, as_of, units, run_id, lineage=lineage
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
def write_task(
    s: Settings,
    run_id: str,
    batch: pipeline.ForecastBatch,
    outcomes: list[pipeline.ScopeOutcome],
) -> WriteResult:
    """I/O task: one transaction; the upsert is idempotent, so a retry cannot duplicate."""
    return pipeline.write(engine_for(s.database_url), run_id, batch, outcomes)


@task(name="summary", task_run_name="summary", **TASK_OPTS)
def summary_task(s: Settings, summary: pipeline.RunSummary) -> str:
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
    return pipeline.shanghai_today(scheduled) if scheduled else pipeline.shanghai_today()


@flow(name="daily", log_prints=True, task_runner=SettingsTaskRunner())
def daily(
    as_of: FlowDate | None = None,
    force_retrain: bool = False,
    rerun: bool = False,
    tickers: Sequence[str] | None = None,
    ingest: bool = True,
    shard_size: int = 250,
) -> pipeline.RunSummary:
    """Forecast the next H trading days for every eligible ticker and write them to the
    forecasts table, after ingesting the day's prices and checking the model for drift.

    Args:
        as_of: The trading day to forecast from, YYYY-MM-DD (or YYYYMMDD). Default: the latest
            trading day with prices on or before today in Asia/Shanghai (under the schedule,
            the scheduled date); on a day the exchange is closed the run records that and stops.
        force_retrain: Retrain the model from scratch whatever the drift check says.
        rerun: Recompute a day that is already complete (otherwise a rerun writes nothing).
        tickers: Restrict to these tickers, e.g. ["600519.SH"] (default: the configured
            universe, else every ticker with prices).
        ingest: Ingest new prices from the configured source first.
        shard_size: Tickers per forecast task (the unit that spreads over Dask workers).
    """
    log = get_run_logger()
    s = settings()
    engine = engine_for(s.database_url)
    lineage = "live"
    explicit = as_of
    today = explicit or _today()
    if explicit is None:
        with engine.connect() as conn:
            cal = TradingCalendar.load(conn, exchange=s.exchange)
        if not cal.is_trading_day(today):
            summary = pipeline.RunSummary(
                None,
                None,
                lineage,
                "not-a-trading-day",
                message=f"{today} is not a trading day; nothing to do",
            )
            log.info(summary.message)
            summary_task(s, summary)
            return summary
    if ingest:
        ingest_sharded(s, tickers=list(tickers) if tickers else None, end=today)
    with engine.connect() as conn:
        names = pipeline.universe(conn, s, tickers)
    resolved = resolve_as_of_task(s, today, names)
    if resolved is None:
        summary = pipeline.RunSummary(
            None, None, lineage, "no-data", message="no prices in the database; ingest first"
        )
        summary_task(s, summary)
        return summary
    with scope_lock(engine, f"pipeline:{lineage}"):
        opened = pipeline.open_run(
            engine,
            resolved,
            lineage=lineage,
            kind="daily",
            redo=rerun or force_retrain,
            flow_run_id=flow_run.id,
        )
        if isinstance(opened, pipeline.RunSummary):
            log.info(opened.message)
            summary_task(s, opened)
            return opened
        run_id = opened
        try:
            units = pipeline.scope_units(s, names)
            scopes = [pipeline.scope_name(lineage, u) for u in units]
            checks = [
                check_task.submit(s, resolved, scope, t, force_retrain)
                for scope, t in zip(scopes, units.values(), strict=True)
            ]
            # Each check's value, not its future, goes to its refit: a failed check then raises
            # its own error here, instead of leaving the refit pending ("UnfinishedRun").
            refits = [
                refit_task.submit(s, resolved, scope, c.result(), run_id)
                for scope, c in zip(scopes, checks, strict=True)
            ]
            outcome_values = [o.result() for o in refits]
            parts_in = shards(units, shard_size)
            parts = forecast_task.map(
                s, resolved, parts_in, run_id, lineage, range(1, len(parts_in) + 1)
            )
            batch = pipeline.ForecastBatch(resolved)
            for part in parts.result():
                batch = batch.merge(part)
            # The shards staged their rows; the write task publishes them in one transaction.
            # quote(): Prefect would otherwise walk every ticker and skip reason in the batch
            # looking for futures; it unwraps it before the call (its stubs don't model that).
            written = write_task(s, run_id, quote(batch), outcome_values)  # type: ignore[call-overload]
        except BaseException as exc:
            pipeline.fail_run(engine, run_id, exc)
            raise
    summary = pipeline.finished_summary(
        engine, run_id, resolved, lineage, outcome_values, batch, written
    )
    summary_task(s, quote(summary))  # type: ignore[call-overload]
    log.info(
        "as of %s: %s; %d tickers forecast, %d skipped",
        resolved,
        summary.decision,
        len(batch.tickers),
        len(batch.skipped),
    )
    return summary


def daily_with_runner(s: Settings | None = None):
    """The daily flow with the task runner chosen in settings."""
    return daily.with_options(task_runner=task_runner(s))
