"""The daily increment by trade date: one daily and one adj_factor call a day for all stocks,
landing exactly the rows the per-ticker path lands."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from market_fixtures import (
    DELISTED,
    LAST,
    NEW_LISTING,
    SUSPENDED,
    TICKERS,
    market_source,
    market_stub,
)
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine
from tushare_stub import TushareStub

from forecasting.data.db import init_db
from forecasting.data.increment import Need, choose_by_date
from forecasting.data.ingest import ingest
from forecasting.data.listings import Listing, load_listings
from forecasting.data.prices import stored_spans
from forecasting.data.schema import prices

HISTORY_END = dt.date(2019, 8, 23)  # a Friday
INCREMENT_END = dt.date(2019, 8, 28)  # three trading days later


@pytest.fixture()
def stub() -> Iterator[TushareStub]:
    # Pages of 1,000 rows: one trade_cal call, as on the real service; by-code history pages
    # are tested with TushareSource.
    with market_stub(row_limit=1000) as server:
        yield server


def _engine(tmp_path_factory: pytest.TempPathFactory, name: str) -> Engine:
    engine = create_engine(f"sqlite:///{tmp_path_factory.mktemp(name)}/f.db")
    init_db(engine)
    return engine


def _rows(engine: Engine) -> list[tuple[object, ...]]:
    c = prices.c
    cols = (
        c.ticker,
        c.trade_date,
        c.open,
        c.high,
        c.low,
        c.close,
        c.volume,
        c.amount,
        c.adj_factor,
    )
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(*cols).order_by(c.ticker, c.trade_date))]


def _ingest(engine: Engine, stub: TushareStub, end: dt.date, **kw: object):  # type: ignore[no-untyped-def]
    return ingest(
        engine,
        market_source(stub, **kw),
        tickers=list(TICKERS),
        end=end,
        history_start=dt.date(2019, 1, 1),
        progress=False,
    )


D = [dt.date(2019, 8, d) for d in (19, 20, 21, 22, 23, 26, 27, 28)]  # trading days


def _need(ticker: str, start: int, end: int = 28) -> Need:
    return Need(ticker, dt.date(2019, 8, start), dt.date(2019, 8, end))


@pytest.mark.parametrize(
    ("needs", "served", "days"),
    [
        # four tickers three days behind: 6 calls by date against 8 by code
        ([_need(t, 26) for t in "ABCD"], "ABCD", D[-3:]),
        # three tickers three days behind: 6 against 6, so by code
        ([_need(t, 26) for t in "ABC"], "", []),
        # one far behind is left to its own calls rather than fetching its days for all
        ([*(_need(t, 27) for t in "ABCD"), _need("E", 19)], "ABCD", D[-2:]),
        # a delisted ticker needs no day at all
        ([*(_need(t, 28) for t in "AB"), _need("X", 19, 18)], "XAB", D[-1:]),
    ],
)
def test_choose_by_date_takes_the_tickers_that_save_calls(
    needs: list[Need], served: str, days: list[dt.date]
) -> None:
    """Fewest days first, as many tickers as make the fewest calls; none when it saves nothing."""
    got, got_days = choose_by_date(needs, D)
    assert "".join(sorted(n.ticker for n in got)) == "".join(sorted(served))
    assert got_days == days


def test_the_increment_by_date_lands_the_rows_the_per_ticker_path_lands(
    stub: TushareStub, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """History by ts_code, then three days by trade_date == the same span by ts_code alone,
    row for row and value for value (adjustment factors included)."""
    incremental = _engine(tmp_path_factory, "incremental")
    _ingest(incremental, stub, HISTORY_END)
    before = stub.call_counts()
    report = _ingest(incremental, stub, INCREMENT_END)
    during = stub.call_counts() - before
    assert report.status == "success", report.summary()
    assert report.inserted > 0
    # one of each per trading day; the suspended ticker, three days further behind, costs a
    # call of its own this once (its history came by ts_code, so no day was checked for it)
    by_date = [r for r in stub.calls("daily") if "trade_date" in r["params"]]
    assert [r["params"]["trade_date"] for r in by_date] == ["20190826", "20190827", "20190828"]
    assert during["adj_factor"] == 3
    assert [r["params"]["ts_code"] for r in stub.calls("daily")[-1:]] == ["000002.SZ"]
    assert during["daily"] == 4

    by_code = _engine(tmp_path_factory, "by_code")
    _ingest(by_code, stub, INCREMENT_END)
    assert _rows(incremental) == _rows(by_code)
    # a second run changes nothing
    again = _ingest(incremental, stub, INCREMENT_END)
    assert (again.inserted, again.updated) == (0, 0)


def test_a_day_for_the_whole_market_costs_two_calls(
    stub: TushareStub, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The call budget, counted by the server: one trading day for every ticker, the suspended
    and the delisted one included, is one daily and one adj_factor call, plus the calendar and
    the reference data (three list statuses)."""
    engine = _engine(tmp_path_factory, "budget")
    _ingest(engine, stub, HISTORY_END)
    _ingest(engine, stub, dt.date(2019, 8, 26))  # the suspended ticker's own call, this once
    for day in (27, 28):
        before = stub.call_counts()
        _ingest(engine, stub, dt.date(2019, 8, day))
        during = stub.call_counts() - before
        assert during == {"trade_cal": 1, "stock_basic": 3, "daily": 1, "adj_factor": 1}


def test_a_day_longer_than_one_reply_is_paged_with_offset(
    stub: TushareStub, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With replies capped at two rows, a day of four trading stocks takes three calls each
    (the last one comes back short, here empty)."""
    engine = _engine(tmp_path_factory, "paged")
    _ingest(engine, stub, HISTORY_END)
    stub.market.day_row_limit = 2
    before = stub.call_counts()
    _ingest(engine, stub, dt.date(2019, 8, 26), page_rows=2)
    during = stub.call_counts() - before
    by_date = [r for r in stub.calls("daily") if "trade_date" in r["params"]]
    assert len(by_date) == 3 and during["adj_factor"] == 3
    offsets = [r["params"].get("offset") for r in by_date]
    assert offsets == [None, "2", "4"]
    with engine.connect() as conn:
        day = conn.execute(
            select(prices.c.ticker).where(prices.c.trade_date == dt.date(2019, 8, 26))
        )
        assert sorted(r[0] for r in day) == sorted(set(TICKERS) - {"600001.SH", "000002.SZ"})


def test_listing_events_arrive_as_the_market_has_them(
    stub: TushareStub, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A code appearing mid-history starts on its list date; a delisted ticker stops the day
    before its delist date; a suspended one has no bars in its suspension; reference data
    (name, board, industry, list and delist dates) is stored and unchanged by a rerun."""
    engine = _engine(tmp_path_factory, "events")
    _ingest(engine, stub, LAST)
    with engine.connect() as conn:
        spans = stored_spans(conn, list(TICKERS))
        listings = load_listings(conn)
        suspended = conn.execute(
            select(prices.c.trade_date).where(
                prices.c.ticker == "000002.SZ", prices.c.trade_date >= SUSPENDED[0]
            )
        ).all()
    assert spans["688001.SH"][0] == NEW_LISTING
    assert spans["600001.SH"][1] == DELISTED - dt.timedelta(days=3)  # Friday before a Monday
    assert suspended == []
    assert listings["688001.SH"].board == "star" and listings["300750.SZ"].board == "chinext"
    assert listings["600001.SH"].delist_date == DELISTED
    assert listings["688001.SH"].list_date == NEW_LISTING
    assert listings["000001.SZ"].name == "平安银行" and listings["000001.SZ"].industry == "银行"
    _ingest(engine, stub, LAST)
    assert _reference(engine) == _reference(engine, listings)


def _reference(engine: Engine, listings: dict[str, Listing] | None = None) -> list[Listing]:
    if listings is None:
        with engine.connect() as conn:
            listings = load_listings(conn)
    return sorted(listings.values(), key=lambda x: x.ticker)
