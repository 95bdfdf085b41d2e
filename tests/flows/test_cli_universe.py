"""`forecasting ingest --universe` and `forecasting prices` in a real process, against the
tushare stub: the whole-market options as a person types them."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from market_fixtures import market_stub
from tushare_stub import TushareStub

FORECASTING = str(Path(sys.executable).with_name("forecasting"))


@pytest.fixture()
def stub() -> Iterator[TushareStub]:
    with market_stub(row_limit=10_000) as server:  # as many rows a reply as tushare's
        yield server


def _cli(tmp_path: Path, stub: TushareStub, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FORECASTING_", "TUSHARE"))}
    env.update(
        FORECASTING_DATABASE_URL=f"sqlite:///{tmp_path / 'cli.db'}",
        FORECASTING_INGEST_TUSHARE_URL=stub.url,
        FORECASTING_INGEST_TUSHARE_CALLS_PER_MINUTE="6000",
        TUSHARE_TOKEN=stub.token,
        TQDM_DISABLE="1",
    )
    return subprocess.run(
        [FORECASTING, *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
    )


def test_ingest_an_index_universe_then_list_its_reference_data(
    tmp_path: Path, stub: TushareStub
) -> None:
    """--universe index:000300.SH ingests every member of the span (the one that left the index
    included) and `prices` shows each one's name, board, industry and listing dates."""
    done = _cli(
        tmp_path,
        stub,
        "ingest",
        "--source",
        "tushare",
        "--universe",
        "index:000300.SH",
        "--start",
        "2019-03-01",
        "--end",
        "2019-08-30",
    )
    assert done.returncode == 0, done.stderr
    assert "4 tickers (0 failed)" in done.stdout
    listed = _cli(tmp_path, stub, "prices", "--format", "csv")
    assert listed.returncode == 0, listed.stderr
    rows = {r["ticker"]: r for r in csv.DictReader(io.StringIO(listed.stdout))}
    assert sorted(rows) == ["000001.SZ", "600000.SH", "600001.SH", "688001.SH"]
    assert rows["688001.SH"]["board"] == "star" and rows["688001.SH"]["list_date"] == "2019-03-04"
    assert rows["600001.SH"]["delist_date"] == "2019-07-01"
    assert rows["000001.SZ"]["name"] == "平安银行" and rows["000001.SZ"]["industry"] == "银行"


def test_tushare_with_no_universe_says_how_to_name_one(tmp_path: Path, stub: TushareStub) -> None:
    """No tickers and no universe from tushare is one line naming --universe all, not
    "success, 0 tickers"."""
    done = _cli(tmp_path, stub, "ingest", "--source", "tushare", "--end", "2019-08-30")
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--universe all" in errors[0]
    assert stub.calls("daily") == []
