"""The ``daily`` flow end to end under a real Prefect API, on SQLite and on Postgres, with real
prices: ingest, train, forecast, write, publish artifacts; and a rerun that writes nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from flow_support import AS_OF, ELIGIBLE, HORIZON, SHORT, forecast_rows, use_database
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from sqlalchemy import func, select, update

from forecasting.data.schema import model_versions, pipeline_runs, prices, run_skips
from forecasting.pipeline.summary import RunSummary
from forecasting_flows.common import engine_for
from forecasting_flows.daily import daily

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture(autouse=True)
def _fresh_engines() -> Iterator[None]:
    yield
    engine_for.cache_clear()


def _run(**params: object) -> tuple[RunSummary, UUID]:
    state = daily(**params, return_state=True)  # type: ignore[call-overload]
    assert state.is_completed(), state.message
    summary = state.result()
    assert isinstance(summary, RunSummary)
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    return summary, flow_run_id


def _artifacts(flow_run_id: UUID) -> dict[str, Any]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found if a.key}


def test_daily_forecasts_every_eligible_ticker_then_a_rerun_writes_nothing(
    db_url: str, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run as of a trading day ingests that day's closes, trains the first model and writes
    horizons 1..H for every eligible ticker; the ticker with too little history is reported
    with its reason, in the summary and in the markdown artifact; the table artifact lists the
    next-day forecasts. A second run for the same day changes nothing in the database."""
    # The database holds prices up to the day before; the flow's own ingest brings AS_OF.
    use_database(monkeypatch, db_url, shared_data, tmp_path, through=AS_OF - dt.timedelta(days=1))

    summary, flow_run_id = _run(as_of=AS_OF.isoformat())

    with engine_for(db_url).connect() as conn:
        newest = conn.execute(select(func.max(prices.c.trade_date))).scalar()
        run = conn.execute(select(pipeline_runs)).one()
    assert newest == AS_OF
    assert summary.status == "success"
    assert summary.as_of == AS_OF
    assert summary.decision == "retrain"  # no model yet
    assert summary.tickers_forecast == ELIGIBLE
    assert list(summary.skipped) == [SHORT]
    assert "trading days of history" in summary.skipped[SHORT]
    assert (run.status, run.flow_run_id) == ("success", str(flow_run_id))

    rows = forecast_rows(db_url)
    assert {r[0] for r in rows} == set(ELIGIBLE)
    for ticker in ELIGIBLE:
        mine = [r for r in rows if r[0] == ticker]
        assert [r[3] for r in mine] == list(range(1, HORIZON + 1))
        targets = [r[2] for r in mine]
        assert all(r[1] == AS_OF for r in mine)
        # Trading days after AS_OF, in order: Monday 2019-01-07 first, never a weekend.
        assert targets[0] == dt.date(2019, 1, 7)
        assert targets == sorted(set(targets))
        assert all(d.weekday() < 5 for d in targets)
        assert all(r[4] > 0 for r in mine)

    artifacts = _artifacts(flow_run_id)
    markdown = str(artifacts["daily-summary"].data)
    assert f"{len(ELIGIBLE)} tickers forecast" in markdown
    assert SHORT in markdown and "trading days of history" in markdown
    table = artifacts["next-day-forecasts"].data
    assert all(t in str(table) for t in ELIGIBLE)
    assert SHORT not in str(table)

    again, second_run_id = _run(as_of=AS_OF.isoformat())

    assert again.status == "already-complete"
    assert run.run_id in again.message
    assert forecast_rows(db_url) == rows
    with engine_for(db_url).connect() as conn:
        assert conn.execute(select(func.count()).select_from(pipeline_runs)).scalar() == 1
    assert "already completed" in str(_artifacts(second_run_id)["daily-summary"].data)


def test_a_failed_ingest_fails_the_run_and_a_partial_one_skips_its_tickers(
    sqlite_url: str, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daily run reflects its ingest. When one ticker's ingest fails, the run forecasts the
    others and is ``partial``: that ticker is skipped as ``ingest failed: ...``, in the summary
    and in ``run_skips``, never forecast from the day before's prices. When the ingest fails
    for every ticker, the flow run fails with the reason and nothing is forecast. No source is
    configured: each ticker is ingested from the source it came from (csv)."""
    folder = use_database(
        monkeypatch, sqlite_url, shared_data, tmp_path, through=AS_OF - dt.timedelta(days=1)
    )
    monkeypatch.delenv("FORECASTING_SOURCE")
    monkeypatch.setenv("FORECASTING_TICKERS", ",".join([*ELIGIBLE, SHORT]))
    broken = ELIGIBLE[1]
    (folder / f"{broken.lower()}.daily.csv").unlink()

    summary, _ = _run(as_of=AS_OF.isoformat())

    assert summary.status == "partial"
    assert summary.skipped[broken].startswith("ingest failed: ")
    assert broken not in summary.tickers_forecast
    assert set(summary.tickers_forecast) == set(ELIGIBLE) - {broken}
    with engine_for(sqlite_url).connect() as conn:
        status = conn.execute(select(pipeline_runs.c.status)).scalar_one()
        skips = {r.ticker: r.reason for r in conn.execute(select(run_skips))}
    assert status == "partial"
    assert skips[broken] == summary.skipped[broken]
    assert broken not in {r[0] for r in forecast_rows(sqlite_url)}

    only_short = tmp_path / "only-short"
    only_short.mkdir()
    (only_short / f"{SHORT.lower()}.daily.csv").symlink_to(
        shared_data / "ashare_qfq_panel" / f"{SHORT.lower()}.daily.csv"
    )
    monkeypatch.setenv("FORECASTING_SOURCE_PATH", str(only_short))
    monkeypatch.setenv("FORECASTING_TICKERS", ",".join(ELIGIBLE))
    before = forecast_rows(sqlite_url)

    state = daily(as_of="2019-01-07", return_state=True)  # type: ignore[call-overload]

    assert state.is_failed()
    assert "the ingest failed, so nothing was forecast" in (state.message or "")
    assert forecast_rows(sqlite_url) == before


def test_a_failed_task_s_own_error_is_what_the_run_records_and_shows(
    sqlite_url: str, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the drift check fails (here: the active model's recorded config is not one this
    version can read), the run row and the flow run's state carry that error, not Prefect's
    "UnfinishedRun" of the refit that could not start; nothing is written."""
    use_database(monkeypatch, sqlite_url, shared_data, tmp_path)
    _run(as_of=AS_OF.isoformat(), ingest=False)
    with engine_for(sqlite_url).begin() as conn:
        conn.execute(update(model_versions).values(config='{"cell": "transformer"}'))
    before = forecast_rows(sqlite_url)

    state = daily(as_of=AS_OF.isoformat(), ingest=False, rerun=True, return_state=True)  # type: ignore[call-overload]

    assert state.is_failed()
    with engine_for(sqlite_url).connect() as conn:
        failed = conn.execute(
            select(pipeline_runs.c.status, pipeline_runs.c.error).order_by(
                pipeline_runs.c.started_at.desc()
            )
        ).first()
    assert failed is not None and failed.status == "failed"
    assert "UnfinishedRun" not in failed.error
    kind = failed.error.split(":")[0]
    assert kind in (state.message or ""), (failed.error, state.message)
    assert forecast_rows(sqlite_url) == before


def test_a_missing_checkpoint_is_retired_and_the_run_retrains(
    sqlite_url: str, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The active model's checkpoint file is gone (a shared model folder not mounted): the
    next run retires that version with the reason and retrains from scratch, instead of
    failing every day until someone edits the database."""
    use_database(monkeypatch, sqlite_url, shared_data, tmp_path)
    monkeypatch.setenv("FORECASTING_CHECKPOINT_STORE", "files")
    _run(as_of=AS_OF.isoformat(), ingest=False)
    for checkpoint in (tmp_path / "models").rglob("*.pt"):
        checkpoint.unlink()

    summary, _ = _run(as_of=AS_OF.isoformat(), ingest=False, rerun=True)

    assert summary.status == "success" and summary.decision == "retrain"
    with engine_for(sqlite_url).connect() as conn:
        first = conn.execute(select(model_versions).where(model_versions.c.id == 1)).one()
    assert first.status == "retired"
    assert "cannot be read" in first.retired_reason


def test_a_daily_run_and_a_backfill_never_create_a_missing_database(
    sqlite_url: str, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scheduled run on a SQLite file that went missing fails in one line saying to run
    ``forecasting init-db`` or an ingest; it recreates nothing (it would otherwise re-ingest
    all history and retrain from scratch as if nothing had happened)."""
    from flow_support import UNSET, flow_env, price_folder

    from forecasting_flows.backfill import backfill

    for key in UNSET:
        monkeypatch.delenv(key, raising=False)
    for key, value in flow_env(sqlite_url, price_folder(shared_data, tmp_path), tmp_path).items():
        monkeypatch.setenv(key, value)
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    assert not path.exists()

    for state in (
        daily(as_of=AS_OF.isoformat(), return_state=True),  # type: ignore[call-overload]
        backfill(start=AS_OF, end=AS_OF, return_state=True),  # type: ignore[call-overload]
    ):
        assert state.is_failed()
        assert "no forecasting database at" in (state.message or ""), state.message
        assert "forecasting init-db" in (state.message or "")
    assert not path.exists()
