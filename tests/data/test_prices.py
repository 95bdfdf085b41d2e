"""Reading prices back: point in time, split-free, one query for many tickers."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import insert, update
from sqlalchemy.engine import Engine

from forecasting.data.inventory import inventory
from forecasting.data.listings import load_listings
from forecasting.data.prices import last_price_dates, load_bars, load_closes, price_summary
from forecasting.data.schema import prices, securities
from forecasting.errors import DatabaseError

D = dt.date
NOW = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
DAYS = [d.date() for d in pd.bdate_range("2024-01-01", periods=10)]  # 2024-01-01 .. 01-12


def _rows(
    ticker: str, closes: list[float], factors: list[float | None] | None = None
) -> list[dict]:
    factors = factors or [None] * len(closes)
    return [
        {
            "ticker": ticker,
            "trade_date": d,
            "close": c,
            "adj_factor": f,
            "source": "test",
            "ingested_at": NOW,
        }
        for d, c, f in zip(DAYS, closes, factors, strict=False)
    ]


@pytest.fixture()
def stored(engine: Engine) -> Engine:
    """Two plain tickers (A.SH rising 10..19, B.SZ 5 rows) and C.SH with a 2:1 split."""
    with engine.begin() as conn:
        conn.execute(insert(prices), _rows("A.SH", [10.0 + i for i in range(10)]))
        conn.execute(insert(prices), _rows("B.SZ", [5.0, 5.5, 6.0, 6.5, 7.0]))
        # Raw closes halve on day 6 (a 2:1 split); the factor doubles so close*factor is smooth.
        conn.execute(
            insert(prices),
            _rows(
                "C.SH", [20.0, 20.5, 21.0, 21.5, 22.0, 11.0, 11.5, 12.0], [1, 1, 1, 1, 1, 2, 2, 2]
            ),
        )
        conn.execute(insert(securities).values(ticker="A.SH", kind="stock"))
    return engine


def test_series_shape(stored: Engine) -> None:
    """One float Series per ticker, indexed by datetime.date ascending."""
    with stored.connect() as conn:
        out = load_closes(conn)
    assert sorted(out) == ["A.SH", "B.SZ", "C.SH"]
    a = out["A.SH"]
    assert a.dtype == np.float64
    assert list(a.index) == DAYS
    assert all(type(d) is dt.date for d in a.index)
    assert a.tolist() == [10.0 + i for i in range(10)]


def test_through_and_start_bound_the_window(stored: Engine) -> None:
    """Nothing after ``through`` and nothing before ``start``; tickers filter."""
    with stored.connect() as conn:
        out = load_closes(conn, tickers=["A.SH", "B.SZ", "Z.SH"], start=DAYS[2], through=DAYS[5])
        assert load_closes(conn, tickers=[]) == {}
        assert load_closes(conn, through=D(2023, 12, 31)) == {}
    assert sorted(out) == ["A.SH", "B.SZ"]
    assert list(out["A.SH"].index) == DAYS[2:6]
    assert list(out["B.SZ"].index) == DAYS[2:5]


def test_future_spike_and_future_split_change_nothing(stored: Engine) -> None:
    """A planted spike after ``through`` - and a split after it - leave every returned value as
    it was: the cutoff is applied before the adjustment."""
    through = DAYS[4]
    with stored.connect() as conn:
        before = load_closes(conn, through=through)
    with stored.begin() as conn:
        conn.execute(
            update(prices)
            .where(prices.c.ticker == "A.SH", prices.c.trade_date == DAYS[5])
            .values(close=1e6)
        )
        conn.execute(
            insert(prices).values(
                ticker="B.SZ",
                trade_date=DAYS[5],
                close=1e6,
                adj_factor=50.0,
                source="t",
                ingested_at=NOW,
            )
        )
    with stored.connect() as conn:
        after = load_closes(conn, through=through)
        later = load_closes(conn, through=DAYS[5])
    assert sorted(after) == sorted(before)
    for t in before:
        pd.testing.assert_series_equal(after[t], before[t])
    assert later["A.SH"].iloc[-1] == 1e6  # the spike is there, just not before its date


def test_adj_factor_rescales_to_the_last_raw_close(stored: Engine) -> None:
    """close*factor/factor_last: the split disappears and the last value is the real close."""
    with stored.connect() as conn:
        full = load_closes(conn, tickers=["C.SH"])["C.SH"]
        pre_split = load_closes(conn, tickers=["C.SH"], through=DAYS[4])["C.SH"]
    np.testing.assert_allclose(full.to_numpy(), [10.0, 10.25, 10.5, 10.75, 11.0, 11.0, 11.5, 12.0])
    assert full.iloc[-1] == 12.0
    log_returns = np.diff(np.log(full.to_numpy()))
    assert np.abs(log_returns).max() < 0.05  # no -69% "crash" on the split day
    # As of a date before the split, the adjustment is as of that date: raw prices.
    np.testing.assert_allclose(pre_split.to_numpy(), [20.0, 20.5, 21.0, 21.5, 22.0])


def test_missing_factors_take_the_nearest_known(engine: Engine) -> None:
    """NULL factors beside known ones are filled from the nearest earlier (else later) day."""
    with engine.begin() as conn:
        conn.execute(insert(prices), _rows("D.SH", [8.0, 8.0, 4.0, 4.0], [None, 1.0, 2.0, None]))
    with engine.connect() as conn:
        d = load_closes(conn)["D.SH"]
    np.testing.assert_allclose(d.to_numpy(), [4.0, 4.0, 4.0, 4.0])


def test_summary_and_last_dates(stored: Engine) -> None:
    """The ``prices`` command's rows and the last stored date per ticker."""
    with stored.connect() as conn:
        summary = price_summary(conn)
        last = last_price_dates(conn)
    assert [tuple(r) for r in summary] == [
        ("A.SH", "stock", DAYS[0], DAYS[9], 10),
        ("B.SZ", None, DAYS[0], DAYS[4], 5),
        ("C.SH", None, DAYS[0], DAYS[7], 8),
    ]
    assert last == {"A.SH": DAYS[9], "B.SZ": DAYS[4], "C.SH": DAYS[7]}


def test_the_prices_listing_is_the_same_through_sqlite3_and_sqlalchemy(
    stored: Engine, db_url: str
) -> None:
    """``inventory`` (what ``forecasting prices`` prints) reads a plain SQLite file with the
    standard library and any other URL through SQLAlchemy: the same rows either way, equal to
    the summary and the reference data read through SQLAlchemy's tables."""
    with stored.begin() as conn:
        conn.execute(
            update(securities)
            .where(securities.c.ticker == "A.SH")
            .values(name="Alpha", board="main", industry="Banks", list_date=D(2001, 2, 3))
        )
    listing = inventory(db_url)
    with stored.connect() as conn:
        summary, reference = price_summary(conn), load_listings(conn)
    fields = ("name", "board", "industry", "list_date", "delist_date")
    assert listing == [
        {**r._asdict(), **{f: getattr(reference.get(r.ticker), f, None) for f in fields}}
        for r in summary
    ]
    assert listing[0]["list_date"] == D(2001, 2, 3) and listing[0]["first_date"] == DAYS[0]
    if db_url.startswith("sqlite"):  # a URL with options goes through SQLAlchemy
        assert inventory(f"{db_url}?timeout=5") == listing


def test_the_prices_listing_creates_no_database(tmp_path: Path) -> None:
    """A missing file is an error that says how to make one, and stays missing."""
    url = f"sqlite:///{tmp_path / 'none.db'}"
    with pytest.raises(
        DatabaseError, match=r"no forecasting database at .* run `forecasting init-db`"
    ):
        inventory(url)
    assert not (tmp_path / "none.db").exists()


def test_bars_adjust_high_and_low_like_the_close_and_volume_inversely(engine: Engine) -> None:
    """load_bars: high and low forward-adjusted by the same factor as the close, the volume
    divided by it (shares on the last day's basis), NaN where not stored; its close column
    is load_closes' series."""
    rows = _rows("C.SH", [20.0, 22.0, 11.0, 12.0], [1, 1, 2, 2])
    for r, hi, lo, vol in zip(
        rows, [21, 23, 12, 13], [19, 21, 10, None], [100, 100, 200, 200], strict=True
    ):
        r.update(high=hi, low=lo, volume=vol)
    with engine.begin() as conn:
        conn.execute(insert(prices), rows)
    with engine.connect() as conn:
        bars = load_bars(conn, tickers=["C.SH"])["C.SH"]
        closes = load_closes(conn, tickers=["C.SH"])["C.SH"]
    np.testing.assert_allclose(bars["close"].to_numpy(), closes.to_numpy())
    np.testing.assert_allclose(bars["high"].to_numpy(), [10.5, 11.5, 12.0, 13.0])
    np.testing.assert_allclose(bars["low"].to_numpy()[:3], [9.5, 10.5, 10.0])
    assert np.isnan(bars["low"].iloc[-1])
    np.testing.assert_allclose(bars["vol"].to_numpy(), [200.0, 200.0, 200.0, 200.0])
    assert list(bars.index) == list(closes.index)
