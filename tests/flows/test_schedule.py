"""The schedule as it runs in production: a real ``prefect server start`` with its scheduler, the
project's ``deploy/prefect.yaml`` deployed with ``prefect deploy``, a real process worker, and
then the same through ``forecasting serve``. Every process is a real one, started the way the
README tells users to start it, and stopped at the end.

What it asserts is what a user relies on: the server's scheduler puts ``daily/daily`` runs on the
calendar at the next weekday 17:30 Asia/Shanghai; a ``daily`` run and a ``backfill`` triggered
through the API (the backfill from the ``prefect deployment run`` command line, dates as
YYYYMMDD) complete and write their rows; the run pages carry the library's INFO lines, task
runs named for what they do, and summary artifacts. (With SQLAlchemy 2.1 beside Prefect 3.8 the
scheduler fails on every loop and the first assertion times out.)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx
import pytest
from flow_support import AS_OF, ELIGIBLE, HORIZON, UNSET, flow_env, ingest_through, price_folder
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
    TaskRunFilter,
)
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_URL, temporary_settings
from sqlalchemy import select

from forecasting.data.schema import forecasts, pipeline_runs
from forecasting_flows.common import engine_for

pytestmark = [pytest.mark.prefect, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SHANGHAI = ZoneInfo("Asia/Shanghai")
POOL = "forecasting-process"
T = TypeVar("T")


@dataclass
class Server:
    url: str
    env: dict[str, str]  # what every process talking to this server gets
    logs: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FORECASTING_"))}
    for key in UNSET:
        env.pop(key, None)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW="ignore",
        PYTHONUNBUFFERED="1",
        TQDM_DISABLE="1",
    )
    return env


def _start(args: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> subprocess.Popen:
    # A session of its own, so that stopping it stops its children (flow-run subprocesses).
    # The child gets its own copy of the log's descriptor, so ours is closed right away.
    with log.open("ab") as out:
        return subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
    # Whatever the process left behind in its session goes too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _wait(what: str, probe: Callable[[], T | None], timeout: float, logs: Path) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    tail = logs.read_text(errors="replace")[-4000:] if logs.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


def _prefect(server: Server, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(BIN / "prefect"), *args],
        env=server.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``prefect server start`` on a free loopback port, with its own PREFECT_HOME."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    logs = home / "server.log"
    proc = _start(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        _base_env(home),
        logs,
    )

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"prefect server exited:\n{logs.read_text()[-4000:]}")
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait("prefect server to answer /api/health", healthy, 120, logs)
        client_home = home / "client"
        client_home.mkdir()
        yield Server(url, {**_base_env(client_home), "PREFECT_API_URL": url}, logs)
    finally:
        _stop(proc)
    assert "Can't evaluate bulk DML" not in logs.read_text(errors="replace")


def _client(server: Server) -> Any:
    return temporary_settings({PREFECT_API_URL: server.url})


def _next_fire(now: dt.datetime) -> dt.datetime:
    """The first weekday 17:30 Shanghai time after ``now``."""
    local = now.astimezone(SHANGHAI)
    day = local.date()
    while True:
        fire = dt.datetime.combine(day, dt.time(17, 30), SHANGHAI)
        if fire > local and fire.weekday() < 5:
            return fire
        day += dt.timedelta(days=1)


def _scheduled_runs(client: SyncPrefectClient, deployment_id: uuid.UUID) -> list[FlowRun]:
    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(state={"type": {"any_": ["SCHEDULED"]}}),
    )
    return sorted(runs, key=lambda r: r.expected_start_time or dt.datetime.max)


def _assert_scheduled_at_the_next_weekday_evening(server: Server, deployment: str) -> None:
    with _client(server), get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment)
        runs = _wait(
            f"the scheduler to schedule runs of {deployment}",
            lambda: _scheduled_runs(client, dep.id),
            60,
            server.logs,
        )
    starts = [r.expected_start_time.astimezone(SHANGHAI) for r in runs if r.expected_start_time]
    assert starts[0] == _next_fire(dt.datetime.now(dt.UTC)), starts
    assert all((s.hour, s.minute, s.weekday() < 5) == (17, 30, True) for s in starts), starts
    assert len(set(starts)) == len(starts)


def _finished(server: Server, flow_run_id: uuid.UUID, timeout: float, logs: Path) -> FlowRun:
    with _client(server), get_client(sync_client=True) as client:

        def final() -> FlowRun | None:
            run = client.read_flow_run(flow_run_id)
            return run if run.state is not None and run.state.is_final() else None

        run = _wait(f"flow run {flow_run_id} to finish", final, timeout, logs)
    assert run.state is not None and run.state.is_completed(), (
        run.state,
        logs.read_text(errors="replace")[-4000:],
    )
    return run


def _trigger(server: Server, deployment: str, parameters: dict[str, Any]) -> uuid.UUID:
    with _client(server), get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment)
        run = client.create_flow_run_from_deployment(dep.id, parameters=parameters)
    return run.id


def _run_page(
    server: Server, flow_run_id: uuid.UUID, last_line: str = "Finished in state Completed"
) -> tuple[list[str], set[str], set[str]]:
    """What the UI shows for a run: its log lines, its task runs' names, its artifact keys.

    Logs are shipped in batches, so the last ones may land a while after the run finished: read
    until the flow's own last line (``last_line``, logged as it returns) is there, or 60 s."""
    log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    with _client(server), get_client(sync_client=True) as client:
        deadline = time.monotonic() + 60
        logs = client.read_logs(log_filter=log_filter)
        while time.monotonic() < deadline and not any(last_line in log.message for log in logs):
            time.sleep(1)
            logs = client.read_logs(log_filter=log_filter)
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            task_run_filter=TaskRunFilter(),
        )
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return (
        [log.message for log in logs],
        {t.name for t in tasks},
        {a.key for a in artifacts if a.key},
    )


def _assert_daily_page(server: Server, flow_run_id: uuid.UUID) -> None:
    messages, tasks, artifacts = _run_page(server, flow_run_id, f"as of {AS_OF}: retrain; ")
    text = "\n".join(messages)
    assert {"check-global", "refit-global", "forecast-shard-1", "publish"} <= tasks, tasks
    assert {"daily-summary", "next-day-forecasts", "ingest-summary"} <= artifacts, artifacts
    # Prefect's INFO lines and the library's own: ingest, the decision with its reason,
    # training, forecast counts.
    assert "Beginning flow run" in text, text
    assert "ingest" in text and "inserted" in text, text
    assert f"scope global as of {AS_OF}: retrain" in text, text
    assert "training on" in text and "epoch 1/1: train loss" in text, text
    assert "trained lstm model on" in text, text
    assert f"as of {AS_OF}: retrain; {len(ELIGIBLE)} tickers forecast, 1 skipped" in text, text


def _rows(url: str, kind: str) -> list[tuple[Any, ...]]:
    with engine_for(url).connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                select(pipeline_runs.c.as_of_date, pipeline_runs.c.status, pipeline_runs.c.lineage)
                .where(pipeline_runs.c.kind == kind)
                .order_by(pipeline_runs.c.as_of_date)
            )
        ]


def _forecast_keys(url: str, lineage: str) -> set[tuple[str, dt.date, int]]:
    with engine_for(url).connect() as conn:
        return {
            (t, d, h)
            for t, d, h in conn.execute(
                select(forecasts.c.ticker, forecasts.c.as_of_date, forecasts.c.horizon)
                .join(pipeline_runs, pipeline_runs.c.run_id == forecasts.c.run_id)
                .where(pipeline_runs.c.lineage == lineage)
            )
        }


def _database(shared_data: Path, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A fresh SQLite file with prices up to the day before AS_OF (the run ingests AS_OF), and
    the environment that points flow runs at it."""
    url = f"sqlite:///{tmp_path / 'forecasting.db'}"
    folder = price_folder(shared_data, tmp_path)
    ingest_through(url, folder, AS_OF - dt.timedelta(days=1))
    return url, flow_env(url, folder, tmp_path)


def test_a_worker_runs_the_deployed_schedule_a_daily_run_and_a_backfill(
    server: Server, shared_data: Path, tmp_path: Path
) -> None:
    """``prefect work-pool create`` and ``prefect --no-prompt deploy --all --prefect-file
    deploy/prefect.yaml`` from the repository root; the scheduler schedules daily/daily at the
    next weekday 17:30 Shanghai time; a process worker runs a daily run triggered through the
    API and a backfill triggered with ``prefect deployment run -p start=YYYYMMDD``; a date the
    flows cannot read is refused when the run is created."""
    url, env = _database(shared_data, tmp_path)
    _prefect(server, "work-pool", "create", "--type", "process", POOL)
    deployed = _prefect(
        server, "--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml"
    )
    assert "daily/daily" in deployed.stdout and "backfill/backfill" in deployed.stdout

    _assert_scheduled_at_the_next_weekday_evening(server, "daily/daily")

    refused = _prefect(
        server, "deployment", "run", "daily/daily", "-p", "as_of=2018/12/05", check=False
    )
    assert refused.returncode != 0
    assert "2018/12/05" in refused.stdout + refused.stderr

    logs = tmp_path / "worker.log"
    worker = _start(
        [str(BIN / "prefect"), "worker", "start", "--pool", POOL],
        {**server.env, **env, "PREFECT_WORKER_QUERY_SECONDS": "1"},
        logs,
    )
    try:
        daily_run = _trigger(server, "daily/daily", {"as_of": AS_OF.isoformat()})
        _finished(server, daily_run, 240, logs)
        started = _prefect(
            server,
            "deployment",
            "run",
            "backfill/backfill",
            "-p",
            f"start={AS_OF - dt.timedelta(days=1):%Y%m%d}",
            "-p",
            f"end={AS_OF:%Y%m%d}",
        )
        backfill_run = uuid.UUID(started.stdout.split("UUID:")[1].split()[0])
        _finished(server, backfill_run, 240, logs)
    finally:
        _stop(worker)

    _assert_daily_page(server, daily_run)
    assert _rows(url, "daily") == [(AS_OF, "success", "live")]
    expected = {(t, AS_OF, h) for t in ELIGIBLE for h in range(1, HORIZON + 1)}
    assert _forecast_keys(url, "live") == expected
    start = AS_OF - dt.timedelta(days=1)
    lineage = f"backfill:{start}:{AS_OF}"
    assert _rows(url, "backfill") == [(start, "success", lineage), (AS_OF, "success", lineage)]
    assert _forecast_keys(url, lineage) == {
        (t, d, h) for t in ELIGIBLE for d in (start, AS_OF) for h in range(1, HORIZON + 1)
    }
    _, tasks, artifacts = _run_page(server, backfill_run)
    assert {"plan", f"backfill-{start}", f"backfill-{AS_OF}"} <= tasks
    assert "backfill-summary" in artifacts
    engine_for.cache_clear()


def test_forecasting_serve_schedules_and_runs_the_same_deployments(
    server: Server, shared_data: Path, tmp_path: Path
) -> None:
    """``forecasting serve`` against the same server: it registers daily/daily, whose runs the
    scheduler puts at the next weekday 17:30 Shanghai time, and runs a daily run triggered
    through the API in a subprocess whose run page shows the library's INFO lines (the CLI's
    quiet Prefect logging must not reach served runs)."""
    url, env = _database(shared_data, tmp_path)
    logs = tmp_path / "serve.log"
    serve = _start(
        [str(BIN / "forecasting"), "serve"],
        {**server.env, **env, "PREFECT_RUNNER_POLL_FREQUENCY": "1"},
        logs,
    )
    try:

        def served() -> bool:
            if serve.poll() is not None:
                raise AssertionError(f"forecasting serve exited:\n{logs.read_text()[-4000:]}")
            return "Your deployments are being served" in logs.read_text(errors="replace")

        _wait("forecasting serve to register its deployments", served, 120, logs)
        _assert_scheduled_at_the_next_weekday_evening(server, "daily/daily")
        daily_run = _trigger(server, "daily/daily", {"as_of": AS_OF.isoformat()})
        _finished(server, daily_run, 240, logs)
    finally:
        # At once: the run's whole log must be on the server when its state says Completed.
        _stop(serve, signal.SIGINT)

    _assert_daily_page(server, daily_run)
    assert _rows(url, "daily") == [(AS_OF, "success", "live")]
    assert _forecast_keys(url, "live") == {
        (t, AS_OF, h) for t in ELIGIBLE for h in range(1, HORIZON + 1)
    }
    engine_for.cache_clear()


def test_the_deployed_parameter_forms_describe_every_field(server: Server) -> None:
    """Every parameter of the deployed flows has a description; dates are dates; the terminal-
    only ``progress`` switch and the internal ``lineage`` are not on the forms."""
    with _client(server), get_client(sync_client=True) as client:
        deps = client.read_deployments()
    if not deps:  # the tests that deploy need the real data and skipped without it: deploy here
        _prefect(server, "work-pool", "create", "--type", "process", POOL)
        _prefect(server, "--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml")
        with _client(server), get_client(sync_client=True) as client:
            deps = client.read_deployments()
    assert deps, "prefect deploy registered no deployment"
    for dep in deps:
        schema = dep.parameter_openapi_schema or {}
        props = schema.get("properties", {})
        assert props, dep.name
        assert not {"progress", "lineage"} & set(props), dep.name
        for name, prop in props.items():
            assert prop.get("description"), (dep.name, name)
            if name in ("as_of", "start", "end"):
                formats = {branch.get("format") for branch in prop["anyOf"]}
                assert "date" in formats, (dep.name, name)


_KILLED_AFTER_RETURN = """
import os, sys
from forecasting_flows.ingest import ingest
state = ingest(end=sys.argv[1], return_state=True)
print(state.state_details.flow_run_id, state.type.value, flush=True)
os._exit(0)  # as if the process were killed the moment the run is Completed
"""


def test_a_runs_whole_log_is_on_the_server_when_it_completes(
    server: Server, shared_data: Path, tmp_path: Path
) -> None:
    """A flow sends its queued log lines before it returns: a process that dies the moment its
    run is Completed (a served run whose ``forecasting serve`` is stopped, a worker shut down)
    still leaves the whole log on the run page. Prefect alone sends the last batch at exit."""
    url = f"sqlite:///{tmp_path / 'forecasting.db'}"
    env = {**server.env, **flow_env(url, price_folder(shared_data, tmp_path), tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_AFTER_RETURN, AS_OF.isoformat()],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    flow_run_id, state = done.stdout.split()[-2:]
    assert state == "COMPLETED", done.stdout + done.stderr
    messages, tasks, artifacts = _run_page(server, uuid.UUID(flow_run_id), "inserted")
    text = "\n".join(messages)
    assert "ingest-1" in tasks and "ingest-summary" in artifacts, (tasks, artifacts)
    assert "inserted" in text, text
    assert "Finished in state Completed" in text, text  # the ingest task's own last line
