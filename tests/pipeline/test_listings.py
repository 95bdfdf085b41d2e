"""Listing events in a day's run: delisted, suspended and newly listed tickers."""

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
from sqlalchemy.engine import Engine
from tushare_stub import TushareStub

from forecasting.data.calendar import TradingCalendar
from forecasting.data.ingest import ingest
from forecasting.data.listings import Listing
from forecasting.pipeline.daily import run_pipeline
from forecasting.pipeline.listings import listing_events
from forecasting.settings import ModelSettings, PolicySettings, Settings

D = dt.date
WEEKDAYS = TradingCalendar.from_rows({}, use_xshg=False)
LISTINGS = {
    "OLD.SH": Listing("OLD.SH", list_date=D(2010, 1, 4)),
    "GONE.SH": Listing("GONE.SH", list_date=D(2010, 1, 4), delist_date=D(2019, 7, 1)),
    "NEW.SH": Listing("NEW.SH", list_date=D(2019, 3, 2)),  # a Saturday: first session Monday
}


def test_a_delisted_ticker_is_skipped_from_its_delist_date_on() -> None:
    """On and after the delist date the ticker is skipped with the date; before, it is not."""
    last = {"GONE.SH": D(2019, 6, 28)}
    on = listing_events(LISTINGS, D(2019, 7, 1), last, {}, WEEKDAYS)
    assert on.skipped["GONE.SH"].startswith("GONE.SH: delisted on 2019-07-01")
    before = listing_events(LISTINGS, D(2019, 6, 28), last, {}, WEEKDAYS)
    assert before.skipped == {}


def test_a_suspended_ticker_is_skipped_since_its_first_day_without_a_bar() -> None:
    """A listed ticker without a bar on the as-of day: "suspended since" the day after its last
    bar that the exchange traded."""
    events = listing_events(LISTINGS, D(2019, 8, 21), {"OLD.SH": D(2019, 8, 16)}, {}, WEEKDAYS)
    assert events.skipped["OLD.SH"].startswith(
        "OLD.SH: suspended since 2019-08-19 (no bar on 3 trading days through 2019-08-21)"
    )
    # a weekend is no suspension
    assert (
        listing_events(LISTINGS, D(2019, 8, 18), {"OLD.SH": D(2019, 8, 16)}, {}, WEEKDAYS).skipped
        == {}
    )


def test_newly_listed_means_history_from_the_first_session() -> None:
    """A ticker whose first bar is its first session is newly listed; one whose stored history
    starts later than its listing is not (its history is incomplete, not short)."""
    last = {"NEW.SH": D(2019, 4, 1), "OLD.SH": D(2019, 4, 1)}
    first = {"NEW.SH": D(2019, 3, 4), "OLD.SH": D(2019, 3, 4)}
    events = listing_events(LISTINGS, D(2019, 4, 1), last, first, WEEKDAYS)
    assert events.newly_listed == {"NEW.SH"} and events.skipped == {}


def test_without_reference_data_nothing_is_decided_here() -> None:
    """A ticker without a listing (a CSV source) is left to the stale-price rule."""
    events = listing_events({}, D(2019, 8, 21), {"X.SH": D(2019, 1, 2)}, {}, WEEKDAYS)
    assert events == listing_events({}, D(2019, 8, 21), {}, {}, WEEKDAYS)


@pytest.fixture()
def stub() -> Iterator[TushareStub]:
    with market_stub(row_limit=1000) as server:
        yield server


MODEL = ModelSettings(
    input_len=20,
    horizon=3,
    hidden_size=8,
    max_epochs=1,
    patience=1,
    val_days=10,
    history_days=200,
    batch_size=256,
    finetune_epochs=1,
)


@pytest.mark.slow
def test_a_run_over_the_market_follows_its_listing_events(
    stub: TushareStub, sqlite_engine: Engine, sqlite_url: str
) -> None:
    """Through the real ingest and run: the code listed mid-history is skipped while it has
    fewer than input_len + 1 closes and forecast from then on (though short of min_history);
    later the delisted ticker is skipped after its delist date and the suspended one "suspended
    since" its first day without a bar, while the others are forecast."""
    settings = Settings(database_url=sqlite_url, model=MODEL, policy=PolicySettings(min_history=40))
    source = market_source(stub)
    ingest(
        sqlite_engine,
        source,
        tickers=list(TICKERS),
        end=LAST,
        history_start=D(2019, 1, 1),
        progress=False,
    )

    early = run_pipeline(sqlite_engine, settings, D(2019, 3, 29), tickers=TICKERS)
    assert early.status == "success", early.message
    assert early.skipped["688001.SH"].startswith("688001.SH: only 20 trading days")
    assert "needs 21" in early.skipped["688001.SH"]
    assert D(2019, 3, 4) == NEW_LISTING  # the 20 trading days are Mar 4..29
    listed = run_pipeline(sqlite_engine, settings, D(2019, 4, 1), tickers=TICKERS)
    assert "688001.SH" in listed.tickers_forecast

    late = run_pipeline(sqlite_engine, settings, LAST, tickers=TICKERS)
    assert late.skipped["600001.SH"].startswith(f"600001.SH: delisted on {DELISTED}")
    assert late.skipped["000002.SZ"].startswith(f"000002.SZ: suspended since {SUSPENDED[0]}")
    assert late.tickers_forecast == sorted(set(TICKERS) - {"600001.SH", "000002.SZ"})
