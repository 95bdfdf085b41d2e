"""Calibration on the validation windows: the point forecast's shrink and the interval.

The point forecast keeps only the part of the network's predicted change that validation
supports: its average drift is removed, and the rest is shrunk toward persistence by the lower
confidence bound of the MSE-optimal factor (:func:`shrink_factors`), so it is never worse than
persistence on validation and is exactly persistence when validation shows no reliable skill.
The interval is split-conformal, its width scaled by each window's recent volatility
(:func:`recent_scale`).

Units: "normalized" errors are in target units — cumulative log-returns divided by the
series' training-span daily std for ``log_return``, min-max scaled prices for ``minmax``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from forecasting.model.lstm import ModelConfig

SCALE_DAYS = 20  # recent-volatility window that scales the interval
SHRINK_Z = 2.0  # shrink to the lower ~97.5% confidence bound of the MSE-optimal factor


def rmse(err: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(err)))) if err.size else math.nan


def _conformal_level(n: int, coverage: float) -> float:
    """Finite-sample conformal quantile level ``ceil((n+1) * coverage) / n``, capped at 1."""
    return min(1.0, math.ceil((n + 1) * coverage) / max(n, 1))


def shrink_factors(
    d: np.ndarray, e: np.ndarray, groups: np.ndarray | None = None, z: float = SHRINK_Z
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-horizon factor ``a`` in ``[0, 1]`` for ``point = naive + a * d``.

    ``d [N, H]`` is the predicted change from persistence, ``e [N, H]`` the actual one. The
    least-squares ``a_ls = <d, e> / <d, d>`` minimizes validation MSE, but validation is short
    and its windows are far from independent: every series moves with the market on the same
    day, and the h-day targets of consecutive origins overlap. So ``a_ls`` is noisy, and a
    model that merely caught the validation period's trend gets a large factor and then loses
    to persistence out of sample. We therefore use the lower confidence bound
    ``a = clip(a_ls - z * se, 0, 1)``, with ``se`` from the per-date sums (``groups``: one
    label per window, its origin date) and a Bartlett (Newey-West) correction for ``h`` days of
    overlap. No evidence of skill -> ``a = 0`` -> exactly persistence.
    Returns ``(a, a_ls, se)``, each ``[H]``.
    """
    n, horizon = d.shape
    if n == 0:
        zeros = np.zeros(horizon)
        return zeros, zeros, zeros
    if groups is None:
        groups = np.arange(n)
    _, g = np.unique(groups, return_inverse=True)  # [N] group number, in date order
    n_groups = int(g.max()) + 1
    num = np.zeros((n_groups, horizon))
    den = np.zeros((n_groups, horizon))
    np.add.at(num, g, d * e)  # [G, H] per-date sums
    np.add.at(den, g, d * d)
    total_den = np.maximum(den.sum(0), 1e-12)  # [H]
    a_ls = num.sum(0) / total_den  # [H]
    u = num - a_ls * den  # [G, H] per-date score of the LS equation
    var = (u * u).sum(0)  # [H]
    for h in range(horizon):
        for lag in range(1, min(h + 1, n_groups - 1) + 1):  # h-day targets overlap h-1 days
            w = 1.0 - lag / (h + 2)
            var[h] += 2.0 * w * (u[lag:, h] * u[:-lag, h]).sum()
    se = np.sqrt(np.maximum(var, 0.0)) / total_den  # [H]
    return np.clip(a_ls - z * se, 0.0, 1.0), a_ls, se


def recent_scale(x: np.ndarray, target: str, days: int = SCALE_DAYS) -> np.ndarray:
    """Recent volatility of each input window, in target units per day. ``[N, L] -> [N]``.

    Root mean square of the last ``days`` normalized returns (for ``minmax``, of the daily
    changes of the scaled level). Interval widths are proportional to it, so they widen as soon
    as the market gets rougher than it was on validation.
    """
    x = np.asarray(x, dtype=np.float64)
    steps = x[:, -days:] if target == "log_return" else np.diff(x[:, -(days + 1) :], axis=1)
    rms: np.ndarray = np.sqrt(np.mean(np.square(steps), axis=1) + 1e-8)  # [N]
    return rms


def calibrate(
    out: np.ndarray,
    y: np.ndarray,
    naive: np.ndarray,
    config: ModelConfig,
    groups: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    train: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Fit the point forecast's drift and shrink and the interval, per horizon, on validation.

    ``out [N, H, Q]`` raw network outputs, ``y [N, H]`` actual targets, ``naive [N, H]``,
    ``groups [N]`` each window's origin date, ``scale [N]`` its :func:`recent_scale`.

    Point: ``naive + a_h * (median - naive - drift_h)``. ``drift_h`` is the mean predicted change
    on validation: the network's average view of the market's direction, learnt from the
    training years. On real data it is what fails out of sample (A-shares through 2017-10:
    validation favoured it with a least-squares factor of 1, the next 250 days wanted -1.5 to
    -2), so it is removed, and only the window-to-window variation is kept, shrunk by
    :func:`shrink_factors`. Interval: split-conformal quantiles of validation residuals divided
    by the recent volatility of each window, times that of the window being forecast. When
    ``train = (out, y, naive, scale)`` of (a sample of) training windows is given, each bound is
    the wider of the validation and the training quantile: sixty validation days are one
    regime, and a calm one makes a band that the next turbulent quarter breaks (CSI indices,
    validation late 2021, tested on 2022: 0.69 coverage from validation alone, 0.81 with the
    wider bound; A-shares 2017/18: 0.76 -> 0.80). Training residuals are in-sample and can only
    be too narrow, so taking the wider bound never trusts them more than validation.
    """
    cfg = config
    n = len(y)
    if scale is None:
        scale = np.ones(n)
    out = np.sort(out, axis=-1)  # [N, H, Q]; quantile heads may cross
    m = out[..., cfg.median_index]  # [N, H]
    change = m - naive  # [N, H] predicted change from persistence
    drift = change.mean(axis=0) if n else np.zeros(cfg.horizon)  # [H]
    shrink, a_ls, se = shrink_factors(change - drift, y - naive, groups)
    if not cfg.shrink:
        drift, shrink = np.zeros(cfg.horizon), np.ones(cfg.horizon)
    point = naive + shrink * (change - drift)  # [N, H]
    r = (y - point) / scale[:, None]  # [N, H] residuals in units of recent volatility
    hi_level = _conformal_level(n, (1.0 + cfg.interval) / 2.0)
    q_lo = np.quantile(r, 1.0 - hi_level, axis=0) if n else np.zeros(cfg.horizon)  # [H]
    q_hi = np.quantile(r, hi_level, axis=0) if n else np.zeros(cfg.horizon)  # [H]
    if train is not None and len(train[1]):
        t_out, t_y, t_naive, t_scale = train
        t_m = np.sort(t_out, axis=-1)[..., cfg.median_index]  # [Nt, H]
        t_r = (t_y - (t_naive + shrink * (t_m - t_naive - drift))) / t_scale[:, None]  # [Nt, H]
        a = (1.0 - cfg.interval) / 2.0
        q_lo = np.minimum(q_lo, np.quantile(t_r, a, axis=0))
        q_hi = np.maximum(q_hi, np.quantile(t_r, 1.0 - a, axis=0))
    calib: dict[str, Any] = {
        "method": "scaled_residual",
        "interval": cfg.interval,
        "scale_days": SCALE_DAYS,
        "drift": drift.tolist(),
        "shrink": shrink.tolist(),
        "shrink_ls": a_ls.tolist(),
        "shrink_se": se.tolist(),
        "q_lo": q_lo.tolist(),
        "q_hi": q_hi.tolist(),
        "n_val": int(n),
        "val_rmse_raw": rmse(m - y),
    }
    _, lower, upper = apply_calibration(out, naive, calib, cfg, scale)
    calib["val_coverage"] = float(np.mean((y >= lower) & (y <= upper))) if n else math.nan
    return calib


def apply_calibration(
    out: np.ndarray,
    naive: np.ndarray,
    calib: Mapping[str, Any],
    config: ModelConfig,
    scale: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point, lower and upper in target units from raw outputs. ``[N, H, Q] -> 3 x [N, H]``.

    ``scale [N]`` is each window's :func:`recent_scale`. Guarantees ``lower <= point <= upper``.
    """
    out = np.sort(out, axis=-1)  # [N, H, Q]
    m = out[..., config.median_index]  # [N, H]
    drift = np.asarray(calib["drift"], dtype=np.float64)  # [H]
    shrink = np.asarray(calib["shrink"], dtype=np.float64)  # [H]
    point = naive + shrink * (m - naive - drift)  # [N, H]
    sc = (np.ones(len(m)) if scale is None else np.asarray(scale, dtype=np.float64))[:, None]
    lower = point + np.asarray(calib["q_lo"], dtype=np.float64) * sc  # [N, H]
    upper = point + np.asarray(calib["q_hi"], dtype=np.float64) * sc
    return point, np.minimum(lower, point), np.maximum(upper, point)
