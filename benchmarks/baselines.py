"""Interval baselines for the accuracy benchmark, on the model's own origins.

Both forecast persistence (``yhat`` = the origin's close) with a central ``interval`` band of
the h-day log-return, built only from closes up to the origin:

- :func:`empirical_forecasts`: the ``(1 - interval) / 2`` and ``(1 + interval) / 2``
  quantiles of the past ``window`` (250) days' overlapping h-day log-returns;
- :func:`garch_forecasts`: GARCH(1,1) with Student-t errors and zero mean per series (the
  ``arch`` package, the ``bench`` extra), fitted once on the series' training span (through
  the model's cutoff) and then filtered forward with those parameters, so each origin's
  variance uses the returns up to it and nothing later. The h-day variance is the sum of the
  1..h-step variance forecasts; the band is that standard deviation times the standardized
  t quantile (for h > 1 an approximation: a sum of t errors is closer to normal).

Each returns ``(yhat, lower, upper)``, each ``[T, H]`` in prices, for the origins of
:func:`benchmarks.accuracy._origins` (every day after ``test_after`` but the last).
"""

from __future__ import annotations

import datetime as dt
import math
import warnings

import numpy as np
import pandas as pd

EMPIRICAL_WINDOW = 250
GARCH_SCALE = 100.0  # arch fits percent returns best
Forecasts = tuple[np.ndarray, np.ndarray, np.ndarray]


def _positions(s: pd.Series, after: dt.date) -> np.ndarray:
    dates = np.asarray(pd.to_datetime(pd.Index(s.index)).values, dtype="datetime64[D]")
    first = int(np.searchsorted(dates, np.datetime64(after, "D"), side="right"))
    return np.arange(first, len(s) - 1)


def empirical_forecasts(
    s: pd.Series,
    test_after: dt.date,
    horizon: int,
    interval: float,
    window: int = EMPIRICAL_WINDOW,
) -> Forecasts:
    """Persistence with empirical quantiles of the past ``window`` days' h-day log-returns."""
    c = s.to_numpy(dtype=np.float64)
    logc = np.log(c)
    t = _positions(s, test_after)  # [T]
    tail = (1.0 - interval) / 2.0
    yhat = np.repeat(c[t][:, None], horizon, axis=1)  # [T, H]
    lower, upper = np.full_like(yhat, np.nan), np.full_like(yhat, np.nan)
    for h in range(1, horizon + 1):
        ret = np.full(len(c), np.nan)
        ret[h:] = logc[h:] - logc[:-h]  # ret[e]: the h-day return ending at e
        for i, o in enumerate(t):
            past = ret[max(h, o - window + 1) : o + 1]  # returns that ended by the origin
            past = past[np.isfinite(past)]
            if len(past) < 20:
                continue
            q_lo, q_hi = np.quantile(past, [tail, 1.0 - tail])
            lower[i, h - 1], upper[i, h - 1] = c[o] * math.exp(q_lo), c[o] * math.exp(q_hi)
    return yhat, lower, upper


def garch_forecasts(
    s: pd.Series,
    through: dt.date,
    test_after: dt.date,
    horizon: int,
    interval: float,
) -> Forecasts:
    """Persistence with a GARCH(1,1)-t band, fitted on the closes through ``through``."""
    from arch import arch_model  # the benchmark extra; imported where it is needed
    from scipy import stats

    c = s.to_numpy(dtype=np.float64)
    r = np.diff(np.log(c)) * GARCH_SCALE  # [n-1]; r[k] ends at position k+1
    t = _positions(s, test_after)  # [T] origin positions
    dates = np.asarray(pd.to_datetime(pd.Index(s.index)).values, dtype="datetime64[D]")
    n_fit = int(np.searchsorted(dates, np.datetime64(through, "D"), side="right")) - 1
    model = arch_model(r, mean="Zero", vol="GARCH", p=1, q=1, dist="t", rescale=False)
    with warnings.catch_warnings():
        # arch warns when the optimizer's convergence is loose; the fit is still usable here.
        warnings.simplefilter("ignore")
        res = model.fit(disp="off", last_obs=n_fit)
    # Forecasts made at return index k (ending at position k+1) for origins t: k = t - 1.
    fc = res.forecast(horizon=horizon, start=int(t[0]) - 1, reindex=False)
    var = np.asarray(fc.variance)[: len(t)]  # [T, H] per-step variances
    cum_sd = np.sqrt(np.cumsum(var, axis=1)) / GARCH_SCALE  # [T, H] h-day log-return std
    nu = float(res.params["nu"])
    tail = (1.0 - interval) / 2.0
    z = float(stats.t.ppf(1.0 - tail, nu)) * math.sqrt((nu - 2.0) / nu)  # standardized t
    yhat = np.repeat(c[t][:, None], horizon, axis=1)  # [T, H]
    return yhat, yhat * np.exp(-z * cum_sd), yhat * np.exp(z * cum_sd)
