"""A second process for the concurrency tests: it takes a lineage lock, or runs a day, against
the database the test names, and reports on stdout what it did, one line per event.

    python tests/run_worker.py hold URL NAME RELEASE_FILE
    python tests/run_worker.py run URL AS_OF [PAUSE_FILE]

``hold`` prints ``held`` once it has the lock and keeps it until RELEASE_FILE exists. ``run``
runs :func:`~forecasting.pipeline.daily.run_pipeline` as of AS_OF with settings small enough to
train in seconds; with PAUSE_FILE it prints ``publishing`` when it reaches the publish step and
waits there until that file exists. It prints the run's status last (or ``error: ...``).
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

from forecasting.data.db import make_engine
from forecasting.data.locks import scope_lock
from forecasting.errors import ForecastingError


def wait_for(path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {path}")
        time.sleep(0.05)


def say(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str]) -> int:
    command, url = argv[0], argv[1]
    engine = make_engine(url)
    if command == "hold":
        with scope_lock(engine, argv[2]):
            say("held")
            wait_for(Path(argv[3]))
        say("released")
        return 0
    # torch only for a run; the small settings of the daily-run tests, so that both processes
    # train the same way.
    from forecasting.pipeline.daily import run_pipeline

    sys.path.insert(0, str(Path(__file__).resolve().parent / "pipeline"))
    from test_daily_run import small_settings

    as_of = dt.date.fromisoformat(argv[2])
    pause = Path(argv[3]) if len(argv) > 3 else None

    def on_step(name: str) -> None:
        if name == "publish" and pause is not None:
            say("publishing")
            wait_for(pause)

    try:
        summary = run_pipeline(engine, small_settings(url), as_of, today=as_of, on_step=on_step)
    except ForecastingError as exc:
        say(f"error: {type(exc).__name__}: {exc}")
        return 1
    say(str(summary.status))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
