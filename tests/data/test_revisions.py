"""Every change to a stored price is on record, and sql/queries/price_revisions.sql reads it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import text
from sqlalchemy.engine import Engine

from forecasting.data.ingest import ingest
from forecasting.data.sources.base import BAR_COLUMNS, Security

QUERY = Path(__file__).resolve().parents[2] / "sql" / "queries" / "price_revisions.sql"


class Frames:
    name = "frames"

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame

    def tickers(self) -> list[str]:
        return ["600519.SH"]

    def security(self, ticker: str) -> Security:
        return Security(ticker)

    def fetch_bars(self, ticker: str, start: dt.date, end: dt.date) -> pd.DataFrame:
        days = self.frame["trade_date"]
        return self.frame[(days >= start) & (days <= end)].reset_index(drop=True)

    def trading_calendar(self, start: dt.date, end: dt.date) -> pd.DataFrame | None:
        return None


def bars() -> pd.DataFrame:
    dates = [d.date() for d in pd.bdate_range("2024-01-02", periods=10)]
    close = 100 + np.arange(10.0)
    return pd.DataFrame(
        {
            "ticker": "600519.SH",
            "trade_date": dates,
            "open": close,
            "high": close + 1,
            "low": close - 1,
            "close": close,
            "volume": 1e4,
            "amount": np.nan,
            "adj_factor": np.nan,
        },
        columns=list(BAR_COLUMNS),
    )


def test_the_revisions_query_lists_each_change_with_its_run(engine: Engine) -> None:
    """Two corrections by two runs, and a blank cell that changes nothing: the query lists the
    changed columns newest first, old and new value, the run and how it ended."""
    frame = bars()
    source = Frames(frame)
    kw = {"end": dt.date(2024, 1, 31), "today": dt.date(2024, 2, 1), "progress": False}
    ingest(engine, source, history_start=dt.date(2024, 1, 2), **kw)  # type: ignore[arg-type]
    day = frame.loc[4, "trade_date"]
    source.frame = frame.assign(volume=np.where(frame.index == 4, 2e4, 1e4))
    first = ingest(engine, source, start=dt.date(2024, 1, 2), **kw)  # type: ignore[arg-type]
    fixed = source.frame.copy()
    fixed.loc[4, ["close", "high"]] = [104.5, 105.5]
    fixed.loc[5, "open"] = np.nan  # blank: keeps the stored 105
    source.frame = fixed
    second = ingest(engine, source, start=dt.date(2024, 1, 2), **kw)  # type: ignore[arg-type]
    assert (first.updated, second.updated) == (1, 1)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(text(QUERY.read_text(encoding="utf-8"))).mappings()]
    got = [(r["column_name"], r["old_value"], r["new_value"], r["run_id"]) for r in rows]
    assert got == [
        ("close", 104.0, 104.5, second.run_id),
        ("high", 105.0, 105.5, second.run_id),
        ("volume", 1e4, 2e4, first.run_id),
    ]
    assert {str(r["trade_date"])[:10] for r in rows} == {str(day)}
    assert {r["run_status"] for r in rows} == {"success"}
    assert {r["source"] for r in rows} == {"frames"}
