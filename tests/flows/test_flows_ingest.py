"""The ingest flow spreads per-ticker fetches over tasks, and stays idempotent."""

from __future__ import annotations

from pathlib import Path

import pytest
from flow_support import FILES, price_folder
from sqlalchemy import func, select

from forecasting.data.schema import ingest_runs, prices
from forecasting_flows.common import engine_for

pytestmark = pytest.mark.prefect


def test_sharded_ingest_flow_then_a_rerun_changes_nothing(
    prefect_harness: None,
    sqlite_url: str,
    shared_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Five tickers in shards of two run as three tasks (three ingest runs); a second flow run
    inserts nothing and leaves the table as it was."""
    from forecasting_flows.ingest import ingest

    folder = price_folder(shared_data, tmp_path)
    monkeypatch.setenv("FORECASTING_DATABASE_URL", sqlite_url)
    monkeypatch.delenv("FORECASTING_TICKERS", raising=False)
    monkeypatch.delenv("FORECASTING_CONFIG", raising=False)
    result = ingest(source="csv", path=str(folder), end="2019-01-07", shard_size=2)
    assert result["status"] == "success"
    assert len(result["run_ids"]) == 3
    engine = engine_for(sqlite_url)
    with engine.connect() as conn:
        tickers = conn.execute(select(prices.c.ticker).distinct()).scalars().all()
        before = conn.execute(select(func.count()).select_from(prices)).scalar()
        assert conn.execute(select(func.sum(ingest_runs.c.rows_inserted))).scalar() == before
    assert len(tickers) == len(FILES)

    again = ingest(source="csv", path=str(folder), end="2019-01-07", shard_size=2)
    assert again["status"] == "success"
    assert "0 inserted" in again["summary"]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(prices)).scalar() == before
