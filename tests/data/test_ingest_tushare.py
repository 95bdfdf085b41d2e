"""The ingest through the real tushare client against the local stub server, with the faults a
vendor really shows injected by each test."""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from tushare_stub import TushareStub

from forecasting.data.ingest import IngestReport, ingest
from forecasting.data.schema import ingest_runs, prices, rejected_rows, revisions
from forecasting.data.sources.tushare import TushareSource

START, LAST = dt.date(2019, 1, 1), dt.date(2019, 12, 31)


@pytest.fixture()
def stub() -> Iterator[TushareStub]:
    with TushareStub(row_limit=100, first=START, last=LAST) as server:
        yield server


def source(stub: TushareStub, **kw: Any) -> TushareSource:
    kw.setdefault("retries", 1)
    kw.setdefault("backoff", 0.001)
    return TushareSource(stub.token, http_url=stub.url, **kw)


def go(engine: Engine, stub: TushareStub, tickers: list[str], **kw: Any) -> IngestReport:
    kw.setdefault("end", LAST)
    kw.setdefault("today", LAST)
    kw.setdefault("history_start", START)
    kw.setdefault("progress", False)
    src = source(stub, **kw.pop("source_kw", {}))
    return ingest(engine, src, tickers=tickers, **kw)


def count(engine: Engine, ticker: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(prices.c.ticker == ticker)).scalar_one())


def reasons(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(rejected_rows.c.reason)).scalars())


def test_short_pages_store_the_whole_history(engine: Engine, stub: TushareStub) -> None:
    """A server capping replies at 100 rows (the client assumes 6000): all ~250 days land."""
    report = go(engine, stub, ["600519.SH"])
    assert report.status == "success"
    assert count(engine, "600519.SH") == len(stub.bars("600519.SH")) > 2 * stub.row_limit


def test_reply_rows_for_the_future_or_another_ticker_are_rejected(
    engine: Engine, stub: TushareStub
) -> None:
    """A reply row dated 2030 and one under another ts_code are rejected with those reasons;
    the ticker's last stored date stays the real one."""
    real = stub.bars("000001.SZ")
    stub.extra["000001.SZ"] = [
        {**real[-1], "trade_date": "20300104"},
        {**real[5], "ts_code": "000002.SZ"},
    ]
    report = go(engine, stub, ["000001.SZ"])
    assert report.rejected == 2 and report.inserted == len(real)
    got = reasons(engine)
    assert any("2030-01-04 is after today" in r for r in got)
    assert any("the source returned it for ticker '000002.SZ'" in r for r in got)
    with engine.connect() as conn:
        last = conn.execute(select(func.max(prices.c.trade_date))).scalar_one()
    assert last == dt.date.fromisoformat(
        real[-1]["trade_date"][:4]
        + "-"
        + real[-1]["trade_date"][4:6]
        + "-"
        + real[-1]["trade_date"][6:]
    )


def test_an_inf_close_from_the_wire_is_rejected(engine: Engine, stub: TushareStub) -> None:
    """JSON Infinity in a reply is a rejected row, not a stored close."""
    day = stub.bars("600036.SH")[50]["trade_date"]
    stub.revise[("600036.SH", day)] = {"close": math.inf}
    report = go(engine, stub, ["600036.SH"])
    assert report.rejected == 1
    assert "close is inf, not a finite number" in reasons(engine)[0]


def test_an_unknown_ticker_fails_by_name(engine: Engine, stub: TushareStub) -> None:
    """A code the vendor has no data for is a failed ticker, not a success with 0 rows."""
    stub.known = {"600519.SH"}
    report = go(engine, stub, ["600519.SH", "123456.SH"])
    assert report.status == "partial"
    assert "returned no bars for 123456.SH" in (report.tickers["123456.SH"].error or "")


def test_recent_days_are_reread_and_a_revision_recorded(engine: Engine, stub: TushareStub) -> None:
    """An incremental ingest re-reads reread_days before the last stored day: a vendor's
    correction of yesterday's close is applied and recorded in revisions."""
    go(engine, stub, ["600519.SH"], end=dt.date(2019, 6, 28), today=dt.date(2019, 6, 28))
    fixed = stub.bars("600519.SH")
    day = next(r for r in reversed(fixed) if r["trade_date"] <= "20190628")
    old = day["close"]
    stub.revise[("600519.SH", day["trade_date"])] = {"close": old + 0.05, "high": old + 0.3}
    report = go(engine, stub, ["600519.SH"], end=dt.date(2019, 7, 5), reread_days=10)
    assert report.updated == 1 and report.inserted == 5
    with engine.connect() as conn:
        rows = conn.execute(select(revisions).order_by(revisions.c.column_name)).all()
    assert [(r.column_name, r.old_value, r.new_value) for r in rows] == [
        ("close", old, old + 0.05),
        ("high", round(old + 0.2, 2), old + 0.3),
    ]
    assert {r.run_id for r in rows} == {report.run_id}


def test_a_hanging_server_is_stopped_by_the_deadline(engine: Engine, stub: TushareStub) -> None:
    """Every reply held 0.6 s and a 1 s deadline: the ingest stops, keeps what landed,
    records the rest as not attempted and fails, in about the deadline, not hours."""
    stub.delay_next(100, 0.6)
    t0 = time.monotonic()
    report = go(
        engine,
        stub,
        ["600519.SH", "600036.SH", "000001.SZ"],
        deadline_s=1.0,
        source_kw={"timeout": 30, "retries": 5, "backoff": 2.0},
    )
    took = time.monotonic() - t0
    assert report.status == "failed" and took < 5
    assert "deadline" in (report.run_error or "")
    errors = [t.error or "" for t in report.tickers.values()]
    assert any("deadline" in e for e in errors)
    with engine.connect() as conn:
        row = conn.execute(select(ingest_runs).where(ingest_runs.c.run_id == report.run_id)).one()
    assert row.status == "failed" and "deadline" in row.error
    assert json.loads(row.tickers) == ["600519.SH", "600036.SH", "000001.SZ"]
