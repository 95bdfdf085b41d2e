"""The daily increment by trade date: one daily and one adj_factor call a day for all stocks,
landing exactly the rows the per-ticker path lands."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
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
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Engine
from tushare_stub import TushareStub

from forecasting.data.db import init_db, make_engine
from forecasting.data.increment import Need, choose_by_date
from forecasting.data.ingest import ingest
from forecasting.data.listings import Listing, load_listings
from forecasting.data.prices import stored_spans
from forecasting.data.schema import ingest_runs, prices, rejected_rows, revisions, securities

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
    the reference data (three list statuses, and the names in time)."""
    engine = _engine(tmp_path_factory, "budget")
    _ingest(engine, stub, HISTORY_END)
    _ingest(engine, stub, dt.date(2019, 8, 26))  # the suspended ticker's own call, this once
    for day in (27, 28):
        before = stub.call_counts()
        _ingest(engine, stub, dt.date(2019, 8, day))
        during = stub.call_counts() - before
        assert during == {
            "trade_cal": 1,
            "stock_basic": 3,
            "namechange": 1,
            "daily": 1,
            "adj_factor": 1,
        }


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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def two_engines(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Engine, Engine]]:
    """Two empty databases on one backend (SQLite files, or two Postgres schemas)."""
    if request.param == "sqlite":
        pair = (_engine(tmp_path_factory, "a"), _engine(tmp_path_factory, "b"))
        yield pair
    else:
        urls = [request.getfixturevalue("pg_url")]
        base = request.getfixturevalue("pg_database")
        schema = f"t_{uuid.uuid4().hex[:10]}"
        admin = make_engine(base)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        urls.append(f"{base}?options=-csearch_path%3D{schema}")
        pair = (make_engine(urls[0]), make_engine(urls[1]))
        for e in pair:
            init_db(e)
        yield pair
        for e in pair:
            e.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
        return
    for e in pair:
        e.dispose()


def _state(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    """Everything an ingest writes, without the run ids, ids and times that differ by run."""
    r, v, s, i = rejected_rows.c, revisions.c, securities.c, ingest_runs.c
    with engine.connect() as conn:
        return {
            "prices": _rows(engine),
            "rejected": [
                tuple(x)
                for x in conn.execute(
                    select(r.ticker, r.trade_date, r.raw, r.reason, r.fingerprint).order_by(
                        r.ticker, r.trade_date, r.reason
                    )
                )
            ],
            "revisions": [
                tuple(x)
                for x in conn.execute(
                    select(
                        v.ticker, v.trade_date, v.column_name, v.old_value, v.new_value
                    ).order_by(v.ticker, v.trade_date, v.column_name)
                )
            ],
            "securities": [
                tuple(x)
                for x in conn.execute(
                    select(
                        s.ticker, s.name, s.kind, s.exchange, s.checked_through, s.source
                    ).order_by(s.ticker)
                )
            ],
            "runs": [
                tuple(x)
                for x in conn.execute(
                    select(
                        i.status, i.rows_inserted, i.rows_updated, i.rows_unchanged, i.rows_rejected
                    ).order_by(i.started_at)
                )
            ],
        }


def test_the_whole_day_path_writes_what_the_per_ticker_path_writes(
    stub: TushareStub,
    two_engines: tuple[Engine, Engine],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three days by trade date with a 1000x close, a negative volume, a blank open: landing
    all tickers in one vectorized pass and one bulk write stores the same prices, rejected
    rows, revisions, securities and ingest_runs counts as landing each ticker on its own, and
    the rejected tickers still get their own one-line reasons."""
    fast, slow = two_engines
    for engine in (fast, slow):
        _ingest(engine, stub, HISTORY_END)
    x = next(b["close"] for b in stub.bars("600000.SH") if b["trade_date"] == "20190827")
    stub.revise[("600000.SH", "20190827")] = {
        "open": x * 1000,
        "high": x * 1000 + 1,
        "low": x * 1000 - 1,
        "close": x * 1000,
    }
    stub.revise[("000001.SZ", "20190826")] = {"vol": -5.0}
    stub.revise[("300750.SZ", "20190828")] = {"open": None}
    y = next(b["close"] for b in stub.bars("688001.SH") if b["trade_date"] == "20190823")
    stub.revise[("688001.SH", "20190823")] = {"close": y + 0.05, "high": y + 0.3}  # re-read
    caplog.set_level(logging.INFO, logger="forecasting.data.ingest")
    reports = [
        ingest(
            engine,
            market_source(stub),
            tickers=list(TICKERS),
            end=INCREMENT_END,
            history_start=dt.date(2019, 1, 1),
            progress=False,
            whole_day=whole_day,
            reread_days=1,
        )
        for engine, whole_day in ((fast, True), (slow, False))
    ]
    assert [r.status for r in reports] == ["success", "success"]
    assert reports[0].rejected == 2 and reports[0].inserted > 0
    assert "3 tickers landed by trade date in one write (8 rows); 2 left" in caplog.text
    assert [t.line() for t in reports[0].tickers.values()] == [
        t.line() for t in reports[1].tickers.values()
    ]
    assert _state(fast) == _state(slow)
    state = _state(fast)
    reasons = [row[3] for row in state["rejected"]]
    assert "000001.SZ on 2019-08-26: rejected because volume is -5, below 0" in reasons[0]
    assert "600000.SH on 2019-08-27" in reasons[1] and "implausible" in reasons[1]
    assert [(r[0], r[2], r[3]) for r in state["revisions"]] == [
        ("688001.SH", "close", y),
        ("688001.SH", "high", round(y + 0.2, 2)),
    ]


def test_a_day_re_read_costs_two_calls_for_the_whole_market(
    stub: TushareStub, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """reread_days re-reads the trading days of its window by date as well: one daily and one
    adj_factor call per day re-read, counted by the server, and a vendor's correction of a
    re-read day is applied and recorded."""
    engine = _engine(tmp_path_factory, "reread")
    _ingest(engine, stub, HISTORY_END)
    _ingest(engine, stub, dt.date(2019, 8, 26))  # the suspended ticker's own call, this once
    x = next(b["close"] for b in stub.bars("600000.SH") if b["trade_date"] == "20190826")
    stub.revise[("600000.SH", "20190826")] = {"close": x + 0.05, "high": x + 0.3}
    before = stub.call_counts()
    report = ingest(
        engine,
        market_source(stub),
        tickers=list(TICKERS),
        end=dt.date(2019, 8, 27),
        progress=False,
        reread_days=1,
    )
    during = stub.call_counts() - before
    assert report.status == "success", report.summary()
    assert during == {
        "trade_cal": 1,
        "stock_basic": 3,
        "namechange": 1,
        "daily": 2,
        "adj_factor": 2,
    }
    by_date = [
        r["params"]["trade_date"] for r in stub.calls("daily") if "trade_date" in r["params"]
    ]
    assert by_date[-2:] == ["20190826", "20190827"]
    assert report.updated == 1 and report.tickers["600000.SH"].revised == 2
    with engine.connect() as conn:
        rows = conn.execute(select(revisions.c.column_name, revisions.c.new_value)).all()
    assert sorted(rows) == [("close", x + 0.05), ("high", x + 0.3)]


def _jump(stub: TushareStub, ticker: str, day: str, by: float) -> None:
    """Make ``ticker`` close ``by`` (a fraction) above its previous close on ``day``."""
    bars = stub.bars(ticker)
    i = next(k for k, b in enumerate(bars) if b["trade_date"] == day)
    close = round(bars[i - 1]["close"] * (1 + by), 2)
    stub.revise[(ticker, day)] = {"open": close, "high": close + 0.1, "low": close - 0.1}
    stub.revise[(ticker, day)]["close"] = close


def test_the_st_limit_applies_on_the_days_the_name_was_st(
    stub: TushareStub, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """namechange says when a stock was ST: a +7% day inside an ST span is beyond the 5% limit
    and rejected, by ts_code and by trade_date alike; the same move outside one stands."""
    stub.market.name_changes = [
        ("600000.SH", "浦发银行", dt.date(2019, 1, 1), dt.date(2019, 6, 2)),
        ("600000.SH", "ST浦发", dt.date(2019, 6, 3), dt.date(2019, 6, 28)),
        ("600000.SH", "浦发银行", dt.date(2019, 6, 29), dt.date(2019, 8, 25)),
        ("600000.SH", "*ST浦发", dt.date(2019, 8, 26), None),
    ]
    for day in ("20190612", "20190717", "20190827"):
        _jump(stub, "600000.SH", day, 0.07)
    engine = _engine(tmp_path_factory, "st")
    _ingest(engine, stub, HISTORY_END)
    _ingest(engine, stub, INCREMENT_END)
    with engine.connect() as conn:
        rejected = conn.execute(select(rejected_rows.c.trade_date, rejected_rows.c.reason)).all()
        stored = {r[0] for r in conn.execute(select(prices.c.trade_date))}
    assert [d for d, _ in rejected] == [dt.date(2019, 6, 12), dt.date(2019, 8, 27)]
    assert all("beyond the 5% daily limit of 600000.SH" in why for _, why in rejected)
    assert dt.date(2019, 7, 17) in stored
    by_date = [
        r["params"]["trade_date"] for r in stub.calls("daily") if "trade_date" in r["params"]
    ]
    assert "20190827" in by_date  # the ST day came by trade date
