"""What every flow shares: settings read once at the flow's edge, engines per process, and the
task runner chosen in settings (thread pool by default, Dask given a scheduler address)."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Any

from prefect.task_runners import ThreadPoolTaskRunner
from sqlalchemy.engine import Engine

from forecasting.db import init_db, make_engine
from forecasting.settings import Settings, load_settings


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """One engine per database URL per process (tasks on Dask workers build their own)."""
    engine = make_engine(url)
    init_db(engine)
    return engine


def settings() -> Settings:
    return load_settings()


def task_runner(s: Settings | None = None) -> Any:
    s = s or load_settings()
    if s.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if s.dask_address:
            return DaskTaskRunner(address=s.dask_address)
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True}
        )
    return ThreadPoolTaskRunner(max_workers=4)


def parse_date(value: str | dt.date | None) -> dt.date | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))
