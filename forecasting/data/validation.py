"""Validation of a source's bars, pure: clean rows, and rejections that say why.

A source passes on what it was sent (:mod:`forecasting.data.sources.base`); this is where a bar
is refused, at the boundary, before anything is stored:

* **what it is**: a row the source could not parse (its ``problem`` column, with the raw text
  kept), a missing date, bars for another ticker, conflicting copies of one date;
* **when it is**: a date outside the range that was asked for, after today at the exchange, or
  on a day the exchange is certainly closed;
* **its values**: a missing or non-positive close, any value that is not finite, a negative
  open, high, low, volume or amount, open/close outside low..high;
* **its move**: a close further from the previous close than the exchange allows
  (:mod:`forecasting.data.price_limits`, by board; first trading days after listing exempt), or
  for indices and other markets further than :attr:`Checks.max_move`, unless an ``adj_factor``
  change explains it. The previous close is the stored one where the batch starts.

Nothing here touches the database: the ingest (:mod:`forecasting.data.ingest`) stores the clean
rows (:func:`forecasting.data.prices.upsert_prices`) and the rejections (``rejected_rows``).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from forecasting.data.calendar import TradingCalendar
from forecasting.data.price_limits import (
    NO_LIMIT_DAYS,
    PRICE_TICK,
    RELISTING_GAP_DAYS,
    RESUMPTION_GAP_DAYS,
    daily_limit,
)
from forecasting.data.sources.base import BAR_COLUMNS, VALUE_COLUMNS, SourceError, empty_bars

#: Optional columns a source may add: why it could not parse a row, and the row's raw text.
PROBLEM_COLUMN = "problem"
RAW_TEXT_COLUMN = "raw_text"

#: Slack on a price-limit bound: two fen, plus 0.6% for adjusted (qfq/hfq) histories whose
#: prices were each rounded to the fen after scaling (a real limit day must never look wrong).
LIMIT_ABS_TOL = 2 * PRICE_TICK
LIMIT_REL_TOL = 0.006
#: Slack on low <= open, close <= high: float noise only.
OHLC_REL_TOL = 1e-6


@dataclass(frozen=True)
class Rejection:
    """One row the ingest refused, with the values the source sent and the reason."""

    ticker: str
    trade_date: dt.date | None
    raw: dict[str, Any]
    reason: str


@dataclass(frozen=True)
class Checks:
    """What a batch is checked against beyond its own values.

    Args:
        ranges: the date ranges that were asked for; a row outside all of them is rejected
            (None: any date).
        today: today at the exchange; a row after it is rejected (None: no such check).
        max_move: for indices and markets without exchange limits, the largest one-day move
            as a fraction: a close above ``(1 + max_move)`` times the previous one, or below
            it divided by that, is implausible.
        listed: the listing date, when known: the first trading days after it are exempt
            from the price limit. Unknown, the first bars of the ticker's history are.
        st: apply the 5% ST limit on the main boards on every day checked.
        st_spans: the spans ``(start, end)`` (end None: still) in which the ticker's name
            was ST or *ST (tushare's ``namechange``): the 5% limit applies on those days. A
            current ST name says nothing about last year, so the name alone is not used.
    """

    ranges: Sequence[tuple[dt.date, dt.date]] | None = None
    today: dt.date | None = None
    max_move: float = 1.0
    listed: dt.date | None = None
    st: bool = False
    st_spans: Sequence[tuple[dt.date, dt.date | None]] = ()


@dataclass(frozen=True)
class Stored:
    """The stored bars a batch continues: ``trade_date, close, adj_factor`` oldest first, from
    up to :data:`~forecasting.data.price_limits.NO_LIMIT_DAYS` bars before the batch to its end,
    and how many stored bars precede those (to tell listing days)."""

    bars: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(
            {
                "trade_date": pd.Series(dtype=object),
                "close": pd.Series(dtype="float64"),
                "adj_factor": pd.Series(dtype="float64"),
            }
        )
    )
    n_before: int = 0


def validate_bars(
    bars: pd.DataFrame,
    ticker: str,
    calendar: TradingCalendar | None = None,
    checks: Checks | None = None,
    stored: Stored | None = None,
) -> tuple[pd.DataFrame, list[Rejection]]:
    """Split a source's bars into clean rows (one per date, oldest first) and rejections.

    Every rule of the module docstring applies; a date that only a fallback calendar calls
    closed is not grounds for refusing a real bar (it guesses). Exact copies of a row collapse
    to one (a bad one is recorded once).
    """
    checks = checks or Checks()
    missing = set(BAR_COLUMNS) - set(bars.columns)
    if missing:
        raise SourceError(
            f"{ticker}: the source returned bars without columns {sorted(missing)}; "
            "a source must return forecasting.data.sources.base.BAR_COLUMNS"
        )
    if bars.empty:
        return empty_bars(), []
    bars = bars.reset_index(drop=True)
    raw = bars.loc[:, list(BAR_COLUMNS)]
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

    problems = _texts(bars, PROBLEM_COLUMN)
    if problems is not None:
        flag(problems.notna().to_numpy(), lambda i: str(problems.iat[i]))
    no_date = frame["trade_date"].isna().to_numpy()
    dates: list[dt.date | None] = frame["trade_date"].tolist()
    if no_date.any():
        dates = [None if missing else d for d, missing in zip(dates, no_date, strict=True)]
        parse = np.zeros(len(frame), dtype=bool) if problems is None else problems.notna()
        flag(no_date & ~np.asarray(parse), lambda i: "the row has no trade_date")
    other = (frame["ticker"].astype("object") != ticker).to_numpy()
    flag(other, lambda i: f"the source returned it for ticker {frame['ticker'].iat[i]!r}")

    # Duplicates: exact copies collapse to one; a date whose copies disagree loses every
    # version, since nothing says which one is right.
    key_values = ["trade_date", *VALUE_COLUMNS]  # one ticker (the usual case): hash no names
    # A row under another ticker is that ticker's business: it neither collapses into nor
    # conflicts with the asked ticker's row for the same date.
    key_cols = ["ticker", "trade_date", *VALUE_COLUMNS] if other.any() else key_values
    day = as_days(dates)  # [N] datetime64[D], NaT where none
    dated = np.sort(day[~no_date])
    if not (dated[1:] == dated[:-1]).any():  # no date twice (the usual case): no copies
        exact_dup = np.zeros(len(frame), dtype=bool)
        versions: dict[Any, int] = {}
    else:
        exact_dup = frame.duplicated(subset=key_cols, keep="first").to_numpy()
        distinct = frame.loc[~exact_dup & ~no_date & ~other, "trade_date"]
        versions = distinct.value_counts().to_dict()
    conflict_dates = {d for d, n in versions.items() if n > 1}
    conflict = (
        np.array([d in conflict_dates for d in dates], dtype=bool) & ~other
        if conflict_dates
        else np.zeros(len(frame), dtype=bool)
    )
    flag(
        conflict,
        lambda i: f"the source sent {versions[dates[i]]} different rows for this date",
    )

    _check_values(frame, problems, flag)

    has_date = ~no_date
    if has_date.any():
        if checks.today is not None:
            today = checks.today
            flag(
                has_date & (day > np.datetime64(today, "D")),
                lambda i: f"{dates[i]} is after today ({today} at the exchange)",
            )
        if checks.ranges is not None:
            asked = np.zeros(len(frame), dtype=bool)
            for a, b in checks.ranges:
                asked |= (day >= np.datetime64(a, "D")) & (day <= np.datetime64(b, "D"))
            shown = ", ".join(f"{a}..{b}" for a, b in checks.ranges) or "nothing"
            flag(
                has_date & ~asked,
                lambda i: f"{dates[i]} is outside the dates asked for ({shown})",
            )
        cal = calendar or TradingCalendar(use_xshg=False)
        closed = np.zeros(len(frame), dtype=bool)
        closed[has_date] = cal.known_closed_mask([d for d in dates if d is not None])
        flag(closed, lambda i: _closed_reason(cal, dates[i]))

    bad = np.zeros(len(frame), dtype=bool)
    bad[list(reasons)] = True
    # The move is judged last, on the rows that passed everything else, against the stored
    # history they continue (a bad row must not become another row's previous close).
    good = np.flatnonzero(~bad & ~exact_dup)
    for i, why in _implausible(frame, good, day, ticker, checks, stored or Stored()).items():
        reasons.setdefault(i, []).append(why)
        bad[i] = True

    rejections = [
        Rejection(
            ticker=ticker,
            trade_date=dates[i],
            raw=_raw_json(raw.iloc[i], _texts(bars, RAW_TEXT_COLUMN), i),
            reason=_sentence(ticker, dates[i], reasons[i]),
        )
        for i in np.flatnonzero(bad & ~exact_dup).tolist()
    ]
    keep = np.flatnonzero(~bad & ~exact_dup)
    # Oldest first: the kept dates are distinct (copies collapsed, conflicts rejected).
    clean = frame.iloc[keep[np.argsort(day[keep], kind="stable")]].reset_index(drop=True)
    clean["ticker"] = ticker
    return clean, rejections


def screen_day(
    bars: pd.DataFrame,
    *,
    lo: np.ndarray,
    hi: np.ndarray,
    calendar: TradingCalendar,
    today: dt.date,
    max_move: float,
    st: np.ndarray,
    stored: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> np.ndarray:
    """Which rows of many tickers' bars certainly pass :func:`validate_bars`, in one pass.

    ``bars`` holds ``BAR_COLUMNS`` for many tickers (a day's increment), ``lo``/``hi`` [N] are
    the range asked for each row's ticker (``datetime64[D]``), ``st`` [N] whether its ticker
    was ST that day. ``stored`` is ``(tickers, days, close, adj_factor)`` [M] of the stored
    bars of those tickers on the batch's days and each one's last bar before them.

    True means the row passes every check of :func:`validate_bars` for its ticker; the screen
    is conservative: whatever it cannot settle cheaply (a parse problem, a duplicate, any bad
    value, a move beyond the bound whether or not a listing exempts it) is False, and a
    ticker with a False row is left to :func:`validate_bars`, which says why.
    """
    n = len(bars)
    ok = np.ones(n, dtype=bool)
    if n == 0:
        return ok
    if any(bars[c].dtype != "float64" for c in VALUE_COLUMNS):
        return np.zeros(n, dtype=bool)  # the per-ticker path coerces and explains
    if PROBLEM_COLUMN in bars.columns:
        ok &= bars[PROBLEM_COLUMN].isna().to_numpy()
    dates = bars["trade_date"].tolist()
    dated = np.fromiter((type(d) is dt.date for d in dates), dtype=bool, count=n)
    ok &= dated
    if not dated.all():
        dates = [d if isinstance(d, dt.date) else dt.date.min for d in dates]
    ok &= ~bars.duplicated(subset=["ticker", "trade_date"], keep=False).to_numpy()

    def flag(mask: np.ndarray, make: Any) -> None:
        ok[mask] = False

    _check_values(bars, None, flag)
    day = as_days(dates)  # [N]
    ok &= (day <= np.datetime64(today, "D")) & (day >= lo) & (day <= hi)
    ok &= ~calendar.known_closed_mask(dates)

    # The move against the previous accepted close: the stored bars with the batch's rows in
    # their place, per ticker, as validate_bars builds it (rows already failed stay out).
    s_ticker, s_day, s_close, s_factor = stored
    names = bars["ticker"].to_numpy(dtype=object)
    codes, _ = pd.factorize(np.concatenate([names, s_ticker]))  # [N + M]
    key = codes.astype("int64") * (1 << 21) + (
        np.concatenate([day, s_day]).astype("int64") + (1 << 20)
    )
    mine, theirs = key[:n], key[n:]
    kept = ~np.isin(theirs, mine)  # stored rows the batch does not replace
    rows = np.concatenate([np.flatnonzero(ok), np.full(int(kept.sum()), -1)])
    take = rows >= 0
    code = np.concatenate([codes[:n][ok], codes[n:][kept]])
    when = np.concatenate([day[ok], s_day[kept]])
    close = np.concatenate([bars["close"].to_numpy()[ok], s_close[kept]])
    factor = np.concatenate([bars["adj_factor"].to_numpy()[ok], s_factor[kept]])
    limit = np.full(len(rows), np.nan)
    limit[take] = [
        _limit_of(t, d, bool(x))
        for t, d, x in zip(names[ok], np.asarray(dates, dtype=object)[ok], st[ok], strict=True)
    ]
    order = np.lexsort((when, code))  # [S] per ticker, oldest first
    if len(order) < 2:
        return ok
    over = moves_beyond(close[order], factor[order], when[order], limit[order], max_move)
    one_ticker = code[order][1:] == code[order][:-1]  # [S-1]
    follows = rows[order][1:]
    ok[follows[over & one_ticker & (follows >= 0)]] = False
    return ok


def _limit_of(ticker: str, day: dt.date, st: bool) -> float:
    limit = daily_limit(ticker, day, st=st)
    return np.nan if limit is None else limit


def _check_values(frame: pd.DataFrame, problems: pd.Series | None, flag: Any) -> None:
    """Finite, positive prices, non-negative volume and amount, open/close within low..high."""
    values = {c: frame[c].to_numpy() for c in VALUE_COLUMNS}  # each [N] float64
    close = values["close"]
    unparsed = np.zeros(len(frame), dtype=bool) if problems is None else problems.notna()
    # A close the source could not read is already explained by its problem text.
    flag(np.isnan(close) & ~np.asarray(unparsed), lambda i: "close is missing (NaN)")
    for col, v in values.items():
        flag(np.isinf(v), lambda i, col=col, v=v: f"{col} is {v[i]:g}, not a finite number")
    for col in ("open", "high", "low", "close", "adj_factor"):
        v = values[col]
        flag(
            np.isfinite(v) & (v <= 0),
            lambda i, col=col, v=v: f"{col} is {v[i]:g}, not a positive price",
        )
    for col in ("volume", "amount"):
        v = values[col]
        flag(np.isfinite(v) & (v < 0), lambda i, col=col, v=v: f"{col} is {v[i]:g}, below 0")
    high, low = values["high"], values["low"]
    flag(high < low, lambda i: f"high {high[i]:g} is below low {low[i]:g}")
    ok_range = np.isfinite(high) & np.isfinite(low) & (high >= low)
    for col in ("open", "close"):
        v = values[col]
        slack = OHLC_REL_TOL * np.abs(v)
        flag(
            ok_range & np.isfinite(v) & ((v > high + slack) | (v < low - slack)),
            lambda i, col=col, v=v: (
                f"{col} {v[i]:g} is outside low..high ({low[i]:g}..{high[i]:g})"
            ),
        )


def _implausible(
    frame: pd.DataFrame,
    good: np.ndarray,
    day: np.ndarray,
    ticker: str,
    checks: Checks,
    stored: Stored,
) -> dict[int, str]:
    """Rows of ``frame`` (among ``good``) whose close cannot follow the previous accepted close.

    The series is the stored bars with the batch's good rows in their place. Each good row is
    compared with the last accepted close before it, ``k`` bars back: the exchange allows at
    most ``(1 + limit) ** k`` up and ``(1 - limit) ** k`` down over k bars, so a single bad
    row is refused without taking the rows after it down too.
    """
    if len(good) == 0:
        return {}
    mine_day = day[good]  # [G] datetime64[D]
    s_day = as_days(stored.bars["trade_date"].tolist())  # [T]
    theirs = ~np.isin(s_day, mine_day)  # stored bars the batch does not replace
    # Stored first, then the batch, sorted stably by day: as validate_bars has always done.
    all_day = np.concatenate([s_day[theirs], mine_day])
    order = np.argsort(all_day, kind="stable")
    day = all_day[order]  # [S]
    close = np.concatenate(
        [stored.bars["close"].to_numpy(dtype="float64")[theirs], frame["close"].to_numpy()[good]]
    )[order]  # [S]
    factor = np.concatenate(
        [
            stored.bars["adj_factor"].to_numpy(dtype="float64")[theirs],
            frame["adj_factor"].to_numpy()[good],
        ]
    )[order]  # [S]
    rows = np.concatenate([np.full(int(theirs.sum()), -1), good])[order]  # [S], -1 for stored
    # Bar number since the start of the known history (1 = first): listing days are exempt.
    number = stored.n_before + np.arange(1, len(day) + 1)  # [S]
    exempt = _listing_exempt(day, number, checks.listed)

    ordinal = day.astype("int64")  # [S] day numbers
    limit = _limits(ticker, day, checks)  # [S] the exchange limit, NaN where none
    level = np.where(np.isfinite(factor), close * factor, close)  # [S]
    # Fast path: every move within one bar's bound of its predecessor.
    over = moves_beyond(close, factor, day, limit, checks.max_move)  # [S-1]
    suspect = over & (rows[1:] >= 0) & ~exempt[1:]
    if not suspect.any():
        return {}
    first = int(np.flatnonzero(suspect)[0]) + 1  # series index of the first suspect bar
    out: dict[int, str] = {}
    last = first - 1  # the last accepted bar: everything before the first suspect is
    for j in range(first, len(day)):
        if rows[j] < 0 or exempt[j]:
            last = j
            continue
        k = max(j - last, int(np.busday_count(day[last], day[j])))
        r = close[j] / close[last]
        r_adj = level[j] / level[last] if np.isfinite(factor[j] * factor[last]) else r
        u, dn = (
            float(x[0])
            for x in _bounds(limit[j : j + 1], ordinal[j : j + 1] - ordinal[last], checks.max_move)
        )
        tol = (LIMIT_ABS_TOL + LIMIT_REL_TOL * close[last]) / close[last]
        lo, hi = (1 - dn) ** k - tol, (1 + u) ** k + tol
        if lo <= r <= hi or lo <= r_adj <= hi:
            last = j
            continue
        explained = f" ({r_adj - 1:+.1%} after adj_factor)" if r_adj != r else ""
        bound = (
            f"the {u:.0%} daily limit of {ticker}"
            if u == limit[j]
            else f"the {checks.max_move:.0%} plausibility bound (max_move)"
        )
        out[int(rows[j])] = (
            f"close {close[j]:g} moved {r - 1:+.1%}{explained} from {close[last]:g} on "
            f"{day[last].astype(dt.date)}, beyond {bound} over {k} day{'s' if k > 1 else ''}: "
            "implausible (a unit or data error?)"
        )
    return out


def moves_beyond(
    close: np.ndarray, factor: np.ndarray, day: np.ndarray, limit: np.ndarray, max_move: float
) -> np.ndarray:
    """Whether each bar's close [S] moved beyond one bar's bound from the bar before it [S-1].

    ``day`` [S] is ``datetime64[D]``, ``limit`` [S] the exchange limit of each bar's day (NaN
    where none). A move is explained when either the raw close or the split-free close (close
    times adj_factor, where both days have one) stays within the bound. The steps between two
    bars are the weekdays between them (at least 1): a holiday is not a session, but data that
    folds a holiday's news into one bar (or a source that skips days) must not make the bars
    after it look impossible; a unit error still does.
    """
    ordinal = day.astype("int64")  # [S] day numbers
    weekdays = np.busday_count(day[:-1], day[1:])  # [S-1]
    level = np.where(np.isfinite(factor), close * factor, close)  # [S]
    both = np.isfinite(factor[1:]) & np.isfinite(factor[:-1])
    raw = close[1:] / close[:-1]  # [S-1]
    adjusted = np.where(both, level[1:] / level[:-1], raw)  # [S-1]
    up, down = _bounds(limit[1:], ordinal[1:] - ordinal[:-1], max_move)  # [S-1] each
    slack = (LIMIT_ABS_TOL + LIMIT_REL_TOL * close[:-1]) / close[:-1]  # [S-1] as a fraction
    steps = np.maximum(weekdays, 1)  # [S-1]

    def beyond(ratio: np.ndarray) -> np.ndarray:
        out: np.ndarray = (ratio > (1 + up) ** steps + slack) | (
            ratio < (1 - down) ** steps - slack
        )
        return out

    over: np.ndarray = beyond(raw) & beyond(adjusted)
    return over


def _limits(ticker: str, day: np.ndarray, checks: Checks) -> np.ndarray:
    """The exchange's daily limit per day [S] (``day`` [S] datetime64[D]) as a fraction; NaN
    where it sets none."""

    def of(d: np.datetime64, st: bool) -> float:
        limit = daily_limit(ticker, d.astype(dt.date), st=st)
        return np.nan if limit is None else limit

    if not len(day):
        return np.empty(0)
    st = st_mask(day, checks)  # [S]
    if st.all() or not st.any():  # rules change on few dates
        first, last = of(day[0], bool(st[0])), of(day[-1], bool(st[0]))
        if first == last or (np.isnan(first) and np.isnan(last)):
            return np.full(len(day), first)
    return np.array([of(d, bool(x)) for d, x in zip(day, st, strict=True)])


def st_mask(day: np.ndarray, checks: Checks) -> np.ndarray:
    """Whether the ticker was ST (or *ST) on each of ``day`` [S]: from ``checks.st_spans``
    (its names in time, from tushare's ``namechange``), or on every day with ``checks.st``."""
    out = np.full(len(day), checks.st, dtype=bool)
    for a, b in checks.st_spans:
        out |= (day >= np.datetime64(a, "D")) & (
            True if b is None else day <= np.datetime64(b, "D")
        )
    return out


def _bounds(
    limit: np.ndarray, gap_days: np.ndarray, max_move: float
) -> tuple[np.ndarray, np.ndarray]:
    """Largest up and down fraction per bar: the exchange limit, else ``max_move``; after a
    long suspension the exchange may resume without a limit, so ``max_move`` there, and none
    after a suspension of 90 days or more (a relisting, a restructuring)."""
    free_up, free_down = max_move, 1 - 1 / (1 + max_move)  # (1 + m) times up, 1/(1 + m) down
    resumed = gap_days > RESUMPTION_GAP_DAYS
    loose = np.isnan(limit) | resumed
    up = np.where(loose, free_up, limit)
    down = np.where(loose, free_down, limit)
    relisted = gap_days >= RELISTING_GAP_DAYS
    return np.where(relisted, np.inf, up), np.where(relisted, 1.0, down)


_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


def as_days(dates: Sequence[dt.date | None]) -> np.ndarray:
    """``datetime.date`` values as ``datetime64[D]`` [N], NaT for None (numpy's own conversion
    of date objects is ~20x slower than counting ordinals)."""
    nat = np.iinfo(np.int64).min
    try:  # no None (the usual case): the C method over the list, no Python frame per date
        ordinals = np.fromiter(map(dt.date.toordinal, dates), dtype=np.int64, count=len(dates))  # type: ignore[arg-type]
        ordinals -= _EPOCH_ORDINAL
    except TypeError:
        ordinals = np.fromiter(
            (nat if d is None else d.toordinal() - _EPOCH_ORDINAL for d in dates),
            dtype=np.int64,
            count=len(dates),
        )
    return ordinals.view("datetime64[D]")


def _listing_exempt(day: np.ndarray, number: np.ndarray, listed: dt.date | None) -> np.ndarray:
    """The first trading days after listing: known from ``listed`` (within a week of the
    history's start), else taken to be the first bars of the history. ``day`` [S]."""
    first = number <= NO_LIMIT_DAYS
    if listed is None or not len(day):
        return first
    starts_at_listing = day[0].astype(dt.date) - listed <= dt.timedelta(days=7) and number[0] == 1
    return first if starts_at_listing else np.zeros(len(day), dtype=bool)


def _texts(bars: pd.DataFrame, column: str) -> pd.Series | None:
    if column not in bars.columns:
        return None
    values = bars[column]
    return values if values.notna().any() else None


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


def _raw_json(row: pd.Series, texts: pd.Series | None, i: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, dt.date | pd.Timestamp):
            out[str(k)] = v.isoformat()
        elif isinstance(v, float | np.floating):
            # JSON has no NaN or infinity: keep them as the text the source would print.
            out[str(k)] = None if math.isnan(v) else (float(v) if math.isfinite(v) else str(v))
        elif isinstance(v, np.integer):
            out[str(k)] = int(v)
        elif v is None or (not isinstance(v, str) and pd.isna(v)):
            out[str(k)] = None
        else:
            out[str(k)] = v if isinstance(v, str | int | bool) else str(v)
    if texts is not None and isinstance(texts.iat[i], str):
        out["text"] = texts.iat[i]  # the row as the source wrote it
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
