"""Flow ``daily``: ingest → check → decide → fine-tune / retrain / keep → forecast → write → summary.

Run by the ``daily`` deployment after the A-share close (Asia/Shanghai). Each step is a task
that calls into ``forecasting.pipeline``; tasks exchange plain dataclasses, never torch objects.
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

from flows.backfill import link_latest_report
from flows.common import SettingsTaskRunner, engine_for, parse_date, settings, task_runner
from flows.ingest import ingest_sharded
from forecasting import pipeline
from forecasting.calendar import TradingCalendar
from forecasting.forecasts import WriteResult
from forecasting.locks import scope_lock
from forecasting.settings import Settings

TASK_OPTS: dict[str, Any] = dict(cache_policy=NO_CACHE, persist_result=False)


@task(**TASK_OPTS)
def resolve_as_of_task(s: Settings, today: dt.date, tickers: list[str] | None) -> dt.date | None:
    return pipeline.resolve_as_of(engine_for(s.database_url), today, tickers)


@task(**TASK_OPTS)
def check_task(
    s: Settings, as_of: dt.date, scope: str, tickers: list[str], force_retrain: bool
) -> pipeline.ScopeCheck:
    return pipeline.check_scope(
        engine_for(s.database_url), s, as_of, scope, tickers, force_retrain=force_retrain
    )


@task(**TASK_OPTS)
def refit_task(
    s: Settings, as_of: dt.date, check: pipeline.ScopeCheck, run_id: str
) -> pipeline.ScopeOutcome:
    """Compute task: no retries (a failed training is a bug or bad data, not a network blip)."""
    return pipeline.apply_decision(engine_for(s.database_url), s, as_of, check, run_id=run_id)


@task(retries=2, retry_delay_seconds=5, **TASK_OPTS)
def forecast_task(
    s: Settings, as_of: dt.date, units: dict[str, list[str]], run_id: str, lineage: str
) -> pipeline.ForecastBatch:
    """Forecast one shard and stage its rows in the database; returns counts and skips, not
    rows. Retried like the other database writers: a retry re-stages the same tickers, and the
    forward pass it repeats is deterministic and cheap next to training."""
    return pipeline.forecast_shard(
        engine_for(s.database_url), s, as_of, units, run_id, lineage=lineage
    )


@task(retries=2, retry_delay_seconds=5, **TASK_OPTS)
def write_task(
    s: Settings,
    run_id: str,
    batch: pipeline.ForecastBatch,
    outcomes: list[pipeline.ScopeOutcome],
) -> WriteResult:
    """I/O task: one transaction; the upsert is idempotent, so a retry cannot duplicate."""
    return pipeline.write(engine_for(s.database_url), run_id, batch, outcomes)


@task(**TASK_OPTS)
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
    link_latest_report(s)
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
    as_of: str | None = None,
    force_retrain: bool = False,
    rerun: bool = False,
    tickers: Sequence[str] | None = None,
    ingest: bool = True,
    lineage: str = "live",
    shard_size: int = 250,
) -> pipeline.RunSummary:
    """Forecast the next H trading days for every eligible ticker, as of ``as_of`` (default:
    the latest trading day with prices on or before today in Asia/Shanghai — under a
    deployment, today is the scheduled date)."""
    log = get_run_logger()
    s = settings()
    engine = engine_for(s.database_url)
    explicit = parse_date(as_of)
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
            checks = [
                check_task.submit(s, resolved, pipeline.scope_name(lineage, u), t, force_retrain)
                for u, t in units.items()
            ]
            # Passing a future makes the refit wait for its check; Prefect's stubs don't model it.
            outcomes = [
                refit_task.submit(s, resolved, c, run_id)  # type: ignore[call-overload]
                for c in checks
            ]
            outcome_values = [o.result() for o in outcomes]
            parts = forecast_task.map(s, resolved, shards(units, shard_size), run_id, lineage)
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
