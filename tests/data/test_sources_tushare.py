"""TushareSource: the real tushare client against a local server speaking tushare's wire format."""

from __future__ import annotations

import datetime as dt
import logging
import traceback
from collections.abc import Iterator

import pytest
from tushare_stub import SPLIT_INDEX, TushareStub

from forecasting.data.sources.base import BAR_COLUMNS, PriceSource, Security, SourceError
from forecasting.data.sources.tushare import TushareSource

START, END = dt.date(2019, 1, 1), dt.date(2020, 6, 30)


@pytest.fixture()
def stub() -> Iterator[TushareStub]:
    with TushareStub(row_limit=50, first=START, last=END) as server:
        yield server


def make(stub: TushareStub, token: str | None = None, **kw: object) -> TushareSource:
    kw.setdefault("retries", 3)
    kw.setdefault("backoff", 0.001)
    kw.setdefault("page_size", stub.row_limit)
    return TushareSource(stub.token if token is None else token, http_url=stub.url, **kw)  # type: ignore[arg-type]


def test_it_is_a_price_source(stub: TushareStub) -> None:
    """It satisfies the PriceSource protocol and never shows the token in its repr."""
    source = make(stub)
    assert isinstance(source, PriceSource)
    assert stub.token not in repr(source)


def test_it_pages_back_until_a_reply_holds_no_older_row(stub: TushareStub) -> None:
    """Each page asks for the dates before the oldest row so far, until a reply adds nothing
    older (here an empty one: 2019-01-01 is a holiday, so the start is never reached)."""
    bars = make(stub).fetch_bars("600519.SH", START, END)
    expected = stub.bars("600519.SH")
    assert len(expected) > 3 * stub.row_limit  # otherwise paging is not exercised
    daily = stub.calls("daily")
    assert len(daily) == -(-len(expected) // stub.row_limit) + 1
    # every later page ends the day before the oldest row of the previous one
    for previous, following in zip(daily, daily[1:], strict=False):
        assert following["params"]["end_date"] < previous["params"]["end_date"]
        assert following["params"]["start_date"] == "20190101"
    assert len(bars) == len(expected)


def test_pages_shorter_than_the_assumed_limit_do_not_truncate_history(stub: TushareStub) -> None:
    """A server capping replies at 50 rows while the client assumes tushare's 6000 still yields
    the whole history: a short page does not end the paging."""
    bars = make(stub, page_size=6000).fetch_bars("600519.SH", START, END)
    assert len(bars) == len(stub.bars("600519.SH")) > 6 * stub.row_limit


def test_rows_under_another_ts_code_keep_that_code(stub: TushareStub) -> None:
    """A reply row carrying another ticker's ts_code is passed on as that ticker (for the
    ingest to reject), never relabelled as the ticker asked for."""
    stray = {**stub.bars("000001.SZ")[3], "ts_code": "000002.SZ"}
    stub.extra["000001.SZ"] = [stray]
    bars = make(stub).fetch_bars("000001.SZ", START, END)
    assert bars["ticker"].value_counts().to_dict() == {
        "000001.SZ": len(stub.bars("000001.SZ")),
        "000002.SZ": 1,
    }


def test_newest_first_rows_come_back_oldest_first_and_complete(stub: TushareStub) -> None:
    """Bars have exactly BAR_COLUMNS, dates as datetime.date ascending, every stub row once."""
    bars = make(stub).fetch_bars("600519.SH", START, END)
    assert list(bars.columns) == list(BAR_COLUMNS)
    dates = list(bars["trade_date"])
    assert all(type(d) is dt.date for d in dates)
    assert dates == sorted(dates) and len(set(dates)) == len(dates)
    expected = stub.bars("600519.SH")
    assert [d.strftime("%Y%m%d") for d in dates] == [r["trade_date"] for r in expected]
    assert bars["close"].tolist() == [r["close"] for r in expected]
    assert bars["volume"].tolist() == [r["vol"] for r in expected]
    assert bars["amount"].tolist() == [r["amount"] for r in expected]
    assert (bars["ticker"] == "600519.SH").all()
    for column in BAR_COLUMNS[2:]:
        assert bars[column].dtype == "float64", column


def test_it_fetches_only_the_requested_span(stub: TushareStub) -> None:
    """A narrow range asks tushare for that range and returns only bars inside it."""
    lo, hi = dt.date(2019, 3, 4), dt.date(2019, 3, 8)
    bars = make(stub).fetch_bars("600519.sh", lo, hi)
    assert list(bars["trade_date"]) == [lo + dt.timedelta(days=i) for i in range(5)]
    assert stub.calls("daily")[0]["params"]["start_date"] == "20190304"
    assert stub.calls("daily")[0]["params"]["end_date"] == "20190308"


def test_no_rows_is_empty_bars_not_an_error(stub: TushareStub) -> None:
    """A ticker listed after the range: a code-0 reply with no rows means no data."""
    stub.listed["688001.SH"] = dt.date(2020, 1, 2)
    bars = make(stub).fetch_bars("688001.SH", START, dt.date(2019, 12, 31))
    assert bars.empty and list(bars.columns) == list(BAR_COLUMNS)


def test_adj_factor_is_merged_for_stocks(stub: TushareStub) -> None:
    """Stock bars carry tushare's adj_factor for the same date (1.0 before the bonus issue, 2.0 after)."""
    bars = make(stub).fetch_bars("000001.SZ", START, END)
    expected = [r["adj_factor"] for r in stub.bars("000001.SZ")]
    assert bars["adj_factor"].tolist() == expected
    assert (
        bars["adj_factor"].iloc[SPLIT_INDEX - 1] == 1.0
        and bars["adj_factor"].iloc[SPLIT_INDEX] == 2.0
    )
    assert len(stub.calls("adj_factor")) > 1  # paged like daily


def test_indices_use_index_daily_without_adj_factor(stub: TushareStub) -> None:
    """Known index codes go to index_daily; their adj_factor is NaN and no adj_factor call is made."""
    source = make(stub)
    assert source.security("000300.SH") == Security("000300.SH", None, "index", "SSE")
    assert source.security("000001.SZ").kind == "stock"
    bars = source.fetch_bars("000300.SH", START, END)
    assert len(bars) == len(stub.bars("000300.SH"))
    assert bars["adj_factor"].isna().all()
    assert stub.calls("daily") == [] and stub.calls("adj_factor") == []
    assert len(stub.calls("index_daily")) > 1


def test_a_securities_hint_marks_an_index(stub: TushareStub) -> None:
    """An index outside the built-in list is fetched with index_daily when the hint says so."""
    source = make(stub, securities=[Security("000905.SH", "CSI 500", "index")], index_tickers=())
    assert source.security("000905.SH") == Security("000905.SH", "CSI 500", "index", "SSE")
    assert make(stub, index_tickers=()).security("000905.SH").kind == "stock"
    assert len(source.fetch_bars("000905.SH", START, END)) == len(stub.bars("000905.SH"))


def test_rate_limit_message_is_retried(stub: TushareStub, caplog: pytest.LogCaptureFixture) -> None:
    """Two rate-limit replies, then success: the bars arrive and the retries are logged."""
    stub.rate_limit_next(2)
    with caplog.at_level(logging.WARNING, logger="forecasting.data.sources.tushare_client"):
        bars = make(stub).fetch_bars("600519.SH", dt.date(2019, 3, 4), dt.date(2019, 3, 8))
    assert len(bars) == 5
    assert len(stub.calls("daily")) == 3
    assert "rate limited" in caplog.text and "600519.SH" in caplog.text
    assert stub.token not in caplog.text


def test_persistent_rate_limit_gives_up_with_a_clear_error(stub: TushareStub) -> None:
    """After the configured retries it raises a SourceError naming the ticker and the dates."""
    stub.rate_limit_next(100)
    with pytest.raises(SourceError) as info:
        make(stub, retries=2).fetch_bars("600519.SH", START, END)
    assert len(stub.calls()) == 3
    message = str(info.value)
    assert "600519.SH" in message and "2019-01-01" in message and "2020-06-30" in message
    assert "每分钟最多访问" in message


def test_bad_token_names_tushare_token_and_hides_the_token(stub: TushareStub) -> None:
    """A rejected token raises at once (no retries), names TUSHARE_TOKEN, never shows the token."""
    wrong = "wrong-token-a7b8c9d0e1f2a3b4c5d6"
    with pytest.raises(SourceError) as info:
        make(stub, token=wrong).fetch_bars("600519.SH", START, END)
    message = str(info.value)
    assert "TUSHARE_TOKEN" in message and "600519.SH" in message and "token不对" in message
    assert wrong not in message and stub.token not in message
    assert len(stub.calls()) == 1


def test_a_token_echoed_by_the_server_is_scrubbed_from_error_and_traceback(
    stub: TushareStub,
) -> None:
    """Even when the server echoes the token, neither the error nor its traceback shows it."""
    wrong = "echoed-token-0a1b2c3d4e5f6a7b8c9d"
    stub.echo_token = True
    with pytest.raises(SourceError) as info:
        make(stub, token=wrong).fetch_bars("600519.SH", START, END)
    assert wrong in stub.calls()[0]["token"]  # the server did see (and echo) it
    shown = "".join(traceback.format_exception(info.value))
    assert "TUSHARE_TOKEN" in shown and "********" in shown
    assert wrong not in shown


def test_missing_token_fails_before_any_request(stub: TushareStub) -> None:
    """No token: a SourceError naming TUSHARE_TOKEN, and the server never hears from us."""
    for token in ("", "   "):
        with pytest.raises(SourceError, match="TUSHARE_TOKEN"):
            TushareSource(token, http_url=stub.url)
    assert stub.calls() == []


def test_http_500_raises_instead_of_returning_empty_data(stub: TushareStub) -> None:
    """tushare's client turns HTTP 500 into an empty frame; the source raises instead."""
    stub.http_error_next(10, status=500)
    with pytest.raises(SourceError, match="HTTP 500") as info:
        make(stub, retries=1).fetch_bars("600519.SH", START, END)
    assert "600519.SH" in str(info.value)
    assert len(stub.calls()) == 2  # 5xx may pass, so it was retried once


def test_http_500_once_then_success(stub: TushareStub) -> None:
    """A single server error is retried and the complete history still arrives."""
    stub.http_error_next(1, status=502)
    bars = make(stub).fetch_bars("600519.SH", START, END)
    assert len(bars) == len(stub.bars("600519.SH"))


def test_http_404_is_not_retried(stub: TushareStub) -> None:
    """A client error will not pass with time: one request, then a SourceError."""
    stub.http_error_next(5, status=404)
    with pytest.raises(SourceError, match="HTTP 404"):
        make(stub).fetch_bars("600519.SH", START, END)
    assert len(stub.calls()) == 1


def test_network_error_is_retried_then_reported() -> None:
    """Nothing listening: retried, then a SourceError naming the ticker and 'network error'."""
    with TushareStub() as server:
        url, token = server.url, server.token
    source = TushareSource(token, http_url=url, retries=1, backoff=0.001, timeout=2)
    with pytest.raises(SourceError, match="network error") as info:
        source.fetch_bars("600519.SH", START, END)
    assert "600519.SH" in str(info.value) and token not in str(info.value)


def test_trading_calendar_from_trade_cal(stub: TushareStub) -> None:
    """trade_cal rows (newest first, paged) become cal_date/is_open, oldest first, every day once."""
    cal = make(stub).trading_calendar(START, END)
    assert list(cal.columns) == ["cal_date", "is_open"]
    assert cal["is_open"].dtype == bool
    assert cal["cal_date"].tolist() == [
        START + dt.timedelta(days=i) for i in range((END - START).days + 1)
    ]
    open_days = [d for d, o in zip(cal["cal_date"], cal["is_open"], strict=True) if o]
    assert open_days == stub.trading_days()
    assert not dict(zip(cal["cal_date"], cal["is_open"], strict=True))[dt.date(2019, 10, 1)]
    assert stub.calls("trade_cal")[0]["params"]["exchange"] == "SSE"
    assert len(stub.calls("trade_cal")) > 1


def test_tickers_are_the_configured_universe(stub: TushareStub) -> None:
    """tickers() is what it was configured with, upper-cased."""
    assert make(stub, tickers=["600519.sh", "000001.SZ"]).tickers() == ["600519.SH", "000001.SZ"]
