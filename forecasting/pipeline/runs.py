"""``pipeline_runs``: one row per daily (or backfill-day) run, written before any work starts
so that a crash leaves a ``failed``/``running`` record rather than nothing.

A running run beats: a thread refreshes its ``heartbeat_at`` (:func:`beating`). The next run
marks the ones whose process is gone ``abandoned`` (:func:`mark_abandoned`): in its own
lineage every run still ``running`` (the lineage lock it holds proves no other is alive), in
the others those whose heartbeat is older than ``stale_after``."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine

from forecasting.data.schema import forecast_staging, pipeline_runs

log = logging.getLogger(__name__)

#: How often a running run refreshes its heartbeat, and how long without one makes a run of
#: another lineage count as abandoned.
HEARTBEAT_EVERY = dt.timedelta(seconds=30)
STALE_AFTER = dt.timedelta(minutes=10)


class RunStatus(StrEnum):
    """A ``pipeline_runs`` row's status."""

    RUNNING = "running"
    SUCCESS = "success"
    PARTIAL = "partial"  # published, with tickers skipped for their inputs (run_skips)
    FAILED = "failed"
    ABANDONED = "abandoned"  # its process died; marked by a later run


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    as_of_date: dt.date
    lineage: str
    kind: str
    status: RunStatus
    model_version_id: int | None
    n_forecast: int | None
    finished_at: dt.datetime | None


def start_run(
    engine: Engine,
    as_of: dt.date,
    *,
    kind: str = "daily",
    lineage: str = "live",
    flow_run_id: str | None = None,
    run_id: str | None = None,
) -> str:
    run_id = run_id or str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(
            insert(pipeline_runs).values(
                run_id=run_id,
                flow_run_id=flow_run_id,
                kind=kind,
                lineage=lineage,
                as_of_date=as_of,
                started_at=utcnow(),
                heartbeat_at=utcnow(),
                status=RunStatus.RUNNING,
            )
        )
    return run_id


def finish_run(
    conn: Connection,
    run_id: str,
    *,
    status: RunStatus,
    decision: str | None = None,
    model_version_id: int | None = None,
    n_forecast: int | None = None,
    n_skipped: int | None = None,
    counts: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    conn.execute(
        update(pipeline_runs)
        .where(pipeline_runs.c.run_id == run_id)
        .values(
            finished_at=utcnow(),
            status=status,
            decision=decision,
            model_version_id=model_version_id,
            n_forecast=n_forecast,
            n_skipped=n_skipped,
            counts=json.dumps(counts or {}, sort_keys=True, default=str),
            error=error,
        )
    )


def completed_run(conn: Connection, as_of: dt.date, lineage: str = "live") -> RunRecord | None:
    """The newest completed run (``success`` or ``partial``) for ``as_of`` in ``lineage``, if
    any; a partial day is recomputed with ``--rerun`` once its missing prices are in."""
    row = conn.execute(
        select(pipeline_runs)
        .where(
            and_(
                pipeline_runs.c.as_of_date == as_of,
                pipeline_runs.c.lineage == lineage,
                pipeline_runs.c.status.in_((RunStatus.SUCCESS, RunStatus.PARTIAL)),
            )
        )
        .order_by(pipeline_runs.c.finished_at.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    return RunRecord(
        run_id=row.run_id,
        as_of_date=row.as_of_date,
        lineage=row.lineage,
        kind=row.kind,
        status=RunStatus(row.status),
        model_version_id=row.model_version_id,
        n_forecast=row.n_forecast,
        finished_at=row.finished_at,
    )


@contextmanager
def beating(engine: Engine, run_id: str, every: dt.timedelta = HEARTBEAT_EVERY) -> Iterator[None]:
    """Refresh ``run_id``'s heartbeat every ``every`` from a thread while the body runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every.total_seconds()):
            try:
                with engine.begin() as conn:
                    conn.execute(
                        update(pipeline_runs)
                        .where(pipeline_runs.c.run_id == run_id)
                        .values(heartbeat_at=utcnow())
                    )
            except Exception as exc:  # a missed beat is not the run's failure
                log.warning("run %s: heartbeat failed (%s)", run_id, exc)

    thread = threading.Thread(target=beat, name=f"heartbeat-{run_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def mark_abandoned(
    conn: Connection,
    lineage: str,
    *,
    stale_after: dt.timedelta = STALE_AFTER,
    now: dt.datetime | None = None,
) -> list[str]:
    """Mark ``abandoned`` the runs whose process is gone, drop what they staged, and return
    their ids: every ``running`` run of ``lineage`` (call this holding its lock) and the runs of
    other lineages without a heartbeat for ``stale_after``."""
    pr = pipeline_runs.c
    cutoff = (now or utcnow()) - stale_after
    beat = (pr.heartbeat_at.is_(None) & (pr.started_at < cutoff)) | (pr.heartbeat_at < cutoff)
    ids = [
        r[0]
        for r in conn.execute(
            select(pr.run_id).where(
                pr.status == RunStatus.RUNNING, or_(pr.lineage == lineage, beat)
            )
        )
    ]
    if ids:
        conn.execute(delete(forecast_staging).where(forecast_staging.c.run_id.in_(ids)))
        conn.execute(
            update(pipeline_runs)
            .where(pr.run_id.in_(ids))
            .values(
                status=RunStatus.ABANDONED,
                finished_at=utcnow(),
                error="abandoned: its process stopped without finishing it (found by a later run)",
            )
        )
        log.warning("marked %d run(s) abandoned: %s", len(ids), ", ".join(ids))
    return ids
