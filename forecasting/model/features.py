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

``range``
    ``log`` of the day's variance proxy in units of the training-span return variance, minus
    its training-span mean: the Parkinson estimate ``ln(high/low)^2 / (4 ln 2)`` (about five
    times as efficient a volatility measure as the squared return), scaled by the series'
    training-span ratio of squared return to it (so it counts the overnight move too), and at
    least a third of the squared close-to-close return (a bar locked at its limit has no range
    but did move). Days without a high and low use the squared return alone. 0 for the
    ``minmax`` target, which has no return variance.
    :mod:`forecasting.model.volatility` reads its recent averages for the band's width.
``volume``
    the log volume change into the day, clipped to +-3, standardized on the training span
    (0 where a source gave no volume).
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
PARKINSON = 1.0 / (4.0 * math.log(2.0))  # E[ln(high/low)^2] = 4 ln 2 * variance (Parkinson)
RANGE_FLOOR = 1e-3  # variance proxy floor (training variance units): a flat day is not log 0
RANGE_MEAN = math.log(0.3)  # about E[log proxy] before fitting
RETURN_SHARE = 1.0 / 3.0  # a day's proxy is at least this share of its squared return
VOLUME_CLIP = 3.0  # |log volume change| beyond this is a listing, a suspension or an error


def fit_feature_scaler(
    closes: np.ndarray,
    dates: np.ndarray,
    target: str,
    *,
    name: str = "series",
    high: np.ndarray | None = None,
    low: np.ndarray | None = None,
    vol: np.ndarray | None = None,
) -> dict[str, float]:
    """The scaler of one series fitted on its training span only (the caller slices
    ``closes``, ``dates`` and the optional ``high``, ``low``, ``vol`` there): the return's std
    plus the features' means."""
    params = scaling.fit_scaler(closes, target, name=name)
    if target != "log_return" or len(closes) < 3:
        return params
    x = scaling.inputs(closes, params, target)[1:]  # [n-1]
    params["abs_mean"] = float(np.mean(np.abs(x)))
    params["gap_mean"] = float(np.mean(_log_gap(dates)[1:]))
    r2 = np.square(np.diff(np.log(np.asarray(closes, dtype=np.float64))))  # [n-1]
    park = _parkinson(closes, high, low)[1:]  # [n-1]
    ok = np.isfinite(park)
    if ok.sum() >= 20 and park[ok].mean() > 0:
        params["range_ratio"] = float(r2[ok].mean() / park[ok].mean())
    params["range_mean"] = float(np.mean(_log_variance(closes, high, low, params)[1:]))
    lv = _log_volume_change(vol, len(closes))[1:]  # [n-1]
    if np.isfinite(lv).sum() >= 20:
        params["volume_mean"] = float(np.nanmean(lv))
        params["volume_std"] = max(float(np.nanstd(lv)), 1e-3)
    return params


def _parkinson(closes: np.ndarray, high: np.ndarray | None, low: np.ndarray | None) -> np.ndarray:
    """``[n]`` Parkinson variance ``ln(high/low)^2 / (4 ln 2)``, NaN where no valid range."""
    n = len(closes)
    if high is None or low is None:
        return np.full(n, np.nan)
    hi, lo = np.asarray(high, dtype=np.float64), np.asarray(low, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        hl = np.log(hi / lo)
    ok = np.isfinite(hl) & (hl >= 0) & (lo > 0)
    return np.where(ok, np.square(np.where(ok, hl, 0.0)) * PARKINSON, np.nan)


def _log_variance(
    closes: np.ndarray,
    high: np.ndarray | None,
    low: np.ndarray | None,
    params: Mapping[str, float],
) -> np.ndarray:
    """``[n]`` log of the day's variance proxy in units of the training-span return variance
    (see the module docstring), before centring. Element 0 (no previous close) is the floor."""
    c = np.asarray(closes, dtype=np.float64)
    var = params["std"] ** 2
    r2 = np.r_[0.0, np.square(np.diff(np.log(c)))] / var if len(c) else np.empty(0)  # [n]
    park = _parkinson(c, high, low) * params.get("range_ratio", 1.0) / var  # [n]
    proxy = np.where(np.isfinite(park), np.maximum(park, RETURN_SHARE * r2), r2)
    out: np.ndarray = np.log(np.maximum(proxy, RANGE_FLOOR))
    return out


def _log_volume_change(vol: np.ndarray | None, n: int) -> np.ndarray:
    """``[n]`` clipped ``log(vol_t / vol_{t-1})``, NaN where either volume is missing."""
    if vol is None:
        return np.full(n, np.nan)
    v = np.asarray(vol, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lv = np.r_[np.nan, np.log(v[1:] / v[:-1])] if n else np.empty(0)
    out: np.ndarray = np.where(np.isfinite(lv), np.clip(lv, -VOLUME_CLIP, VOLUME_CLIP), np.nan)
    return out


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
    *,
    high: np.ndarray | None = None,
    low: np.ndarray | None = None,
    vol: np.ndarray | None = None,
) -> np.ndarray:
    """The model input at each date, ``[n] -> [n, F]`` float32, columns in ``features`` order.

    Uses only each day's bar, the previous one and the scaler's training-span parameters,
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
        elif f == "range":
            if "std" not in p:  # the minmax target has no return variance to scale by
                cols.append(np.zeros(len(x)))
                continue
            lv = _log_variance(closes, high, low, p)
            cols.append(lv - p.get("range_mean", RANGE_MEAN))
        elif f == "volume":
            z = (_log_volume_change(vol, len(closes)) - p.get("volume_mean", 0.0)) / p.get(
                "volume_std", 1.0
            )
            cols.append(np.where(np.isfinite(z), z, 0.0))
        elif f in ("limit_up", "limit_down"):
            if limits is None:
                limits = _limit_flags(np.asarray(closes, dtype=np.float64), dates, ticker)
            cols.append(limits[:, 0 if f == "limit_up" else 1])
        else:
            raise ValueError(f"unknown feature {f!r}; use any of {FEATURES}")
    out: np.ndarray = np.stack(cols, axis=1).astype(np.float32)  # [n, F]
    return out
