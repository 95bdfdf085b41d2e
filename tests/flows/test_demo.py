"""`forecasting demo` on every day of the year, with "today" set by the clock given to ``main``:
on a weekend or an exchange holiday it forecasts as of the last trading day and says so."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from flow_support import TINY_MODEL
from sqlalchemy import func, select

from forecasting.clock import Clock
from forecasting.data.calendar import TradingCalendar
from forecasting.data.schema import forecasts, prices
from forecasting_flows.cli import main
from forecasting_flows.commands import last_trading_day
from forecasting_flows.common import engine_for

SHANGHAI = ZoneInfo("Asia/Shanghai")


def at(day: dt.date, hour: int = 10) -> Clock:
    """A clock stopped at ``hour`` o'clock on ``day`` in Shanghai."""
    now = dt.datetime.combine(day, dt.time(hour), tzinfo=SHANGHAI)
    return lambda: now


@pytest.fixture()
def demo_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The demo's SQLite file in a fresh working directory, with tiny model settings and two
    years of history, so a demo run trains in seconds."""
    monkeypatch.chdir(tmp_path)
    for key in ("FORECASTING_CONFIG", "FORECASTING_TICKERS", "TUSHARE_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    url = f"sqlite:///{tmp_path / 'forecasting.db'}"
    env = {
        **TINY_MODEL,
        "FORECASTING_DATABASE_URL": url,
        "FORECASTING_HISTORY_START": "2025-01-01",
        "FORECASTING_TASK_RUNNER": "thread",
        "FORECASTING_MODEL_DIR": str(tmp_path / "models"),
        "FORECASTING_REPORT_DIR": str(tmp_path / "reports"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield url
    engine_for.cache_clear()


def _stored_as_of_dates(url: str) -> set[dt.date]:
    with engine_for(url).connect() as conn:
        return set(conn.execute(select(forecasts.c.as_of_date).distinct()).scalars())


#: Closed days: today, the as-of the demo takes instead, and the line it prints about it.
CLOSED_DAYS = {
    "saturday": (
        dt.date(2026, 12, 5),
        dt.date(2026, 12, 4),
        "Saturday 2026-12-05 is not a trading day; "
        "forecasting as of Friday 2026-12-04, the last trading day",
    ),
    "national-day": (
        dt.date(2026, 10, 1),
        dt.date(2026, 9, 30),
        "Thursday 2026-10-01 is not a trading day; "
        "forecasting as of Wednesday 2026-09-30, the last trading day",
    ),
    "weekend-past-the-xshg-calendar": (
        dt.date(2027, 1, 9),
        dt.date(2027, 1, 8),
        "Saturday 2027-01-09 is not a trading day; "
        "forecasting as of Friday 2027-01-08, the last trading day (the XSHG calendar past "
        "2026-12-31 is weekdays only: holidays there are unknown)",
    ),
}


@pytest.mark.parametrize(
    ("today", "as_of", "line"),
    [
        pytest.param(dt.date(2026, 12, 1), dt.date(2026, 12, 1), None, id="trading-day"),
        pytest.param(
            dt.date(2027, 1, 4),
            dt.date(2027, 1, 4),
            "forecasting as of Monday 2027-01-04 (the XSHG calendar past 2026-12-31 is "
            "weekdays only: holidays there are unknown)",
            id="weekday-past-the-xshg-calendar",
        ),
        *(pytest.param(*case, id=name) for name, case in CLOSED_DAYS.items()),
    ],
)
def test_last_trading_day(today: dt.date, as_of: dt.date, line: str | None) -> None:
    """A trading day is its own as-of, silently; a closed day steps back to the last trading
    day and says so; past the XSHG calendar the line says the weekdays are only a guess."""
    assert last_trading_day(TradingCalendar(), today) == (as_of, line)


def test_ingest_calendar_and_run_default_to_the_clocks_day(
    demo_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ingest` fetches up to the clock's Shanghai date, `calendar` lists the trading days
    after it, and `run` on a closed day by that clock has nothing to do (and starts no flow)."""

    def saturday() -> dt.datetime:
        return dt.datetime(2026, 12, 4, 18, 30, tzinfo=dt.UTC)  # Saturday 02:30 in Shanghai

    assert main(["ingest", "--source", "demo", "--tickers", "600519.SH"], clock=saturday) == 0
    with engine_for(demo_db).connect() as conn:
        assert conn.execute(select(func.max(prices.c.trade_date))).scalar() == dt.date(2026, 12, 4)
    assert main(["calendar", "-n", "1"], clock=saturday) == 0
    out = capsys.readouterr().out
    assert "next 1 trading days after 2026-12-05:\n  2026-12-07  (xshg)" in out
    assert main(["run"], clock=saturday) == 0
    assert "2026-12-05 is not a trading day; nothing to do" in capsys.readouterr().out


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(("today", "as_of", "line"), CLOSED_DAYS.values(), ids=CLOSED_DAYS)
def test_demo_on_a_closed_day_forecasts_as_of_the_last_trading_day(
    demo_db: str,
    capsys: pytest.CaptureFixture[str],
    today: dt.date,
    as_of: dt.date,
    line: str,
) -> None:
    """The demo ingests up to the clock's day, says which as-of it took instead, exits 0 and
    prints the forecasts it wrote for that as-of."""
    assert main(["demo"], clock=at(today)) == 0
    out = capsys.readouterr().out
    assert f"      {line}\n" in out
    assert "nothing to do" not in out
    assert f"Next-day forecasts as of {as_of}:" in out
    assert _stored_as_of_dates(demo_db) == {as_of}


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_harness")
def test_demo_on_a_trading_day_forecasts_as_of_that_day(
    demo_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a trading day the demo forecasts as of the clock's day and has nothing to explain."""
    assert main(["demo"], clock=at(dt.date(2026, 12, 1))) == 0
    out = capsys.readouterr().out
    assert "not a trading day" not in out and "forecasting as of" not in out
    assert "Next-day forecasts as of 2026-12-01:" in out
    assert _stored_as_of_dates(demo_db) == {dt.date(2026, 12, 1)}
