"""Scale-out: the daily flow's tasks on a Dask cluster of worker processes write the same
forecasts as on the default thread pool, and settings pick the runner."""

from __future__ import annotations

import faulthandler
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from flow_support import AS_OF, ELIGIBLE, HORIZON, forecast_rows, use_database
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import State
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from forecasting.settings import Settings, SettingsError, load_settings
from forecasting_flows.common import SettingsTaskRunner, engine_for, task_runner
from forecasting_flows.daily import daily

ROOT = Path(__file__).resolve().parents[2]


def _daily_entrypoint() -> str:
    config = yaml.safe_load((ROOT / "deploy" / "prefect.yaml").read_text(encoding="utf-8"))
    return next(d["entrypoint"] for d in config["deployments"] if d["name"] == "daily")


@pytest.fixture(autouse=True)
def _fresh_engines() -> Iterator[None]:
    yield
    engine_for.cache_clear()


@pytest.mark.prefect
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_dask_workers_write_the_same_forecasts_as_the_thread_pool(
    sqlite_url: str, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the model trained by a thread-pool run, a rerun of the deployed flow whose tasks run
    on two Dask worker processes (so every task, its Settings and its results cross a pickle
    boundary, and each worker opens its own engine) produces forecast rows identical to the stored ones: the write
    finds every row unchanged. Two shards (three tickers, then two), so both workers forecast."""
    use_database(monkeypatch, sqlite_url, shared_data, tmp_path)
    first = daily(as_of=AS_OF.isoformat(), ingest=False)
    assert first.status == "success" and first.tickers_forecast == ELIGIBLE
    on_threads = forecast_rows(sqlite_url)
    assert len(on_threads) == len(ELIGIBLE) * HORIZON

    # The flow as a worker's engine process loads it, from the deployment's entrypoint, and
    # worker processes rather than threads: tasks, Settings and results are pickled to and fro.
    deployed: Flow[..., Any] = load_flow_from_entrypoint(_daily_entrypoint())
    runner: Any = DaskTaskRunner(
        cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "dashboard_address": None}
    )
    on_dask = deployed.with_options(task_runner=runner)
    # A worker that cannot unpickle a task leaves its future pending forever: fail, don't hang.
    faulthandler.dump_traceback_later(300, exit=True)
    try:
        state: Any = on_dask(
            as_of=AS_OF.isoformat(), ingest=False, rerun=True, shard_size=3, return_state=True
        )
    finally:
        faulthandler.cancel_dump_traceback_later()

    assert isinstance(state, State)
    assert state.is_completed(), state.message
    second = state.result()
    assert second.status == "success"
    assert second.decision == "keep"  # the model trained on this day is fresh
    assert second.written is not None
    assert (second.written.inserted, second.written.replaced) == (0, 0)
    assert second.written.unchanged == len(on_threads)
    assert forecast_rows(sqlite_url) == on_threads
    # The workers reported their task runs to the API: one forecast task per shard.
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    forecast_runs = [r for r in runs if r.name.startswith("forecast-shard-")]
    assert sorted(r.name for r in forecast_runs) == ["forecast-shard-1", "forecast-shard-2"]
    assert all(r.state is not None and r.state.is_completed() for r in forecast_runs)


def test_settings_choose_the_task_runner_when_a_flow_run_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daily flow's runner is chosen from the environment of the process running it, at
    each run: a thread pool by default, Dask on a scheduler address, or a local Dask cluster."""
    selector = daily.task_runner
    assert isinstance(selector, SettingsTaskRunner)
    monkeypatch.delenv("FORECASTING_CONFIG", raising=False)
    monkeypatch.delenv("FORECASTING_TASK_RUNNER", raising=False)
    monkeypatch.delenv("FORECASTING_DASK_ADDRESS", raising=False)
    assert isinstance(selector.duplicate(), ThreadPoolTaskRunner)

    monkeypatch.setenv("FORECASTING_TASK_RUNNER", "dask")
    monkeypatch.setenv("FORECASTING_DASK_ADDRESS", "tcp://10.0.0.5:8786")
    remote = selector.duplicate()
    assert isinstance(remote, DaskTaskRunner)
    assert remote.address == "tcp://10.0.0.5:8786"

    monkeypatch.delenv("FORECASTING_DASK_ADDRESS")
    local = selector.duplicate()
    assert isinstance(local, DaskTaskRunner)
    assert local.address is None
    assert local.cluster_kwargs["n_workers"] == 2
    assert load_settings().task_runner == "dask"


def test_an_unknown_task_runner_is_a_settings_error() -> None:
    """A typo in FORECASTING_TASK_RUNNER fails loudly with the fix, not silently on threads."""
    with pytest.raises(SettingsError, match="FORECASTING_TASK_RUNNER"):
        task_runner(Settings(task_runner="daks"))
