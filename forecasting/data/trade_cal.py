"""Tushare ``trade_cal`` rows into the ``trading_calendar`` table: parsed once, then upserted.

A source's calendar frame (tushare's ``YYYYMMDD`` strings and ``"0"``/``"1"`` flags, or the
dates and bools of the CSV and demo sources) is normalized by :func:`normalize_trade_cal` into
one ``cal_date``/``is_open`` row per date, and :func:`load_trade_cal` writes those rows under
the calendar's storage key (:func:`~forecasting.data.calendar.calendar_exchange`), touching
only the dates whose answer changed. Reading them back, and answering trading-day questions
from them, is :class:`~forecasting.data.calendar.TradingCalendar`'s job.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.engine import Connection, Engine

from forecasting.data.calendar import DEFAULT_EXCHANGE, CalendarError, calendar_exchange
from forecasting.data.schema import trading_calendar


def normalize_trade_cal(frame: pd.DataFrame) -> pd.DataFrame:
    """``cal_date`` as ``datetime.date`` and ``is_open`` as bool, one row per date.

    Accepts what sources send: dates as ``date``, ``Timestamp``, ``YYYYMMDD`` or ISO strings;
    ``is_open`` as 0/1, bool or ``"0"``/``"1"``.
    """
    missing = {"cal_date", "is_open"} - set(frame.columns)
    if missing:
        raise CalendarError(
            f"trading calendar frame lacks columns {sorted(missing)}; a source must return "
            "cal_date and is_open"
        )
    raw = frame["cal_date"]
    if raw.map(lambda v: isinstance(v, dt.date) and not isinstance(v, dt.datetime)).all():
        dates = raw
    else:
        as_str = raw.astype(str).str.strip()
        fmt = "%Y%m%d" if as_str.str.fullmatch(r"\d{8}").all() else "ISO8601"
        dates = pd.to_datetime(as_str, format=fmt).dt.date
    is_open = pd.to_numeric(frame["is_open"].astype("object").map(_truthy)).astype(bool)
    out = pd.DataFrame({"cal_date": list(dates), "is_open": is_open.to_numpy()})
    return out.drop_duplicates("cal_date", keep="last").sort_values("cal_date", ignore_index=True)


def _truthy(v: object) -> int:
    if isinstance(v, str):
        return int(v.strip().lower() in ("1", "true", "t", "yes", "y"))
    return int(bool(v))


def load_trade_cal(
    conn_or_engine: Connection | Engine,
    frame: pd.DataFrame,
    exchange: str = DEFAULT_EXCHANGE,
    *,
    source: str = "tushare",
) -> tuple[int, int]:
    """Upsert ``cal_date, is_open`` rows into ``trading_calendar``; returns (inserted, updated).

    Rows that already say the same thing are left alone. Given an engine it commits its own
    transaction; given a connection the caller owns the transaction.
    """
    if isinstance(conn_or_engine, Engine):
        with conn_or_engine.begin() as conn:
            return load_trade_cal(conn, frame, exchange, source=source)
    conn = conn_or_engine
    rows = normalize_trade_cal(frame)
    if rows.empty:
        return 0, 0
    key = calendar_exchange(exchange)
    tc = trading_calendar.c
    stored: dict[dt.date, bool] = {
        d: bool(is_open)
        for d, is_open in conn.execute(
            select(tc.cal_date, tc.is_open).where(
                and_(
                    tc.exchange == key,
                    tc.cal_date >= rows["cal_date"].iloc[0],
                    tc.cal_date <= rows["cal_date"].iloc[-1],
                )
            )
        )
    }
    new, changed = [], []
    for d, is_open in zip(rows["cal_date"], rows["is_open"], strict=True):
        flag = bool(is_open)
        if d not in stored:
            new.append({"exchange": key, "cal_date": d, "is_open": flag, "source": source})
        elif bool(stored[d]) != flag:
            changed.append({"b_date": d, "is_open": flag, "source": source})
    if new:
        conn.execute(trading_calendar.insert(), new)
    if changed:
        conn.execute(
            update(trading_calendar)
            .where(and_(tc.exchange == key, tc.cal_date == bindparam("b_date")))
            .values(is_open=bindparam("is_open"), source=bindparam("source")),
            changed,
        )
    return len(new), len(changed)
