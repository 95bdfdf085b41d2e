"""What the Prefect flow tests share: five real A-share tickers in a fresh database, and settings
small enough that a daily run trains in seconds.

Settings reach the flows the way they do in production, through the environment that the flow
reads at its edge (``monkeypatch.setenv``), never through arguments.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from forecasting.data.ingest import ingest
from forecasting.data.schema import forecasts
from forecasting.data.sources import make_source
from forecasting_flows.common import engine_for

# Four tickers with years of history, and 601066.SH, listed in June 2018: with
# FORECASTING_POLICY_MIN_HISTORY=150 it has too little history on AS_OF and must be skipped.
FILES = ("000063.sz", "000157.sz", "000166.sz", "000333.sz", "601066.sh")
ELIGIBLE = ["000063.SZ", "000157.SZ", "000166.SZ", "000333.SZ"]
SHORT = "601066.SH"
AS_OF = dt.date(2019, 1, 4)  # a Friday; the panel ends on Monday 2019-01-07
HORIZON = 5

TINY_MODEL = {
    "FORECASTING_MODEL_MAX_EPOCHS": "1",
    "FORECASTING_MODEL_HIDDEN_SIZE": "8",
    "FORECASTING_MODEL_NUM_LAYERS": "1",
    "FORECASTING_MODEL_INPUT_LEN": "20",
    "FORECASTING_MODEL_HORIZON": str(HORIZON),
    "FORECASTING_MODEL_VAL_DAYS": "20",
    "FORECASTING_MODEL_HISTORY_DAYS": "300",
    "FORECASTING_MODEL_DEVICE": "cpu",
    "FORECASTING_POLICY_MIN_HISTORY": "150",
}


def price_folder(shared_data: Path, tmp_path: Path) -> Path:
    """A folder of links to the five tickers' files in the shared data (nothing copied)."""
    folder = tmp_path / "prices"
    folder.mkdir(exist_ok=True)
    for name in FILES:
        link = folder / f"{name}.daily.csv"
        if not link.exists():
            link.symlink_to(shared_data / "ashare_qfq_panel" / f"{name}.daily.csv")
    return folder


def use_database(
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    shared_data: Path,
    tmp_path: Path,
    *,
    through: dt.date = AS_OF,
) -> Path:
    """Point the flows at ``url`` with tiny model settings and the csv source, and ingest the
    five tickers' prices up to ``through``. Returns the price folder."""
    folder = price_folder(shared_data, tmp_path)
    for key in UNSET:
        monkeypatch.delenv(key, raising=False)
    for key, value in flow_env(url, folder, tmp_path).items():
        monkeypatch.setenv(key, value)
    ingest_through(url, folder, through)
    return folder


#: Variables that must not reach a flow under test from the developer's shell.
UNSET = ("FORECASTING_CONFIG", "FORECASTING_TICKERS", "TUSHARE_TOKEN")


def flow_env(url: str, folder: Path, tmp_path: Path) -> dict[str, str]:
    """The environment a flow run reads its settings from: ``url``, the csv source on
    ``folder``, tiny model settings, files under ``tmp_path``."""
    return {
        **TINY_MODEL,
        "FORECASTING_DATABASE_URL": url,
        "FORECASTING_SOURCE": "csv",
        "FORECASTING_SOURCE_PATH": str(folder),
        "FORECASTING_TASK_RUNNER": "thread",
        "FORECASTING_MODEL_DIR": str(tmp_path / "models"),
        "FORECASTING_REPORT_DIR": str(tmp_path / "reports"),
    }


def ingest_through(url: str, folder: Path, through: dt.date) -> None:
    """Load the folder's prices up to ``through`` into ``url``."""
    report = ingest(engine_for(url), make_source("csv", path=folder), end=through, progress=False)
    assert report.status == "success", report.summary()


def forecast_rows(url: str, digits: int = 4) -> list[tuple[Any, ...]]:
    """Every stored forecast as (ticker, as_of, target_date, horizon, yhat rounded), sorted."""
    with engine_for(url).connect() as conn:
        rows = conn.execute(
            select(
                forecasts.c.ticker,
                forecasts.c.as_of_date,
                forecasts.c.target_date,
                forecasts.c.horizon,
                forecasts.c.yhat,
            )
        ).all()
    return sorted((t, a, d, h, round(y, digits)) for t, a, d, h, y in rows)
