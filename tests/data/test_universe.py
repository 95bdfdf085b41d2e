"""The universe: an explicit list, every listed A-share, or an index's members, point in time."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from market_fixtures import DELISTED, LAST, NEW_LISTING, TICKERS, market_source, market_stub
from sqlalchemy.engine import Engine
from tushare_stub import TushareStub

from forecasting.data.sources.demo import DemoSource
from forecasting.data.universe import Universe, members_on, tickers_to_ingest
from forecasting.errors import InputError


@pytest.fixture()
def stub() -> Iterator[TushareStub]:
    with market_stub() as server:
        yield server


@pytest.mark.parametrize(
    ("spec", "kind", "text"),
    [
        ("all", "all", "all"),
        ("ALL", "all", "all"),
        ("index:000300.sh", "index", "index:000300.SH"),
        (" 600519.sh, 000001.SZ 600519.SH ", "list", "600519.SH,000001.SZ"),
        (["600519.SH", "000001.SZ"], "list", "600519.SH,000001.SZ"),
        ("", "list", ""),
        (None, "list", ""),
    ],
)
def test_parse_names_the_three_forms(spec: str | list[str] | None, kind: str, text: str) -> None:
    """Tickers (commas or spaces, duplicates dropped), 'all', or 'index:CODE'."""
    universe = Universe.parse(spec)
    assert (universe.kind, str(universe)) == (kind, text)


@pytest.mark.parametrize("spec", ["all,600519.SH", "index:300", "index:000300.SH index:000905.SH"])
def test_a_malformed_universe_is_one_line_naming_it(spec: str) -> None:
    """Mixing forms or a malformed index code is an InputError that names the spec."""
    with pytest.raises(InputError) as err:
        Universe.parse(spec)
    assert "\n" not in str(err.value) and spec.split(",")[0].split()[0] in str(err.value)


def test_all_is_every_stock_listed_on_the_day(stub: TushareStub, sqlite_engine: Engine) -> None:
    """'all' ingests the listed stocks, and answers point in time from the stored listing:
    a stock listed later is not yet a member, a delisted one no longer is."""
    names = tickers_to_ingest(
        sqlite_engine, market_source(stub), Universe.parse("all"), start=None, end=LAST
    )
    assert names == sorted(set(TICKERS) - {"600001.SH"})  # list_status L on LAST
    with sqlite_engine.connect() as conn:
        early = members_on(conn, Universe(all=True), NEW_LISTING - dt.timedelta(days=1))
        later = members_on(conn, Universe(all=True), DELISTED)
    assert "688001.SH" not in early and "600001.SH" in early
    assert "688001.SH" in later and "600001.SH" not in later
    assert len(stub.calls("stock_basic")) == 3  # L, D and P, once


def test_a_backfill_of_all_includes_stocks_delisted_within_its_span(
    stub: TushareStub, sqlite_engine: Engine
) -> None:
    """Ingesting 'all' from a start before a delisting includes the delisted stock."""
    names = tickers_to_ingest(
        sqlite_engine,
        market_source(stub),
        Universe(all=True),
        start=dt.date(2019, 2, 1),
        end=LAST,
    )
    assert names == sorted(TICKERS)


def test_index_members_are_those_of_the_day(stub: TushareStub, sqlite_engine: Engine) -> None:
    """index:CODE ingests every member over the span (the one in force at its start included)
    and a day's members are those of the last rebalance on or before it."""
    universe = Universe.parse("index:000300.SH")
    names = tickers_to_ingest(
        sqlite_engine, market_source(stub), universe, start=dt.date(2019, 3, 1), end=LAST
    )
    assert names == ["000001.SZ", "600000.SH", "600001.SH", "688001.SH"]
    with sqlite_engine.connect() as conn:
        assert members_on(conn, universe, dt.date(2019, 4, 29)) == [
            "000001.SZ",
            "600000.SH",
            "600001.SH",
        ]
        assert members_on(conn, universe, dt.date(2019, 4, 30)) == [
            "000001.SZ",
            "600000.SH",
            "688001.SH",
        ]
        with pytest.raises(InputError, match="no members stored on or before 2019-01-30"):
            members_on(conn, universe, dt.date(2019, 1, 30))
    # a rerun writes nothing new
    from forecasting.data.universe import store_index_members

    with sqlite_engine.begin() as conn:
        members = market_source(stub).index_members("000300.SH", dt.date(2019, 3, 1), LAST)
        assert store_index_members(conn, "000300.SH", members) == 0


def test_index_weight_pages_without_losing_a_cut_date(
    stub: TushareStub, sqlite_engine: Engine
) -> None:
    """A full index_weight page may end inside a rebalance date: that date is asked again."""
    source = market_source(stub, page_rows=4)
    stub.market.day_row_limit = 4
    members = source.index_members("000300.SH", dt.date(2019, 3, 1), LAST)
    assert members == {
        dt.date(2019, 1, 31): ["000001.SZ", "600000.SH", "600001.SH"],
        dt.date(2019, 4, 30): ["000001.SZ", "600000.SH", "688001.SH"],
    }
    assert len(stub.calls("index_weight")) == 2


def test_a_market_universe_needs_a_market_source(sqlite_engine: Engine) -> None:
    """'all' with a source that has no listing (the demo market) says to use tushare."""
    with pytest.raises(InputError, match="--source tushare"):
        tickers_to_ingest(
            sqlite_engine, DemoSource(n_tickers=3), Universe(all=True), start=None, end=LAST
        )
