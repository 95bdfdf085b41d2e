"""One composition of a day's run: the ``daily`` flow, the library run (``run --no-prefect``) and
a backfill day call the same steps in the same order, so they write identical forecasts for the
same day; and a run commits as one unit, so a failure after its refit changes nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flow_support import AS_OF, ELIGIBLE, HORIZON, use_database
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from forecasting.data.schema import forecasts, model_checks, model_versions, pipeline_runs
from forecasting.model import registry
from forecasting.pipeline.backfill import backfill
from forecasting.pipeline.daily import run_pipeline
from forecasting.settings import load_settings
from forecasting_flows.common import engine_for
from forecasting_flows.daily import daily


@pytest.fixture(autouse=True)
def _fresh_engines() -> Iterator[None]:
    yield
    engine_for.cache_clear()


def _rows(engine: Engine) -> list[tuple[Any, ...]]:
    """Every forecast, without the run that wrote it: what a reader of the table compares."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                forecasts.c.ticker,
                forecasts.c.as_of_date,
                forecasts.c.target_date,
                forecasts.c.horizon,
                forecasts.c.yhat,
                forecasts.c.yhat_lower,
                forecasts.c.yhat_upper,
                forecasts.c.base_close,
                forecasts.c.calendar_source,
            )
        ).all()
    return sorted(tuple(r) for r in rows)


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_harness")
def test_the_flow_the_library_run_and_a_backfill_day_write_identical_rows(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three fresh databases with the same prices; the same day run by the ``daily`` flow, by
    ``run_pipeline`` and as a one-day backfill: the same forecast rows, to the last digit."""
    urls = {}
    # The flow reads its database from the environment: set it up last.
    for name in ("library", "backfill", "flow"):
        folder = tmp_path / name
        folder.mkdir()
        urls[name] = f"sqlite:///{folder / 'forecasting.db'}"
        use_database(monkeypatch, urls[name], shared_data, folder)
    s = load_settings()  # the settings the flow reads, model and policy included

    state = daily(as_of=AS_OF, ingest=False, return_state=True)  # type: ignore[call-overload]
    library = run_pipeline(engine_for(urls["library"]), s, AS_OF)
    replay = backfill(engine_for(urls["backfill"]), s, AS_OF, AS_OF, progress=False)

    assert state.is_completed(), state.message
    assert library.status == "success" and replay.completed == 1
    flow_rows = _rows(engine_for(urls["flow"]))
    assert {r[0] for r in flow_rows} == set(ELIGIBLE)
    assert len(flow_rows) == len(ELIGIBLE) * HORIZON
    assert _rows(engine_for(urls["library"])) == flow_rows
    assert _rows(engine_for(urls["backfill"])) == flow_rows


def _counts(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {
            "forecasts": _rows(engine),
            "checks": conn.execute(select(func.count()).select_from(model_checks)).scalar(),
            "active": registry.active_version(conn, "global"),
            "attempt": registry.latest_attempt(conn, "global"),
        }


@pytest.mark.slow
def test_a_failure_after_the_refit_leaves_the_champion_checks_and_forecasts_as_they_were(
    sqlite_url: str, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Day one trains the champion and publishes. Day two retrains, and then fails before it
    forecasts: the champion is still active, no check row of the failed run exists, the
    forecasts are day one's, the challenger is ``discarded`` and does not count as a refit
    attempt for the drift check's clocks. A rerun of day two then succeeds."""
    day_one = AS_OF - dt.timedelta(days=1)
    use_database(monkeypatch, sqlite_url, shared_data, tmp_path)
    s = load_settings()
    engine = engine_for(sqlite_url)
    assert run_pipeline(engine, s, day_one).status == "success"
    before = _counts(engine)

    class Injected(RuntimeError):
        pass

    def fail_at_forecast(step: str) -> None:
        if step == "forecast":
            raise Injected("injected failure after the refit")

    with pytest.raises(Injected):
        run_pipeline(engine, s, AS_OF, force_retrain=True, on_step=fail_at_forecast)

    after = _counts(engine)
    assert after == before
    with engine.connect() as conn:
        statuses = dict(conn.execute(select(model_versions.c.id, model_versions.c.status)).all())
        failed = conn.execute(
            select(pipeline_runs.c.status, pipeline_runs.c.error).where(
                pipeline_runs.c.as_of_date == AS_OF
            )
        ).one()
    assert sorted(statuses.values()) == ["active", "discarded"]
    after_statuses = statuses
    assert failed.status == "failed" and "injected failure" in failed.error

    again = run_pipeline(engine, s, AS_OF, force_retrain=True)
    assert again.status == "success" and again.decision == "retrain"
    with engine.connect() as conn:
        statuses = dict(conn.execute(select(model_versions.c.id, model_versions.c.status)).all())
    # The rerun's challenger was decided by its publish: promoted, or rejected when it did not
    # beat the champion on the same windows (a forced retrain is not a promotion), never left a
    # candidate; the failed run's stays discarded.
    new = set(statuses) - set(after_statuses)
    assert len(new) == 1 and statuses[new.pop()] in {"active", "rejected"}, statuses
    assert (
        sorted(statuses.values()).count("discarded") == 1 and "candidate" not in statuses.values()
    )
    with engine.connect() as conn:
        recorded = conn.execute(
            select(
                model_checks.c.as_of_date,
                model_checks.c.triggered_by,
                model_checks.c.n_scored,
                model_checks.c.model_age_days,
            ).order_by(model_checks.c.id)
        ).all()
    # Only published runs left check records: the first model, then the forced retrain.
    assert [(d, t) for d, t, _, _ in recorded] == [(day_one, "no-model"), (AS_OF, "forced")]
    assert recorded[1].n_scored is not None and recorded[1].model_age_days == 1
