"""Two runs of one lineage at once, in two real processes, on SQLite and Postgres: the second
waits for the first, and a run that lost its lock publishes nothing."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine
from test_daily_run import load_panel, small_settings

from forecasting.data.schema import forecasts, model_versions, pipeline_runs
from forecasting.pipeline.daily import run_pipeline

WORKER = Path(__file__).resolve().parents[1] / "run_worker.py"
AS_OF = dt.date(2019, 1, 4)


def start(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with open(tmp_path / f"worker-{args[0]}-{os.urandom(3).hex()}.err", "w") as err:
        return subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )


def finish(proc: subprocess.Popen[str]) -> tuple[int, list[str]]:
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out.split()


@pytest.mark.slow
def test_two_identical_runs_at_once_make_one_run(
    db_url: str, engine: Engine, shared_data: Path, tmp_path: Path
) -> None:
    """Two processes run the same day of the live lineage at the same time: one computes it,
    the other waits for the lock and then finds the day complete. One success row, one model
    version, one set of forecasts."""
    load_panel(engine, shared_data, AS_OF)
    procs = [start(tmp_path, "run", db_url, AS_OF.isoformat()) for _ in range(2)]
    results = [finish(p) for p in procs]
    assert [code for code, _ in results] == [0, 0]
    assert sorted(out[-1] for _, out in results) == ["already-complete", "success"]
    with engine.connect() as conn:
        statuses = conn.execute(select(pipeline_runs.c.status)).scalars().all()
        n_versions = conn.execute(select(func.count()).select_from(model_versions)).scalar()
        run_ids = set(conn.execute(select(forecasts.c.run_id)).scalars())
    assert statuses == ["success"]
    assert n_versions == 1
    assert len(run_ids) == 1


@pytest.mark.slow
@pytest.mark.postgres
def test_a_run_that_lost_its_lock_publishes_nothing(
    pg_url: str, pg_engine: Engine, shared_data: Path, tmp_path: Path
) -> None:
    """The connection holding a run's advisory lock is terminated while the run trains; a
    second run of the same day then takes the lock and completes. The first aborts before it
    publishes: it is recorded failed with the reason, exits 1, and every forecast row is the
    second run's."""
    load_panel(pg_engine, shared_data, AS_OF)
    pause = tmp_path / "go"
    first = start(tmp_path, "run", pg_url, AS_OF.isoformat(), str(pause))
    try:
        assert first.stdout is not None
        assert first.stdout.readline().strip() == "publishing"
        with pg_engine.begin() as conn:
            pids = conn.execute(
                text("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted")
            ).scalars()
            for pid in pids:
                conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        second = run_pipeline(pg_engine, small_settings(pg_url), AS_OF, today=AS_OF)
        assert second.status == "success"
    finally:
        pause.touch()
    code, out = finish(first)
    assert code == 1
    assert "LockLostError" in " ".join(out)
    with pg_engine.connect() as conn:
        rows = conn.execute(
            select(pipeline_runs.c.run_id, pipeline_runs.c.status, pipeline_runs.c.error)
        ).all()
        run_ids = set(conn.execute(select(forecasts.c.run_id)).scalars())
    by_status = {r.status: r for r in rows}
    assert sorted(by_status) == ["failed", "success"]
    assert "lock" in by_status["failed"].error
    assert run_ids == {second.run_id}
