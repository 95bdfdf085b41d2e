"""Per-series scalers, fitted on a training span only and stored with the model.

Like qlib's processors, a scaler is fitted on ``fit_start..fit_end`` and then frozen.
``fit_end`` must never reach into the validation or test period: a scaler that has seen the
validation span leaks its volatility (or its price range, for ``minmax``) into the model
selection, and one that has seen the test span leaks the future into every forecast.
Callers pass exactly the training span; :func:`fit_scaler` never looks past it.

Two target representations exist (``ModelConfig.target``):

``log_return`` (default)
    The series is turned into daily log-returns divided by their training-span standard
    deviation (``std``) and clipped at ``clip`` standard deviations for the *inputs*. The
    "level" of a series is ``log(close) / std``, so the target at horizon ``h`` —
    ``level[t+h] - level[t]`` — is the cumulative normalized log-return, and persistence
    (tomorrow's close = today's) predicts exactly zero.
``minmax`` (tutorial-style, for comparison only)
    The close itself scaled to ``[0, 1]`` on the training span; the target is the scaled price
    level at ``t+h``. Persistence predicts ``level[t]``.

Scaler parameters are plain ``dict[str, float]`` so they go to JSON unchanged.
"""

from __future__ import annotations

import numpy as np

TARGETS = ("log_return", "minmax")
DEFAULT_CLIP = 5.0  # inputs beyond 5 sigma are almost always data errors or limit moves
MIN_STD = 1e-6  # a flat training span (suspended all along) must not divide by zero


class ScalingError(ValueError):
    """A scaler cannot be fitted or applied; the message names the series and the fix."""


def fit_scaler(
    closes: np.ndarray, target: str, *, name: str = "series", clip: float = DEFAULT_CLIP
) -> dict[str, float]:
    """Fit the scaler of one series on ``closes``, which must be the training span only.

    ``closes`` are positive prices in date order. ``fit_end`` (the last element) must not reach
    into the validation/test period; this function cannot check that, so the caller slices.
    """
    c = np.asarray(closes, dtype=np.float64)
    if c.ndim != 1 or len(c) < 2:
        raise ScalingError(f"{name}: need at least 2 closes to fit a scaler, got {len(c)}")
    if not np.all(np.isfinite(c)) or np.any(c <= 0):
        raise ScalingError(
            f"{name}: closes must be finite and positive to fit a scaler; clean the prices first"
        )
    if target == "log_return":
        r = np.diff(np.log(c))  # [n-1]
        std = float(np.std(r))
        return {"std": max(std, MIN_STD), "clip": float(clip), "n_fit": float(len(c))}
    if target == "minmax":
        lo, hi = float(c.min()), float(c.max())
        return {"min": lo, "max": max(hi, lo + MIN_STD), "n_fit": float(len(c))}
    raise ScalingError(f"unknown target {target!r}; use one of {TARGETS}")


def levels(closes: np.ndarray, params: dict[str, float], target: str) -> np.ndarray:
    """The scaled level of each close: ``log(c)/std`` or ``(c-min)/(max-min)``. ``[n] -> [n]``."""
    c = np.asarray(closes, dtype=np.float64)
    if target == "log_return":
        return np.log(c) / params["std"]
    if target == "minmax":
        return (c - params["min"]) / (params["max"] - params["min"])
    raise ScalingError(f"unknown target {target!r}; use one of {TARGETS}")


def inputs(closes: np.ndarray, params: dict[str, float], target: str) -> np.ndarray:
    """The model input at each date, aligned with ``closes``. ``[n] -> [n]``.

    ``log_return``: the clipped normalized log-return into that date (element 0 has no
    previous close and is 0; windows never start there). ``minmax``: the scaled price level.
    """
    lv = levels(closes, params, target)
    if target == "minmax":
        return lv
    out = np.zeros_like(lv)
    clip = params.get("clip", DEFAULT_CLIP)
    out[1:] = np.clip(np.diff(lv), -clip, clip)  # [n-1] normalized log-returns
    return out


def to_price(
    values: np.ndarray, base_close: float, params: dict[str, float], target: str
) -> np.ndarray:
    """Turn model outputs back into prices.

    ``log_return``: ``values`` are cumulative normalized log-returns from ``base_close``, so the
    price path is ``base_close * exp(values * std)``. ``minmax``: ``values`` are scaled levels.
    """
    v = np.asarray(values, dtype=np.float64)
    if target == "log_return":
        return float(base_close) * np.exp(v * params["std"])
    if target == "minmax":
        return v * (params["max"] - params["min"]) + params["min"]
    raise ScalingError(f"unknown target {target!r}; use one of {TARGETS}")
