"""Serve the three deployments from one long-running process: ``forecasting serve``.

For a single machine: no work pool, no worker. Prefect's ``serve`` registers the deployments with
the Prefect server and runs each flow run in a subprocess of this process. The scheduler lives in
the server, so a server must be running (``prefect server start``) and ``PREFECT_API_URL`` must
point at it; the temporary server Prefect starts on its own runs no scheduler.

The names, schedule and concurrency are the ones in ``deploy/prefect.yaml`` (the server-and-worker
setup); ``tests/flows/test_deploy.py`` keeps the two in step.
"""

from __future__ import annotations

from typing import Any

from prefect import Flow
from prefect import serve as prefect_serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron
from prefect.settings import get_current_settings
from prefect.types.entrypoint import EntrypointType

from forecasting.settings import SettingsError

#: Weekdays at 17:30 Shanghai time: after the 15:00 close, once tushare has published the day's
#: bars. Holidays that fall on weekdays are left to the flow, which checks the trading calendar.
DAILY_CRON = "30 17 * * 1-5"
TIMEZONE = "Asia/Shanghai"


def one_at_a_time() -> ConcurrencyLimitConfig:
    """At most one running flow run of the deployment; a run that fires meanwhile waits."""
    return ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def build_deployments() -> list[RunnerDeployment]:
    """The ``daily`` (scheduled), ``backfill`` and ``ingest`` (on demand) deployments."""
    from forecasting_flows.backfill import backfill
    from forecasting_flows.daily import daily
    from forecasting_flows.ingest import ingest

    return [
        _deployment(
            daily,
            name="daily",
            schedules=[Cron(DAILY_CRON, timezone=TIMEZONE)],
            concurrency_limit=one_at_a_time(),
            tags=["forecasting", "scheduled"],
        ),
        _deployment(backfill, name="backfill", tags=["forecasting", "manual"]),
        _deployment(ingest, name="ingest", tags=["forecasting", "manual"]),
    ]


def _deployment(flow: Flow[..., Any], **options: Any) -> RunnerDeployment:
    # Module-path entrypoint, as in prefect.yaml: a run started from the entrypoint imports
    # forecasting_flows.daily by name, so Dask workers can unpickle its tasks. _sync: the deployment itself
    # even when called from async code, never a coroutine (Prefect's stubs don't know _sync).
    to_deployment: Any = flow.to_deployment
    deployment: RunnerDeployment = to_deployment(
        entrypoint_type=EntrypointType.MODULE_PATH, _sync=True, **options
    )
    return deployment


def serve(limit: int | None = None) -> None:
    """Serve the deployments until interrupted; ``limit`` caps concurrent flow runs.

    Raises:
        SettingsError: when ``PREFECT_API_URL`` is unset, because then no schedule would fire.
    """
    if not get_current_settings().api.url:
        raise SettingsError(
            "PREFECT_API_URL is not set, so nothing would run on schedule (Prefect's temporary "
            "server has no scheduler). Start a server with `prefect server start`, then run "
            "`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api` and serve again"
        )
    prefect_serve(*build_deployments(), limit=limit)
