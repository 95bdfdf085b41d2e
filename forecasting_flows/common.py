"""What every flow shares: settings read once at the flow's edge, engines per process, and the
task runner chosen in settings (thread pool by default, Dask on request)."""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import os
import threading
from dataclasses import replace
from typing import Annotated, Any

from prefect.context import get_run_context
from prefect.exceptions import MissingContextError
from prefect.logging.handlers import APILogHandler
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from pydantic import BeforeValidator, WithJsonSchema
from sqlalchemy.engine import Engine

from forecasting import clock
from forecasting.data.db import init_db, make_engine, open_existing
from forecasting.settings import Secret, Settings, SettingsError, load_settings

#: The Prefect Secret block that holds the tushare token when ``TUSHARE_TOKEN`` is unset on the
#: worker. Create it once with ``prefect block create secret`` or
#: ``Secret(value=...).save("tushare-token")``; override the name with
#: ``FORECASTING_TUSHARE_SECRET_BLOCK``.
TUSHARE_SECRET_BLOCK = "tushare-token"


class _Engines:
    """One engine per database URL per process (tasks on Dask workers build their own), each
    disposed when the cache is cleared or the process exits, so no pooled connection is left
    for the garbage collector to close."""

    def __init__(self) -> None:
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()

    def __call__(self, url: str) -> Engine:
        with self._lock:
            engine = self._engines.get(url)
            if engine is None:
                engine = make_engine(url)
                init_db(engine)
                self._engines[url] = engine
            return engine

    def __reduce__(self) -> str:
        # Pickled (into a task shipped to a Dask worker) by name: the worker uses its own cache.
        return "engine_for"

    def cache_clear(self) -> None:
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            engine.dispose()


engine_for = _Engines()
atexit.register(engine_for.cache_clear)


def existing_engine(url: str) -> Engine:
    """:func:`engine_for` on a database that must already exist: a daily run or a backfill never
    creates one (a SQLite file that went missing would otherwise be recreated empty, and the
    run would re-ingest all history and retrain from scratch as if nothing had happened).

    Raises:
        DatabaseError: naming the database and saying to run ``forecasting init-db`` or an
            ingest first.
    """
    open_existing(url).dispose()
    return engine_for(url)


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
        from prefect_dask.task_runners import DaskTaskRunner

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

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Prefect's TaskRunner is untyped

    def submit(
        self, task: Any, parameters: Any, wait_for: Any = None, dependencies: Any = None
    ) -> Any:
        raise RuntimeError(
            "SettingsTaskRunner only chooses a task runner; a flow run submits to the runner "
            "that its duplicate() returns"
        )


def parse_date(value: str | int | dt.date | None) -> dt.date | None:
    """A date in the formats the CLI takes (:func:`forecasting.clock.parse_date`), also as the
    number that ``prefect deployment run -p start=20181203`` sends (``-p`` reads JSON)."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return clock.parse_date(str(value))


#: A flow parameter that is a date: the run form shows a date picker; the server accepts
#: ``2018-12-03``, ``"20181203"`` and ``20181203`` and refuses anything else when the run is
#: created (``-p as_of=2018/12/05`` never starts a run that would then fail).
FlowDate = Annotated[
    dt.date,
    BeforeValidator(parse_date),
    WithJsonSchema(
        {
            "anyOf": [
                # Prefect's server checks patterns, not formats: the pattern is what refuses
                # 2018/12/05; the format gives the run form its date picker.
                {"type": "string", "format": "date", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
                {
                    "type": "string",
                    "pattern": r"^(19|20)\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])$",
                },
                {"type": "integer", "minimum": 19000101, "maximum": 20991231},
            ]
        }
    ),
]


class _InRunOnly(logging.Filter):
    """Pass a record to the Prefect API only inside a flow or task run (elsewhere the API
    handler would warn about the missing run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            get_run_context()
        except MissingContextError:
            return False
        return True


def forward_library_logs(name: str = "forecasting") -> None:
    """Send the library's log lines (ingest summary, check numbers, the decision and its
    reason, training epochs and losses, forecast counts) to the Prefect API, so that the run
    page of a served or worker run shows them beside the flow's own. Idempotent; the library
    logs at INFO unless someone configured it already."""
    logger = logging.getLogger(name)
    if not any(isinstance(h, APILogHandler) for h in logger.handlers):
        handler = APILogHandler()
        handler.addFilter(_InRunOnly())
        logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def flush_run_logs() -> None:
    """Send the log lines still queued for the Prefect API now, and wait (at most 5 s).

    Prefect ships log lines in batches, every two seconds, and sends the last batch only as the
    process exits. A flow calls this just before it returns, so that its whole log is on the
    server by the time its state says Completed: a process stopped right after (``forecasting
    serve`` interrupted, a worker shut down) then loses none of it."""
    APILogHandler().flush()


# Every process that runs a flow or task imports this module first (the worker's engine process,
# `forecasting serve`'s subprocesses, Dask workers unpickling a task).
forward_library_logs()
