"""A-share daily price limits (涨跌停) by board, and the plausibility bound for everything else.

The exchanges cap one day's move against the previous close: the main boards of Shanghai and
Shenzhen at 10% (5% for ST and *ST stocks), ChiNext at 20% (10% before the registration reform of
2020-08-24), the STAR Market at 20%, the Beijing Stock Exchange at 30%. A stock's first five
trading days after listing have no limit. Indices, funds and other markets have no exchange
limit here; the ingest bounds them with a configured maximum move instead.

The rules are data (:data:`BOARD_LIMITS`) and pure functions, so the ingest's plausibility check
(:mod:`forecasting.data.validation`) and anything else that needs them (limit-up/limit-down flags
as model features, reference data by board) read one definition.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal

Board = Literal["main", "chinext", "star", "bse", "other"]

#: Trading days after listing without a price limit (the listing day is day 1).
NO_LIMIT_DAYS = 5

#: Calendar days of suspension after which trading may resume without the usual limit (the
#: share-structure reform of 2005-06 and restructurings resumed that way); the ingest then
#: bounds the move by its general plausibility limit instead.
RESUMPTION_GAP_DAYS = 14
#: After a suspension this long (a relisting, a major restructuring) the first day has no limit.
RELISTING_GAP_DAYS = 90

#: The ST limit on the main boards; ChiNext and STAR ST stocks keep their board's limit.
ST_LIMIT = 0.05

#: Shanghai and Shenzhen have limited daily moves since this day; before it there were none.
LIMITS_FROM = dt.date(1996, 12, 16)

#: ChiNext moved from 10% to 20% on this day (the registration-system reform).
CHINEXT_20PCT_FROM = dt.date(2020, 8, 24)

BOARD_LIMITS: dict[Board, float] = {"main": 0.10, "chinext": 0.20, "star": 0.20, "bse": 0.30}

#: Limit prices are rounded to the fen (0.01 yuan), so a close may exceed the exact fraction by
#: up to half a fen; adjusted (qfq) histories round each price again. This much slack per price
#: keeps a real limit-up day from ever looking implausible.
PRICE_TICK = 0.01

_ST = re.compile(r"^(S\*?|\*)?ST(?![A-Z])")


def board_of(ticker: str) -> Board:
    """The board a tushare-style code trades on; ``"other"`` for indices and unknown codes.

    ``600519.SH`` main, ``688981.SH`` STAR, ``000001.SZ`` main, ``300750.SZ`` ChiNext,
    ``430047.BJ`` / ``830799.BJ`` / ``920002.BJ`` BSE. ``000300.SH`` (an index) is ``other``.
    """
    code, _, suffix = ticker.strip().upper().partition(".")
    if len(code) != 6 or not code.isdigit():
        return "other"
    if suffix == "SH":
        if code[:3] in ("600", "601", "603", "605"):
            return "main"
        if code[:3] in ("688", "689"):
            return "star"
        return "other"  # 000xxx.SH are SSE indices, 5xxxxx funds
    if suffix == "SZ":
        if code[:3] in ("000", "001", "002", "003"):
            return "main"
        if code[:3] in ("300", "301"):
            return "chinext"
        return "other"  # 399xxx indices, 1xxxxx funds
    if suffix == "BJ" and code[0] in "489":
        return "bse"
    return "other"


def is_st(name: str | None) -> bool:
    """Whether a security name marks special treatment (``ST``, ``*ST``, ``SST``, ``S*ST``)."""
    return bool(name) and _ST.match(str(name).strip().upper()) is not None


def daily_limit(
    ticker: str,
    on: dt.date,
    *,
    st: bool = False,
    trading_day_since_listing: int | None = None,
) -> float | None:
    """The largest fraction a close may move from the previous close on ``on``; None: no limit.

    ``trading_day_since_listing`` counts the listing day as 1; days 1 to :data:`NO_LIMIT_DAYS`
    have no limit. ``st`` applies the 5% ST limit on the main boards.
    """
    if trading_day_since_listing is not None and trading_day_since_listing <= NO_LIMIT_DAYS:
        return None
    board = board_of(ticker)
    if board == "other" or (board != "bse" and on < LIMITS_FROM):
        return None
    if board == "main" and st:
        return ST_LIMIT
    if board == "chinext" and on < CHINEXT_20PCT_FROM:
        return BOARD_LIMITS["main"]
    return BOARD_LIMITS[board]


def limit_prices(prev_close: float, limit: float) -> tuple[float, float]:
    """The limit-down and limit-up prices after ``prev_close``, rounded half up to the fen."""
    # The exchanges round half up; the nudge keeps 9.045 (stored as 9.04499...) going up.
    return round(prev_close * (1.0 - limit) + 1e-9, 2), round(prev_close * (1.0 + limit) + 1e-9, 2)
