"""What every flow shares: settings read once at the flow's edge, engines per process, and the
task runner chosen in settings (thread pool by default, Dask on request)."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import replace
from functools import lru_cache
from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from sqlalchemy.engine import Engine

from forecasting.db import init_db, make_engine
from forecasting.settings import Secret, Settings, SettingsError, load_settings

#: The Prefect Secret block that holds the tushare token when ``TUSHARE_TOKEN`` is unset on the
#: worker. Create it once with ``prefect block create secret`` or
#: ``Secret(value=...).save("tushare-token")``; override the name with
#: ``FORECASTING_TUSHARE_SECRET_BLOCK``.
TUSHARE_SECRET_BLOCK = "tushare-token"


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """One engine per database URL per process (tasks on Dask workers build their own)."""
    engine = make_engine(url)
    init_db(engine)
    return engine


def settings() -> Settings:
    """Settings for this flow run: the environment and ``forecasting.toml`` of the process that
    runs it, with the tushare token from ``TUSHARE_TOKEN`` or, failing that, from the Prefect
    Secret block ``tushare-token``. The token is never logged (``Secret`` masks its repr)."""
    s = load_settings()
    if not s.tushare_token:
        token = _token_from_secret_block(
            os.environ.get("FORECASTING_TUSHARE_SECRET_BLOCK") or TUSHARE_SECRET_BLOCK
        )
        if token:
            s = replace(s, tushare_token=Secret(token))
    return s


def _token_from_secret_block(name: str) -> str:
    from prefect.blocks.system import Secret as SecretBlock

    try:
        # load() is sync here (no running event loop in a sync flow); Any hides its async twin.
        block: Any = SecretBlock.load(name)
    except ValueError:
        # No such block: the token is simply not configured; the tushare source says so, with
        # the fix, if and when it is needed (demo and csv sources need no token).
        return ""
    return str(block.get()).strip()


def task_runner(s: Settings | None = None) -> TaskRunner[Any]:
    """The task runner named in settings: ``thread`` (default) or ``dask``, on the scheduler at
    ``dask_address`` when set, else on a local cluster of two single-threaded processes."""
    s = s or load_settings()
    if s.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if s.dask_address:
            return DaskTaskRunner(address=s.dask_address)
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True}
        )
    if s.task_runner != "thread":
        raise SettingsError(
            f"task_runner={s.task_runner!r} is not known; set FORECASTING_TASK_RUNNER to "
            "'thread' or 'dask'"
        )
    return ThreadPoolTaskRunner(max_workers=4)


class SettingsTaskRunner(TaskRunner[Any]):
    """Chooses the real task runner from settings when a flow run starts.

    A flow decorated with a fixed runner would ignore ``FORECASTING_TASK_RUNNER`` under a
    deployment, where the worker (or ``forecasting serve``) loads the flow from its entrypoint and
    never calls :func:`task_runner`. Prefect's flow engine starts every run with
    ``flow.task_runner.duplicate()``; this runner answers that call with the runner that
    :func:`task_runner` picks from the settings of the process running the flow, so the worker's
    environment decides. It never runs tasks itself.
    """

    def duplicate(self) -> Any:  # a different runner type on purpose; see the class docstring
        return task_runner(load_settings())

    def submit(self, task: Any, parameters: Any, wait_for: Any = None, dependencies: Any = None):
        raise RuntimeError(
            "SettingsTaskRunner only chooses a task runner; a flow run submits to the runner "
            "that its duplicate() returns"
        )


def parse_date(value: str | dt.date | None) -> dt.date | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))
