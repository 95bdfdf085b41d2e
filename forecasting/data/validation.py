"""Validation of a source's bars, pure: clean rows, and rejections that say why.

A source passes on what it was sent (:mod:`forecasting.data.sources.base`); this is where a bar
is refused: a missing date, bars for another ticker, a NaN or non-positive close, high below
low, conflicting duplicate dates, a bar on a day the exchange is certainly closed. Nothing here
touches the database: the ingest (:mod:`forecasting.data.ingest`) stores the clean rows
(:func:`forecasting.data.prices.upsert_prices`) and the rejections (``rejected_rows``).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from forecasting.data.calendar import TradingCalendar
from forecasting.data.sources.base import BAR_COLUMNS, VALUE_COLUMNS, SourceError, empty_bars


@dataclass(frozen=True)
class Rejection:
    """One row the ingest refused, with the values the source sent and the reason."""

    ticker: str
    trade_date: dt.date | None
    raw: dict[str, Any]
    reason: str


def validate_bars(
    bars: pd.DataFrame, ticker: str, calendar: TradingCalendar | None = None
) -> tuple[pd.DataFrame, list[Rejection]]:
    """Split a source's bars into clean rows (one per date, oldest first) and rejections.

    Rejected: a missing date; bars for another ticker; NaN, zero or negative close; high below
    low; every copy of a date whose copies disagree (exact copies collapse to one); a date that
    is a weekend or closed per the calendar's database rows. Fallback calendars only guess, so a
    weekday they call closed is not grounds for refusing a real bar.
    """
    missing = set(BAR_COLUMNS) - set(bars.columns)
    if missing:
        raise SourceError(
            f"{ticker}: the source returned bars without columns {sorted(missing)}; "
            "a source must return forecasting.data.sources.base.BAR_COLUMNS"
        )
    if bars.empty:
        return empty_bars(), []
    raw = bars.loc[:, list(BAR_COLUMNS)].reset_index(drop=True)
    frame = raw.copy()
    frame["trade_date"] = _as_dates(frame["trade_date"])
    for col in VALUE_COLUMNS:
        if frame[col].dtype != "float64":  # the protocol promises floats; coerce the rest
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")

    # Reasons only for flagged rows: most batches are clean, and this runs once per ticker.
    reasons: dict[int, list[str]] = {}

    def flag(mask: np.ndarray, make: Any) -> None:
        for i in np.flatnonzero(mask):
            reasons.setdefault(int(i), []).append(make(int(i)))

    no_date = frame["trade_date"].isna().to_numpy()
    dates: list[dt.date | None] = frame["trade_date"].tolist()
    if no_date.any():
        dates = [None if missing else d for d, missing in zip(dates, no_date, strict=True)]
    flag(no_date, lambda i: "the row has no trade_date")
    other = (frame["ticker"].astype("object") != ticker).to_numpy()
    flag(other, lambda i: f"the source returned it for ticker {frame['ticker'].iat[i]!r}")

    # Duplicates: exact copies collapse to one; a date whose copies disagree loses every
    # version, since nothing says which one is right.
    key_cols = ["trade_date", *VALUE_COLUMNS]
    exact_dup = frame.duplicated(subset=key_cols, keep="first").to_numpy()
    distinct = frame.loc[~exact_dup & ~no_date, "trade_date"]
    versions: dict[Any, int] = distinct.value_counts().to_dict()
    conflict_dates = {d for d, n in versions.items() if n > 1}
    conflict = (
        np.array([d in conflict_dates for d in dates], dtype=bool)
        if conflict_dates
        else np.zeros(len(frame), dtype=bool)
    )
    flag(
        conflict,
        lambda i: f"the source sent {versions[dates[i]]} different rows for this date",
    )

    close = frame["close"].to_numpy()
    flag(np.isnan(close), lambda i: "close is missing (NaN)")
    flag(~np.isnan(close) & (close <= 0), lambda i: f"close is {close[i]:g}, not a positive price")
    high, low = frame["high"].to_numpy(), frame["low"].to_numpy()
    flag(high < low, lambda i: f"high {high[i]:g} is below low {low[i]:g}")

    has_date = ~no_date
    if has_date.any():
        cal = calendar or TradingCalendar(use_xshg=False)
        closed = np.zeros(len(frame), dtype=bool)
        closed[has_date] = cal.known_closed_mask([d for d in dates if d is not None])
        flag(closed, lambda i: _closed_reason(cal, dates[i]))

    bad = np.zeros(len(frame), dtype=bool)
    bad[list(reasons)] = True
    # Exact copies of a bad row are recorded once, like exact copies of a good one are stored once.
    rejections = [
        Rejection(
            ticker=ticker,
            trade_date=dates[i],
            raw=_raw_json(raw.iloc[i]),
            reason=_sentence(ticker, dates[i], reasons[i]),
        )
        for i in np.flatnonzero(bad & ~exact_dup).tolist()
    ]
    clean = frame[~bad & ~exact_dup].sort_values("trade_date", ignore_index=True)
    clean["ticker"] = ticker
    return clean, rejections


def _closed_reason(cal: TradingCalendar, d: dt.date | None) -> str:
    assert d is not None  # only dated rows are checked against the calendar
    if d.weekday() >= 5:
        return f"{d:%A} {d} is a weekend and the exchange does not trade"
    return f"the {cal.exchange} trading calendar in the database marks {d} as closed"


def _sentence(ticker: str, d: dt.date | None, reasons: list[str]) -> str:
    when = f"on {d}" if d is not None else "with no date"
    return (
        f"{ticker} {when}: rejected because {'; and '.join(reasons)}. The row was not stored; "
        f"correct it at the source and re-ingest {ticker}"
        + (f" with start={d}." if d is not None else ".")
    )


def _raw_json(row: pd.Series) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, dt.date | pd.Timestamp):
            out[str(k)] = v.isoformat()
        elif isinstance(v, float | np.floating):
            out[str(k)] = None if math.isnan(v) else float(v)
        elif isinstance(v, np.integer):
            out[str(k)] = int(v)
        elif v is None or (not isinstance(v, str) and pd.isna(v)):
            out[str(k)] = None
        else:
            out[str(k)] = v if isinstance(v, str | int | bool) else str(v)
    return out


def _as_dates(col: pd.Series) -> pd.Series:
    """``datetime.date`` objects (None where missing) from whatever the source sent."""
    values = col.astype("object")
    if all(type(v) is dt.date for v in values.tolist()):  # what the protocol promises
        return values
    as_str = values.map(lambda v: v if isinstance(v, str) else None)
    if as_str.notna().all() and as_str.str.fullmatch(r"\d{8}").all():
        parsed = pd.to_datetime(as_str, format="%Y%m%d", errors="coerce")
    else:
        parsed = pd.to_datetime(values, errors="coerce")
    return pd.Series(
        [None if pd.isna(t) else t.date() for t in parsed], index=col.index, dtype="object"
    )
