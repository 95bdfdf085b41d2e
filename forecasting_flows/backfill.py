"""Flow ``backfill``: replay the daily pipeline over a past date range, one task per day.

The days run in order (each day's drift check scores the model the day before left behind),
each as a task so that progress is visible in the Prefect UI; a day already completed in the
lineage returns at once, so rerunning a killed backfill resumes it. Tasks exchange plain
dataclasses, never torch objects; caching is off and results are not persisted, because every
input lives in the database.
"""

from __future__ import annotations

import datetime as dt

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from forecasting.errors import InputError
from forecasting.pipeline import backfill as bf
from forecasting.pipeline.config import RunConfig
from forecasting.pipeline.scopes import scoped_lineage
from forecasting_flows.common import (
    FlowDate,
    SettingsTaskRunner,
    engine_for,
    existing_engine,
    flush_run_logs,
    parse_date,
    settings,
)


@task(name="plan", task_run_name="plan", cache_policy=NO_CACHE, persist_result=False)
def plan_task(
    cfg: RunConfig, start: dt.date, end: dt.date, tickers: list[str] | None
) -> tuple[list[dt.date], list[dt.date]]:
    return bf.plan(engine_for(cfg.database_url), cfg, start, end, tickers)


@task(
    name="backfill-day",
    task_run_name="backfill-{as_of}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def day_task(
    cfg: RunConfig,
    as_of: dt.date,
    lineage: str,
    tickers: list[str] | None,
    retrain_every: int | None,
) -> bf.BackfillDay:
    """Compute task: no retries (a failed day is a bug or bad data; rerun the flow to resume)."""
    return bf.run_day(
        engine_for(cfg.database_url),
        cfg,
        as_of,
        lineage=lineage,
        tickers=tickers,
        retrain_every=retrain_every,
    )


@flow(name="backfill", log_prints=True, task_runner=SettingsTaskRunner())
def backfill(
    start: FlowDate,
    end: FlowDate,
    tickers: list[str] | None = None,
    retrain_every: int | None = None,
) -> bf.BackfillResult:
    """Run the daily pipeline as of every trading day from start to end, point-in-time, in a
    lineage of its own (``backfill:<start>:<end>``); days already complete are skipped, so a
    rerun resumes a stopped backfill.

    Args:
        start: First as-of date, YYYY-MM-DD (or YYYYMMDD).
        end: Last as-of date, YYYY-MM-DD (or YYYYMMDD), on or after start.
        tickers: Restrict to these tickers, e.g. ["000063.SZ", "000333.SZ"] (default: the
            configured universe, else every ticker with prices).
        retrain_every: Also retrain from scratch every N trading days (a calendar policy, for
            comparison with the drift check); a lineage of its own.
    """
    log = get_run_logger()
    s = settings()
    first, last = parse_date(start), parse_date(end)
    if first is None or last is None:
        raise InputError(f"backfill needs start and end dates, got {start!r} and {end!r}")
    names = list(tickers) if tickers else None
    cfg = RunConfig.of(s)  # what the tasks get: no token
    with existing_engine(cfg.database_url).connect() as conn:
        lineage = scoped_lineage(
            conn, cfg, bf.lineage_for(first, last, retrain_every=retrain_every), names
        )
    days, gaps = plan_task(cfg, first, last, names)
    result = bf.BackfillResult(lineage, first, last, missing=gaps)
    bar = bf.progress_bar(len(days), None, lineage)  # on a terminal only (the CLI's)
    try:
        for i, as_of in enumerate(days, start=1):
            day = day_task(cfg, as_of, lineage, names, retrain_every)
            result.days.append(day)
            log.info("day %d/%d %s", i, len(days), day.line())
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    log.info(result.message)
    create_markdown_artifact(
        key="backfill-summary",
        markdown=_markdown(result),
        description=f"Backfill {lineage}",
    )
    flush_run_logs()
    return result


def _markdown(result: bf.BackfillResult) -> str:
    lines = [f"# Backfill `{result.lineage}`", "", result.message, ""]
    lines += [
        "| as of | status | decision | rows | skipped | training s |",
        "|---|---|---|---|---|---|",
    ]
    for d in result.days:
        lines.append(
            f"| {d.as_of} | {d.status} | {d.decision or ''}{' (calendar)' if d.forced else ''} "
            f"| {d.n_forecast_rows} | {d.n_skipped} | {d.train_seconds:.1f} |"
        )
    return "\n".join(lines) + "\n"
