"""The one definition of the number every check, report and decision compares: a model's RMSE as
a ratio to persistence's (the naive "tomorrow = today" forecast)."""

from __future__ import annotations

import math


def ratio_to_naive(rmse: float | None, naive_rmse: float | None) -> float:
    """``rmse / naive_rmse``: below 1 beats persistence. NaN when either is missing or NaN, or
    persistence's RMSE is not positive (nothing to compare against)."""
    if rmse is None or naive_rmse is None or math.isnan(rmse) or not naive_rmse > 0:
        return math.nan
    return rmse / naive_rmse
