"""``pipeline_runs``: one row per daily (or backfill-day) run, written before any work starts
so that a crash leaves a ``failed``/``running`` record rather than nothing."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, insert, select, update
from sqlalchemy.engine import Connection, Engine

from forecasting.data.schema import pipeline_runs


class RunStatus(StrEnum):
    """A ``pipeline_runs`` row's status."""

    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"


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
    """The newest successful run for ``as_of`` in ``lineage``, if any."""
    row = conn.execute(
        select(pipeline_runs)
        .where(
            and_(
                pipeline_runs.c.as_of_date == as_of,
                pipeline_runs.c.lineage == lineage,
                pipeline_runs.c.status == RunStatus.SUCCESS,
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
