"""The model's inputs per day: the return and what else a close and its date tell.

Each feature is a column of ``[n, F]`` aligned with a series' closes (:func:`feature_matrix`);
the set is ``ModelConfig.features`` and is saved with the model. Any parameter a feature needs
is fitted on the training span only, like the return's std (:func:`fit_feature_scaler`), and
stored in the series' scaler dict next to it:

``return``
    the clipped normalized log-return into the day (:func:`forecasting.model.scaling.inputs`).
``abs_return``
    its absolute value minus its training-span mean: the day's realized volatility, from which
    the tail heads read how wide tomorrow's band should be.
``gap``
    ``log`` of the calendar days since the previous bar minus its training-span mean: a
    weekend, a holiday, a suspension.
``limit_up`` / ``limit_down``
    1 when the close moved by the ticker's daily price limit (by board,
    :mod:`forecasting.data.price_limits`), else 0: after a limit-up close the next day has
    averaged +0.6 to +0.7 sigma on A-shares. ST stocks' 5% limit needs the security name, which
    the closes do not carry, so they are flagged at their board's limit only.

The price's high/low range and the volume change would be better volatility inputs than the
absolute return, but the pipeline hands the model closes only; they are left for when it
passes whole bars.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import get_args

import numpy as np

from forecasting.choices import Feature
from forecasting.data.price_limits import daily_limit
from forecasting.model import scaling

FEATURES: tuple[str, ...] = get_args(Feature)
ABS_MEAN = math.sqrt(2.0 / math.pi)  # E|z| of a standard normal: the default before fitting
GAP_MEAN = math.log(7.0 / 5.0)  # a five-day week's mean log calendar gap
LIMIT_SLACK = 0.002  # a close within 0.2% of the limit is at it (rounding to the fen, qfq)


def fit_feature_scaler(
    closes: np.ndarray,
    dates: np.ndarray,
    target: str,
    *,
    name: str = "series",
) -> dict[str, float]:
    """The scaler of one series fitted on its training span only (the caller slices
    ``closes`` and ``dates`` there): the return's std plus the features' means."""
    params = scaling.fit_scaler(closes, target, name=name)
    if target != "log_return" or len(closes) < 3:
        return params
    x = scaling.inputs(closes, params, target)[1:]  # [n-1]
    params["abs_mean"] = float(np.mean(np.abs(x)))
    params["gap_mean"] = float(np.mean(_log_gap(dates)[1:]))
    return params


def _log_gap(dates: np.ndarray) -> np.ndarray:
    """``log`` calendar days since the previous date, ``[n]`` (element 0: a one-day gap)."""
    d = np.asarray(dates, dtype="datetime64[D]").astype(np.int64)
    days = np.diff(d, prepend=d[:1] - 1) if len(d) else d
    out: np.ndarray = np.log(np.maximum(days, 1).astype(np.float64))
    return out


def _limit_flags(closes: np.ndarray, dates: np.ndarray, ticker: str) -> np.ndarray:
    """``[n, 2]`` (up, down) flags: the close moved by the ticker's daily limit."""
    flags = np.zeros((len(closes), 2))
    if len(closes) < 2:
        return flags
    move = closes[1:] / closes[:-1] - 1.0  # [n-1]
    d = np.asarray(dates, dtype="datetime64[D]")[1:]
    first, last = (dt.date.fromisoformat(str(d[i])) for i in (0, -1))
    lim_first, lim_last = daily_limit(ticker, first), daily_limit(ticker, last)
    if lim_first is None and lim_last is None:
        return flags
    if lim_first == lim_last:
        limit = np.full(len(move), float(lim_first or 0.0))
    else:  # a board whose limit changed within the span (ChiNext, 2020-08-24)
        limit = np.array([daily_limit(ticker, dt.date.fromisoformat(str(x))) or np.inf for x in d])
    flags[1:, 0] = move >= limit - LIMIT_SLACK
    flags[1:, 1] = move <= -limit + LIMIT_SLACK
    return flags


def feature_matrix(
    closes: np.ndarray,
    dates: np.ndarray,
    params: Mapping[str, float],
    target: str,
    features: Sequence[str],
    ticker: str,
) -> np.ndarray:
    """The model input at each date, ``[n] -> [n, F]`` float32, columns in ``features`` order.

    Uses only each day's close, the previous one and the scaler's training-span parameters,
    so a value after a day never changes that day's row."""
    p = dict(params)
    x = scaling.inputs(closes, p, target)  # [n]
    cols: list[np.ndarray] = []
    limits: np.ndarray | None = None
    for f in features:
        if f == "return":
            cols.append(x)
        elif f == "abs_return":
            cols.append(np.abs(x) - p.get("abs_mean", ABS_MEAN))
        elif f == "gap":
            cols.append(_log_gap(dates) - p.get("gap_mean", GAP_MEAN))
        elif f in ("limit_up", "limit_down"):
            if limits is None:
                limits = _limit_flags(np.asarray(closes, dtype=np.float64), dates, ticker)
            cols.append(limits[:, 0 if f == "limit_up" else 1])
        else:
            raise ValueError(f"unknown feature {f!r}; use any of {FEATURES}")
    out: np.ndarray = np.stack(cols, axis=1).astype(np.float32)  # [n, F]
    return out
