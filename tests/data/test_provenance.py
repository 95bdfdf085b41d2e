"""Each ticker remembers its source; the demo market never writes into real data."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from forecasting.data.ingest import ingest
from forecasting.data.provenance import sources_of
from forecasting.data.schema import prices, securities
from forecasting.data.sources import make_source
from forecasting.errors import InputError

END = dt.date(2019, 1, 4)
TICKER = "000063.SZ"


def panel(shared: Path) -> Path:
    return shared / "ashare_qfq_panel" / "000063.sz.daily.csv"


def test_the_source_is_recorded_and_the_demo_stays_out_of_real_data(
    engine: Engine, shared_data: Path
) -> None:
    """A csv ingest records csv as the ticker's source; a demo ingest into that database is
    refused in one line (no synthetic bar lands in a real series, none under a real code)."""
    ingest(engine, make_source("csv", path=panel(shared_data)), end=END, progress=False)
    with engine.connect() as conn:
        assert conn.execute(select(securities.c.source)).scalar_one() == "csv"
        assert sources_of(conn, [TICKER, "600000.SH"]) == {TICKER: "csv"}
        before = conn.execute(select(func.count()).select_from(prices)).scalar()

    with pytest.raises(InputError, match=r"demo market writes only into a database of its own"):
        ingest(engine, make_source("demo"), end=END, progress=False)

    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(prices)).scalar() == before
        assert set(conn.execute(select(prices.c.source).distinct()).scalars()) == {"csv"}


def test_a_database_of_the_demo_s_own_takes_the_demo(sqlite_engine: Engine) -> None:
    """Into an empty database (or one holding demo prices only) the demo market goes, and its
    tickers remember demo as their source."""
    source = make_source("demo", n_tickers=2, start="2026-10-01")
    ingest(sqlite_engine, source, end=dt.date(2026, 10, 30), progress=False)
    ingest(sqlite_engine, source, end=dt.date(2026, 11, 6), progress=False)
    with sqlite_engine.connect() as conn:
        recorded = set(conn.execute(select(securities.c.source)).scalars())
    assert recorded == {"demo"}


def test_ingest_without_a_source_says_how_to_set_one(tmp_path: Path) -> None:
    """`forecasting ingest` with no --source and no FORECASTING_SOURCE ingests nothing (no
    default demo market) and says how to set one, exit 1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FORECASTING_", "TUSHARE"))}
    env["FORECASTING_DATABASE_URL"] = f"sqlite:///{tmp_path / 'x.db'}"
    done = subprocess.run(
        [str(Path(sys.executable).with_name("forecasting")), "ingest"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: no price source is configured; set FORECASTING_SOURCE")
    assert len(done.stderr.splitlines()) == 1
