"""Ingesting files as people save them: whole files compared, one broken file or row costs
only itself, GBK and float dates read, and everything left out is counted."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.engine import Engine

from forecasting.data.ingest import IngestReport, ingest
from forecasting.data.schema import ingest_runs, prices, rejected_rows, revisions
from forecasting.data.sources.files import FileSource

D = dt.date
TODAY = D(2024, 3, 1)


def write(
    path: Path, days: int = 20, start: str = "2024-01-02", base: float = 10.0
) -> list[dt.date]:
    """A tushare-style CSV (newest first) of ``days`` weekday bars; returns the dates."""
    dates = [d.date() for d in pd.bdate_range(start, periods=days)]
    lines = ["trade_date,open,high,low,close,vol"]
    for i, d in reversed(list(enumerate(dates))):
        c = round(base + 0.1 * i, 2)
        lines.append(f"{d:%Y%m%d},{c - 0.05:.2f},{c + 0.1:.2f},{c - 0.1:.2f},{c:.2f},{1000 + i}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dates


def go(engine: Engine, path: Path, **kw: Any) -> IngestReport:
    kw.setdefault("today", TODAY)
    kw.setdefault("progress", False)
    return ingest(engine, FileSource(path, encoding=kw.pop("encoding", None)), **kw)


def stored(engine: Engine) -> dict[tuple[str, dt.date], float]:
    with engine.connect() as conn:
        rows = conn.execute(select(prices.c.ticker, prices.c.trade_date, prices.c.close)).all()
    return {(t, d): c for t, d, c in rows}


def run_status(engine: Engine, report: IngestReport) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(ingest_runs).where(ingest_runs.c.run_id == report.run_id)).one()


def test_a_broken_file_fails_alone_and_the_others_land(engine: Engine, tmp_path: Path) -> None:
    """In a folder, a file without a close column is recorded as failed with its reason; the
    other files land; the run is partial, with its ingest_runs row."""
    write(tmp_path / "600519.SH.csv")
    write(tmp_path / "600036.SH.csv", base=30.0)
    (tmp_path / "000001.SZ.csv").write_text("date,price\n2024-01-02,1\n", encoding="utf-8")
    (tmp_path / "notes.csv").write_text("no,prices,here\n1,2,3\n", encoding="utf-8")
    report = go(engine, tmp_path)
    assert report.status == "partial"
    assert report.inserted == 40
    assert "no close column" in (report.tickers["000001.SZ"].error or "")
    assert "no date column" in (report.tickers[str(tmp_path / "notes.csv")].error or "")
    row = run_status(engine, report)
    assert row.status == "partial" and row.rows_inserted == 40
    assert "000001.SZ" in row.error and "notes.csv" in row.error
    assert {t for t, _ in stored(engine)} == {"600519.SH", "600036.SH"}


def test_tickers_good_is_not_blamed_for_a_broken_file(engine: Engine, tmp_path: Path) -> None:
    """--tickers GOOD with a broken file whose ticker is another: GOOD lands and nothing is
    recorded against it; the broken file's ticker is not asked for."""
    write(tmp_path / "600519.SH.csv")
    (tmp_path / "000001.SZ.csv").write_text("date,price\n2024-01-02,1\n", encoding="utf-8")
    report = go(engine, tmp_path, tickers=["600519.SH"])
    assert report.status == "success" and report.tickers["600519.SH"].error is None
    assert report.inserted == 20


def test_a_corrected_file_is_compared_whole_and_the_change_recorded(
    engine: Engine, tmp_path: Path
) -> None:
    """A re-import without --start compares the whole file: the one corrected close is updated
    and its old and new values land in revisions; an unchanged re-import changes nothing."""
    path = tmp_path / "600519.SH.csv"
    dates = write(path)
    go(engine, path)
    text = path.read_text(encoding="utf-8").replace(
        f"{dates[3]:%Y%m%d},10.25,10.40,10.20,10.30", f"{dates[3]:%Y%m%d},10.25,10.40,10.20,10.35"
    )
    path.write_text(text, encoding="utf-8")
    report = go(engine, path)
    assert (report.inserted, report.updated, report.unchanged) == (0, 1, 19)
    assert stored(engine)[("600519.SH", dates[3])] == 10.35
    with engine.connect() as conn:
        (rev,) = conn.execute(select(revisions)).all()
    assert (rev.ticker, rev.trade_date, rev.column_name) == ("600519.SH", dates[3], "close")
    assert (rev.old_value, rev.new_value, rev.run_id) == (10.30, 10.35, report.run_id)
    again = go(engine, path)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 20)


def test_rows_before_start_are_left_out_and_counted(engine: Engine, tmp_path: Path) -> None:
    """--start loads the file from that day; the rows before it are counted, with how to load
    them. history_start does not bound a file."""
    path = tmp_path / "600519.SH.csv"
    dates = write(path)
    report = go(engine, path, start=dates[5], history_start=D(2030, 1, 1))
    tr = report.tickers["600519.SH"]
    assert (tr.inserted, tr.left_before, tr.first_left) == (15, 5, dates[0])
    assert f"5 rows before start left out (load them with --start {dates[0]})" in report.summary()
    full = go(engine, path, history_start=D(2030, 1, 1))
    assert (full.inserted, full.unchanged, full.left_out) == (5, 15, 0)


def test_gbk_chinese_headers_float_dates_and_bad_cells(engine: Engine, tmp_path: Path) -> None:
    """A GBK export with 日期/开盘/最高/最低/收盘/成交量, a date saved as a float, an 'abc' close
    and an unreadable date: the good rows land, each bad row is rejected with its raw text."""
    path = tmp_path / "600519.SH.csv"
    lines = [
        "日期,开盘,最高,最低,收盘,成交量",
        "2024-01-02,10,10.5,9.8,10.2,100",
        "20240103.0,10.2,10.6,10.0,10.4,110",
        "2024-01-04,10.4,10.7,10.1,abc,120",
        "04/01/2024,10.4,10.7,10.1,10.5,130",
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode("gbk"))
    report = go(engine, path)
    assert (report.status, report.inserted, report.rejected) == ("success", 2, 2)
    assert set(stored(engine)) == {("600519.SH", D(2024, 1, 2)), ("600519.SH", D(2024, 1, 3))}
    with engine.connect() as conn:
        rows = conn.execute(select(rejected_rows).order_by(rejected_rows.c.id)).all()
    by_text = {json.loads(r.raw)["text"]: r.reason for r in rows}
    assert "收盘 'abc' is not a number" in by_text["2024-01-04,10.4,10.7,10.1,abc,120"]
    assert (
        "'04/01/2024' is neither YYYYMMDD nor YYYY-MM-DD"
        in by_text["04/01/2024,10.4,10.7,10.1,10.5,130"]
    )
    assert go(engine, path, encoding="gbk").unchanged == 2
