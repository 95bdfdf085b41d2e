"""Deployments: ``deploy/prefect.yaml`` passes Prefect's own parser, ``prefect deploy`` registers
it, ``forecasting serve`` builds the same three deployments, and a backfill triggered through
its deployment writes forecasts."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from flow_support import AS_OF, ELIGIBLE, HORIZON, use_database
from prefect.blocks.system import Secret as SecretBlock
from prefect.cli.deploy._models import (
    DeploymentConfig,
    PrefectYamlModel,
    RawScheduleConfig,
    WorkPoolConfig,
)
from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import (
    ConcurrencyLimitConfig,
    ConcurrencyLimitStrategy,
    FlowRun,
    State,
)
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.flow_engine import load_flow_and_flow_run, run_flow
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect.server.schemas.schedules import CronSchedule as ServerCronSchedule
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.testing.cli import invoke_and_assert
from prefect.utilities.callables import parameter_schema
from prefect.workers.process import ProcessWorker
from sqlalchemy import select

from forecasting.data.schema import forecasts, pipeline_runs
from forecasting.settings import SettingsError
from forecasting_flows.common import TUSHARE_SECRET_BLOCK, engine_for, settings
from forecasting_flows.serve import DAILY_CRON, TIMEZONE, build_deployments, serve

ROOT = Path(__file__).resolve().parents[2]
PREFECT_YAML = ROOT / "deploy" / "prefect.yaml"
POOL = "forecasting-process"
SHANGHAI = ZoneInfo("Asia/Shanghai")


def _raw() -> dict[str, Any]:
    data = yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _raw_deployments() -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in _raw()["deployments"]}


def test_prefect_yaml_passes_prefects_own_schema_with_nothing_ignored() -> None:
    """The file validates with the model ``prefect deploy`` parses it with, and holds no key that
    model would silently drop (it ignores unknown keys, so a typo would vanish unnoticed)."""
    raw = _raw()
    model = PrefectYamlModel.model_validate(raw)

    assert [d.name for d in model.deployments] == ["daily", "backfill", "ingest"]
    top_level = set(PrefectYamlModel.model_fields) | {"prefect-version", "definitions"}
    assert set(raw) <= top_level
    for d in raw["deployments"]:
        assert set(d) <= set(DeploymentConfig.model_fields), d["name"]
        assert set(d["work_pool"]) <= set(WorkPoolConfig.model_fields), d["name"]
        for schedule in d["schedules"]:
            RawScheduleConfig.model_validate(schedule)  # forbids unknown keys
    for d in model.deployments:
        assert d.work_pool is not None and d.work_pool.name == POOL


def test_prefect_yaml_holds_no_secret() -> None:
    """No token or password in the deployment file: they come from the worker's environment."""
    text = PREFECT_YAML.read_text(encoding="utf-8")
    lines = [ln.split("#", 1)[0] for ln in text.splitlines()]
    body = "\n".join(lines).lower()
    for word in ("token", "password", "secret", "postgresql://", "env:"):
        assert word not in body, word


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_harness")
def test_the_tushare_token_comes_from_the_environment_else_a_secret_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker without TUSHARE_TOKEN reads the token from the Prefect Secret block
    ``tushare-token``; TUSHARE_TOKEN wins when set; neither shows in the settings' repr; with
    neither, the token is empty (the tushare source then says how to set it)."""
    monkeypatch.delenv("FORECASTING_CONFIG", raising=False)
    monkeypatch.delenv("FORECASTING_TUSHARE_SECRET_BLOCK", raising=False)
    monkeypatch.delenv("TUSHARE_TOKEN", raising=False)
    block: Any = SecretBlock(value="from-the-block-0123")  # type: ignore[arg-type]  # str is coerced
    block_id = block.save(TUSHARE_SECRET_BLOCK, overwrite=True)
    try:
        from_block = settings()
        monkeypatch.setenv("TUSHARE_TOKEN", "from-the-env-4567")
        from_env = settings()
        monkeypatch.delenv("TUSHARE_TOKEN")
        monkeypatch.setenv("FORECASTING_TUSHARE_SECRET_BLOCK", "no-such-block")
        neither = settings()
    finally:
        with get_client(sync_client=True) as client:
            client.delete_block_document(block_id)

    assert from_block.tushare_token.value == "from-the-block-0123"
    assert from_env.tushare_token.value == "from-the-env-4567"
    assert neither.tushare_token.value == ""
    for s in (from_block, from_env):
        assert s.tushare_token.value not in repr(s)


def test_daily_fires_on_weekday_evenings_after_the_shanghai_close() -> None:
    """The daily schedule, converted as ``prefect deploy`` converts it and expanded by the
    server's scheduler code, fires at 17:30 Shanghai time Monday to Friday, and only then."""
    config = _raw_deployments()["daily"]["schedules"]
    assert len(config) == 1
    schedule = _schedule_config_to_deployment_schedule(config[0])["schedule"]
    assert isinstance(schedule, CronSchedule)
    server = ServerCronSchedule.model_validate(schedule.model_dump())
    friday_evening = dt.datetime(2019, 1, 4, 18, 0, tzinfo=SHANGHAI)

    fires = asyncio.run(server.get_dates(n=6, start=friday_evening))

    local = [d.astimezone(SHANGHAI) for d in fires]
    assert [d.date() for d in local] == [
        dt.date(2019, 1, 7),
        dt.date(2019, 1, 8),
        dt.date(2019, 1, 9),
        dt.date(2019, 1, 10),
        dt.date(2019, 1, 11),
        dt.date(2019, 1, 14),
    ]
    assert {(d.hour, d.minute) for d in local} == {(17, 30)}
    assert _raw_deployments()["backfill"]["schedules"] == []
    assert _raw_deployments()["ingest"]["schedules"] == []


def test_daily_runs_one_at_a_time_and_queues_the_next() -> None:
    """Concurrency limit 1 with the ENQUEUE strategy: a late run waits instead of overlapping."""
    spec = _raw_deployments()["daily"]["concurrency_limit"]
    config = ConcurrencyLimitConfig(**spec)
    assert config.limit == 1
    assert config.collision_strategy == ConcurrencyLimitStrategy.ENQUEUE


def test_every_entrypoint_is_a_module_path_that_imports_its_flow() -> None:
    """Each entrypoint names a module of the installed package, and loading it yields that
    module's flow itself, called like its deployment. A file path would load the flow under a
    made-up module name, and Dask workers, unable to import it, could not unpickle its tasks
    (the run would hang). backfill requires start and end and takes tickers."""
    for name, d in _raw_deployments().items():
        module_name, _, attr = d["entrypoint"].partition(":")
        assert not module_name.endswith(".py"), d["entrypoint"]
        flow: Flow[..., Any] = load_flow_from_entrypoint(d["entrypoint"])
        assert flow is getattr(importlib.import_module(module_name), attr)
        assert flow.name == name
        if name == "backfill":
            schema = parameter_schema(flow)
            assert schema.required == ["start", "end"]
            assert "tickers" in schema.properties


def test_forecasting_serve_builds_the_deployments_of_prefect_yaml() -> None:
    """``forecasting serve`` serves the same names, flows, schedule and concurrency as the
    server-and-worker setup, only without a work pool."""
    raw = _raw_deployments()
    built = {d.name: d for d in build_deployments()}

    assert list(built) == list(raw)
    for name, d in built.items():
        assert d.flow_name == name
        assert d.entrypoint == raw[name]["entrypoint"].replace(":", ".")
        assert d.work_pool_name is None
        assert sorted(d.tags) == sorted(raw[name]["tags"])
    daily = built["daily"]
    assert [s.schedule for s in daily.schedules or []] == [
        CronSchedule(cron=DAILY_CRON, timezone=TIMEZONE)
    ]
    assert raw["daily"]["schedules"] == [{"cron": DAILY_CRON, "timezone": TIMEZONE}]
    assert daily.concurrency_limit == 1
    assert daily.concurrency_options is not None
    assert daily.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.ENQUEUE
    assert not built["backfill"].schedules and not built["ingest"].schedules


def test_serve_refuses_to_start_without_a_server() -> None:
    """Without PREFECT_API_URL no schedule would ever fire, so serve stops and says what to do."""
    with (
        temporary_settings(restore_defaults={PREFECT_API_URL}),
        pytest.raises(SettingsError, match="prefect server start"),
    ):
        serve()


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_harness")
def test_prefect_deploy_then_a_backfill_run_through_its_deployment_writes_forecasts(
    sqlite_url: str, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``prefect --no-prompt deploy --all --prefect-file deploy/prefect.yaml``, run from the
    repository root, registers the three deployments in the process work pool with the daily
    schedule and concurrency. A backfill triggered through its deployment with start and end,
    then executed the way a worker's engine process executes it (load the flow run and its flow
    from the API, run it), completes and writes horizons 1..H for every eligible ticker on each
    trading day of the range, in the backfill's own lineage."""
    use_database(monkeypatch, sqlite_url, shared_data, tmp_path)
    monkeypatch.chdir(ROOT)  # the pull step `prefect deploy` records is this directory
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(POOL)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=POOL,
                    type="process",
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                )
            )

    invoke_and_assert(
        ["--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml"],
        expected_output_contains=["daily/daily", "backfill/backfill", "ingest/ingest"],
        echo=False,
    )

    with get_client(sync_client=True) as client:
        daily = client.read_deployment_by_name("daily/daily")
        backfill = client.read_deployment_by_name("backfill/backfill")
        ingest = client.read_deployment_by_name("ingest/ingest")
    assert {daily.work_pool_name, backfill.work_pool_name, ingest.work_pool_name} == {POOL}
    assert [s.schedule for s in daily.schedules] == [
        CronSchedule(cron=DAILY_CRON, timezone=TIMEZONE)
    ]
    assert daily.global_concurrency_limit is not None
    assert daily.global_concurrency_limit.limit == 1
    assert daily.concurrency_options is not None
    assert daily.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.ENQUEUE
    assert backfill.schedules == [] and ingest.schedules == []
    assert backfill.parameter_openapi_schema is not None
    assert backfill.parameter_openapi_schema["required"] == ["start", "end"]

    start = AS_OF - dt.timedelta(days=1)
    scheduled = run_deployment(
        "backfill/backfill",
        parameters={"start": start.isoformat(), "end": AS_OF.isoformat()},
        timeout=0,
    )
    assert isinstance(scheduled, FlowRun)  # sync: called outside an event loop
    flow_run, flow = load_flow_and_flow_run(scheduled.id)
    state = run_flow(flow, flow_run=flow_run, return_type="state")

    assert isinstance(state, State)
    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        finished = client.read_flow_run(scheduled.id)
    assert finished.state is not None and finished.state.is_completed()
    assert finished.deployment_id == backfill.id
    assert finished.parameters["start"] == start.isoformat()
    lineage = f"backfill:{start.isoformat()}:{AS_OF.isoformat()}"
    with engine_for(sqlite_url).connect() as conn:
        runs = conn.execute(
            select(pipeline_runs.c.as_of_date, pipeline_runs.c.status, pipeline_runs.c.lineage)
            .where(pipeline_runs.c.kind == "backfill")
            .order_by(pipeline_runs.c.as_of_date)
        ).all()
        rows = conn.execute(
            select(forecasts.c.ticker, forecasts.c.as_of_date, forecasts.c.horizon)
        ).all()
    assert [tuple(r) for r in runs] == [
        (start, "success", lineage),
        (AS_OF, "success", lineage),
    ]
    expected = {(t, d, h) for t in ELIGIBLE for d in (start, AS_OF) for h in range(1, HORIZON + 1)}
    assert set(rows) == expected
    assert len(rows) == len(expected)
    engine_for.cache_clear()
