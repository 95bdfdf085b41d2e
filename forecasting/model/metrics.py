"""The numbers every check, report, benchmark and decision compares.

- :func:`ratio_to_naive`: a model's RMSE as a ratio to persistence's (the naive "tomorrow =
  today" forecast);
- :func:`interval_score`: the Winkler (interval) score of a central ``1 - alpha`` band, a proper
  score: the band's width plus ``2 / alpha`` times how far the outcome falls outside it, so a
  band is rewarded for being narrow only while it still covers;
- :func:`pinball`: the quantile (pinball) loss of a forecast quantile, proper for that quantile.
"""

from __future__ import annotations

import math

import numpy as np


def ratio_to_naive(rmse: float | None, naive_rmse: float | None) -> float:
    """``rmse / naive_rmse``: below 1 beats persistence. NaN when either is missing or NaN, or
    persistence's RMSE is not positive (nothing to compare against)."""
    if rmse is None or naive_rmse is None or math.isnan(rmse) or not naive_rmse > 0:
        return math.nan
    return rmse / naive_rmse


def interval_score(
    lower: np.ndarray, upper: np.ndarray, actual: np.ndarray, alpha: float
) -> np.ndarray:
    """Winkler score of the band ``[lower, upper]`` with nominal coverage ``1 - alpha``,
    elementwise (lower is better): ``(u - l) + 2/alpha * ((l - y)^+ + (y - u)^+)``."""
    lo, hi, y = (np.asarray(a, dtype=np.float64) for a in (lower, upper, actual))
    below = np.maximum(lo - y, 0.0)
    above = np.maximum(y - hi, 0.0)
    score: np.ndarray = (hi - lo) + (2.0 / alpha) * (below + above)
    return score


def pinball(pred: np.ndarray, actual: np.ndarray, tau: float) -> np.ndarray:
    """Pinball loss of ``pred`` as the ``tau`` quantile of ``actual``, elementwise."""
    diff = np.asarray(actual, dtype=np.float64) - np.asarray(pred, dtype=np.float64)
    loss: np.ndarray = np.maximum(tau * diff, (tau - 1.0) * diff)
    return loss
