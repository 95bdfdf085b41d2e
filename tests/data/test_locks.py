"""The lineage lock, taken by two real processes, on SQLite and Postgres."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from forecasting.data.locks import LockLostError, scope_lock, verify

WORKER = Path(__file__).resolve().parents[1] / "run_worker.py"


Worker = Callable[..., subprocess.Popen[str]]


@pytest.fixture()
def worker(tmp_path: Path) -> Iterator[Worker]:
    """Start ``tests/run_worker.py`` processes; each is killed and reaped at the end."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        with open(tmp_path / f"worker-{len(procs)}.err", "w") as err:
            proc = subprocess.Popen(
                [sys.executable, str(WORKER), *args],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
            )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        assert proc.stdout is not None
        proc.stdout.close()


def read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, f"worker exited early with {proc.wait()}"
    return line


def held_within(proc: subprocess.Popen[str], seconds: float) -> bool:
    """Whether ``proc`` reports ``held`` within ``seconds`` (it keeps waiting otherwise)."""
    import selectors

    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    ready = sel.select(timeout=seconds)
    sel.close()
    if not ready:
        return False
    return read_line(proc) == "held"


def test_second_process_waits_for_the_first(
    db_url: str, engine: Engine, tmp_path: Path, worker: Worker
) -> None:
    """A second process asking for a lineage's lock waits until the first releases it, and
    gets it then; a lock of another lineage is not held up."""
    release_a, release_b, release_c = (tmp_path / n for n in ("a", "b", "c"))
    a = worker("hold", db_url, "pipeline:live", str(release_a))
    assert read_line(a) == "held"
    b = worker("hold", db_url, "pipeline:live", str(release_b))
    c = worker("hold", db_url, "pipeline:backfill:x", str(release_c))
    try:
        assert held_within(c, 30), "another lineage's lock must not wait"
        assert not held_within(b, 2.0), "the second process took a held lock"
        release_a.touch()
        assert a.wait(30) == 0
        assert held_within(b, 30)
    finally:
        for path in (release_a, release_b, release_c):
            path.touch()
    assert b.wait(30) == 0 and c.wait(30) == 0


def test_a_killed_holder_frees_the_lock(
    db_url: str, engine: Engine, tmp_path: Path, worker: Worker
) -> None:
    """SIGKILL of the holder releases the lock (the kernel or the server drops it with the
    process), so a killed run never blocks the next one."""
    a = worker("hold", db_url, "pipeline:live", str(tmp_path / "never"))
    assert read_line(a) == "held"
    os.kill(a.pid, signal.SIGKILL)
    a.wait(30)
    started = time.monotonic()
    with scope_lock(engine, "pipeline:live"):
        assert time.monotonic() - started < 30


def _wait_until_gone(engine: Engine, pid: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    query = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p")
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if not conn.execute(query, {"p": pid}).scalar():
                return
        time.sleep(0.05)
    raise AssertionError(f"backend {pid} still there {timeout_s} s after pg_terminate_backend")


@pytest.mark.postgres
def test_verify_fails_once_the_lock_connection_is_gone(pg_engine: Engine) -> None:
    """When the connection holding a Postgres advisory lock is terminated, verify() in another
    transaction raises LockLostError, and leaving the lock block does not raise."""
    with scope_lock(pg_engine, "pipeline:live") as token:
        with pg_engine.begin() as conn:
            verify(conn, token)  # still held
            conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": token.pid})
        # pg_terminate_backend only signals: the backend, and its lock, can outlive the call.
        _wait_until_gone(pg_engine, token.pid)
        with pg_engine.begin() as conn, pytest.raises(LockLostError, match="pipeline:live"):
            verify(conn, token)
