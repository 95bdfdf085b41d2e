"""A small stub market with every listing event: a mid-history listing, a delisting, a
suspension, boards other than main; shared by the data and pipeline tests."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tushare_stub import StubListing, TushareStub

from forecasting.data.sources.tushare_market import TushareMarketSource

FIRST, LAST = dt.date(2019, 1, 1), dt.date(2019, 8, 30)
NEW_LISTING = dt.date(2019, 3, 4)  # 688001.SH starts trading here
DELISTED = dt.date(2019, 7, 1)  # 600001.SH's delist date: last bar the trading day before
SUSPENDED = (dt.date(2019, 8, 19), dt.date(2019, 8, 30))  # 000002.SZ has no bar in this span

LISTINGS = (
    StubListing("600000.SH", "浦发银行", "主板", "银行"),
    StubListing("000001.SZ", "平安银行", "主板", "银行"),
    StubListing("300750.SZ", "宁德时代", "创业板", "电气设备"),
    StubListing("688001.SH", "华兴源创", "科创板", "专用机械", list_date=NEW_LISTING),
    StubListing("600001.SH", "邯郸钢铁", "主板", "普钢", delist_date=DELISTED),
    StubListing("000002.SZ", "万科A", "主板", "全国地产", suspended=(SUSPENDED,)),
)
TICKERS = tuple(x.ticker for x in LISTINGS)


def market_stub(**kw: Any) -> TushareStub:
    """The stub serving :data:`LISTINGS` (not started: use it as a context manager)."""
    stub = TushareStub(first=FIRST, last=LAST, row_limit=kw.pop("row_limit", 60), **kw)
    stub.list_stocks(*LISTINGS)
    stub.market.index_weights["000300.SH"] = {
        dt.date(2019, 1, 31): ["000001.SZ", "600000.SH", "600001.SH"],
        dt.date(2019, 4, 30): ["000001.SZ", "600000.SH", "688001.SH"],
    }
    return stub


def market_source(stub: TushareStub, **kw: Any) -> TushareMarketSource:
    kw.setdefault("retries", 0)
    kw.setdefault("backoff", 0.001)
    kw.setdefault("page_size", stub.row_limit)
    return TushareMarketSource(stub.token, http_url=stub.url, **kw)
