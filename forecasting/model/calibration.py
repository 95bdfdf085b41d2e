"""Calibration on the validation windows: the point forecast's shrink and the interval.

The point forecast keeps only the part of the network's predicted change that validation
supports: its average drift is removed, and the rest is scaled by the MSE-optimal factor,
discounted by how well validation measured it (:func:`shrink_factors`): exactly persistence
when validation shows no reliable skill, up to twice the network's change when it shows the
network is timid. The interval is conformalized quantile regression on the network's tail
heads (:func:`calibrate`), widened when the target lies beyond a gap (:func:`gap_widening`).

Units: "normalized" errors are in target units — cumulative log-returns divided by the
series' training-span daily std for ``log_return``, min-max scaled prices for ``minmax``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from forecasting.data.price_limits import board_of
from forecasting.model.lstm import ModelConfig
from forecasting.model.metrics import interval_score

SCALE_DAYS = 20  # recent-volatility window that scales the interval
SHRINK_Z = 2.0  # no skill unless the least-squares factor is this many standard errors above 0
SHRINK_MAX = 2.0  # validation may scale a timid forecast up, but not beyond twice its size
SPREAD_FLOOR = 0.1  # a head's spread is at least this share of its median spread on validation
VAL_TAIL_WINDOWS = 100  # independent validation outcomes a fully trusted tail factor needs
VOL_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the heads' share in the band's log spread, tried


def rmse(err: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(err)))) if err.size else math.nan


def _conformal_level(n: int, coverage: float) -> float:
    """Finite-sample conformal quantile level ``ceil((n+1) * coverage) / n``, capped at 1."""
    return min(1.0, math.ceil((n + 1) * coverage) / max(n, 1))


def shrink_factors(
    d: np.ndarray, e: np.ndarray, groups: np.ndarray | None = None, z: float = SHRINK_Z
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-horizon factor ``a`` in ``[0, SHRINK_MAX]`` for ``point = naive + a * d``.

    ``d [N, H]`` is the predicted change from persistence, ``e [N, H]`` the actual one. The
    least-squares ``a_ls = <d, e> / <d, d>`` minimizes validation MSE, but validation is short
    and its windows are far from independent: every series moves with the market on the same
    day, and the h-day targets of consecutive origins overlap. So ``a_ls`` is noisy, and a
    model that merely caught the validation period's trend gets a large factor and then loses
    to persistence out of sample. ``se`` comes from the per-date sums (``groups``: one label per
    window, its origin date) with a Bartlett (Newey-West) correction for ``h`` days of overlap,
    and the factor is shrunk by its own signal-to-noise ratio ``t = a_ls / se``:
    ``a = a_ls * (1 - (z / t)^2)`` when ``t > z``, else 0. No evidence of skill (``t <= z``) ->
    ``a = 0`` -> exactly persistence; a well-measured signal (``t = 10``) keeps 96% of its
    factor, where the lower bound ``a_ls - z * se`` kept 80% (and 33% at ``t = 3``, against 56%).
    ``a`` may exceed 1 where validation says the network is too timid, up to ``SHRINK_MAX``.
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
    t = a_ls / np.maximum(se, 1e-300)  # [H] signal-to-noise of the factor
    keep = np.where(t > z, 1.0 - (z / np.maximum(t, z)) ** 2, 0.0)  # [H] in [0, 1)
    return np.clip(a_ls * keep, 0.0, SHRINK_MAX), a_ls, se


def series_gates(
    d: np.ndarray,
    e: np.ndarray,
    shrink: np.ndarray,
    series: np.ndarray,
    classes: Sequence[str] | None = None,
) -> np.ndarray:
    """``[S, H]`` 1 where the shrunk signal ``shrink * d`` lowered the validation squared
    error of series ``s``'s class at horizon ``h``, else 0. ``series [N]``: each window's
    series number; ``classes [S]``: each series' class (its board, so indices are one class
    and main-board stocks another), all one class when ``None``.

    The shrink is one factor per horizon for every series, fitted where the signal was on
    average. A class of series whose own validation windows it did not help is forecast by
    persistence: a signal that held for the stocks is not pressed on the indices when their
    validation days disagreed (a global model trained on both learns mostly the stocks'). The
    test is per class, not per series: sixty validation days of one series cannot tell a real
    signal from noise (a true AR(1) signal with phi 0.15 shows a validation loss on a quarter
    of its series), a class of many series can."""
    n_series = int(series.max()) + 1 if len(series) else 0
    labels = list(classes) if classes is not None else [""] * n_series
    _, cls = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    gain = np.square(e) - np.square(e - shrink * d)  # [N, H]
    total = np.zeros((int(cls.max()) + 1 if n_series else 0, d.shape[1]))
    np.add.at(total, cls[series], gain)  # [C, H] validation gain per class
    gates: np.ndarray = (total[cls] > 0).astype(np.float64)  # [S, H]
    return gates


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
    vol: tuple[np.ndarray, np.ndarray | None] | None = None,
    series: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Fit the point forecast's drift and shrink and the interval, per horizon, on validation.

    ``out [N, H, Q]`` raw network outputs, ``y [N, H]`` actual targets, ``naive [N, H]``,
    ``groups [N]`` each window's origin date, ``scale [N]`` its :func:`recent_scale`.

    Point: ``naive + a_h * (median - naive - drift_h)``. ``drift_h`` is the mean predicted change
    on validation: the network's average view of the market's direction, learnt from the
    training years. On real data it is what fails out of sample (A-shares through 2017-10:
    validation favoured it with a least-squares factor of 1, the next 250 days wanted -1.5 to
    -2), so it is removed, and only the window-to-window variation is kept, scaled by
    :func:`shrink_factors`. With ``series [N]`` (each window's series number) and ``classes
    [S]`` (each series' board) the signal is also gated per class of series
    (:func:`series_gates`, stored as ``gate {class: [H]}``, read by :func:`gate_rows`).

    Interval (``method = "cqr"``, the quantile loss): conformalized quantile regression. The
    network's tail heads give each window its own spread below and above the median (they
    see the window's recent returns, so the band follows volatility); the band is the point
    forecast minus ``f_lo`` times the lower spread and plus ``f_hi`` times the upper one, the
    factor the finite-sample conformal quantile of the validation errors in units of the
    spread on their side, both tails together (:func:`_cqr_factors`). The band is centred on
    the point forecast, so the validation drift that the point drops is dropped from the band
    too. When ``train = (out, y, naive,
    scale)`` of (a sample of) training windows is given, each factor is the larger of the
    validation and the training one: sixty validation days are one regime, and a calm one
    makes a band that the next turbulent quarter breaks; training errors are in-sample and
    can only be too small, so the larger factor never trusts them more than validation. Where
    validation has too few windows to measure a 10% tail at a horizon (a few tickers at
    ``h = 10``), its factor moves the training one only part of the way
    (:func:`_validation_trust`).
    ``vol = (sigma, train_sigma)``: a volatility forecast per window and horizon
    (:func:`forecasting.model.volatility.har_sigma`) for the validation and the training
    windows. Each side's spread is then ``heads^w * sigma^(1 - w)``, a geometric blend whose
    weight ``w`` per horizon (one of :data:`VOL_WEIGHTS`) is the one whose conformalized band
    has the lowest interval score on validation: the heads keep the band where they read
    volatility better than the range's averages do, and hand it to them where not.
    The MSE loss has no tail heads: its band is split-conformal residual quantiles in units
    of the recent volatility (``method = "scaled_residual"``, also what older models stored).
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
    gate = None
    if series is not None and classes is not None and cfg.shrink:
        gates = series_gates(change - drift, y - naive, shrink, series, classes)  # [S, H]
        gate = gates[series]  # [N, H]
    calib: dict[str, Any] = {
        "interval": cfg.interval,
        "drift": drift.tolist(),
        "shrink": shrink.tolist(),
        "shrink_ls": a_ls.tolist(),
        "shrink_se": se.tolist(),
        "n_val": int(n),
        "val_rmse_raw": rmse(m - y),
    }
    if gate is not None and classes is not None:
        calib["gate"] = {c: gates[i].tolist() for i, c in enumerate(classes)}
    tail = (1.0 - cfg.interval) / 2.0
    level = _conformal_level(n, 1.0 - tail)
    if len(cfg.quantiles) > 1:
        floor = np.maximum(np.median(_spreads(out, cfg, None)[0], axis=0), 1e-6) * SPREAD_FLOOR
        calib.update(method="cqr", spread_floor=floor.tolist())
        sigma, t_sigma = vol if vol is not None else (None, None)
        has_train = train is not None and len(train[1]) > 0
        if sigma is not None and has_train and t_sigma is None:
            raise ValueError("calibrate: vol has no training sigma for the training windows")
        weights = VOL_WEIGHTS if sigma is not None else (1.0,)
        tried: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (score, f_lo, f_hi)
        for w in weights:
            calib["vol_weight"] = [w] * cfg.horizon
            f_lo, f_hi = _cqr_factors(out, y, naive, calib, cfg, level, sigma, gate)
            if train is not None and has_train:
                t_lo, t_hi = _cqr_factors(
                    train[0], train[1], train[2], calib, cfg, 1.0 - tail, t_sigma
                )
                trust = _validation_trust(n, cfg.horizon)  # [H]
                f_lo = np.maximum(t_lo, t_lo + trust * (f_lo - t_lo))
                f_hi = np.maximum(t_hi, t_hi + trust * (f_hi - t_hi))
            calib.update(f_lo=f_lo.tolist(), f_hi=f_hi.tolist())
            _, lower, upper = apply_calibration(out, naive, calib, cfg, scale, vol=sigma, gate=gate)
            score = interval_score(lower, upper, y, 1.0 - cfg.interval)  # [N, H]
            tried.append((score.mean(axis=0) if n else np.zeros(cfg.horizon), f_lo, f_hi))
        pick = np.argmin(np.stack([t[0] for t in tried]), axis=0)  # [H] best weight per horizon
        hs = np.arange(cfg.horizon)
        f_lo = np.stack([t[1] for t in tried])[pick, hs]  # [H]
        f_hi = np.stack([t[2] for t in tried])[pick, hs]
        calib.update(
            vol_weight=np.asarray(weights)[pick].tolist(), f_lo=f_lo.tolist(), f_hi=f_hi.tolist()
        )
    else:
        point = _point(out, naive, calib, cfg, gate)  # [N, H]
        r = (y - point) / scale[:, None]  # [N, H] residuals in units of recent volatility
        q_lo = np.quantile(r, 1.0 - level, axis=0) if n else np.zeros(cfg.horizon)  # [H]
        q_hi = np.quantile(r, level, axis=0) if n else np.zeros(cfg.horizon)  # [H]
        if train is not None and len(train[1]):
            t_out, t_y, t_naive, t_scale = train
            t_m = np.sort(t_out, axis=-1)[..., cfg.median_index]  # [Nt, H]
            t_point = t_naive + shrink * (t_m - t_naive - drift)
            t_r = (t_y - t_point) / t_scale[:, None]  # [Nt, H]
            q_lo = np.minimum(q_lo, np.quantile(t_r, tail, axis=0))
            q_hi = np.maximum(q_hi, np.quantile(t_r, 1.0 - tail, axis=0))
        calib.update(
            method="scaled_residual", scale_days=SCALE_DAYS, q_lo=q_lo.tolist(), q_hi=q_hi.tolist()
        )
    _, lower, upper = apply_calibration(
        out, naive, calib, cfg, scale, vol=None if vol is None else vol[0], gate=gate
    )
    calib["val_coverage"] = float(np.mean((y >= lower) & (y <= upper))) if n else math.nan
    return calib


def _validation_trust(n: int, horizon: int) -> np.ndarray:
    """``[H]`` how far the validation windows' tail factor may move the band off the
    training windows' one, in ``[0, 1]``: ``n / h`` windows of an ``h``-day target are about
    ``n / h`` independent outcomes, and a 10% tail needs about :data:`VAL_TAIL_WINDOWS` of
    them (ten beyond it) before its quantile means anything. A few tickers' 50 validation
    days are far fewer at ``h = 10``, and a factor from them swung the band by 30%."""
    h = np.arange(1, horizon + 1, dtype=np.float64)
    trust: np.ndarray = np.minimum(1.0, n / h / VAL_TAIL_WINDOWS)
    return trust


def _spreads(
    out: np.ndarray,
    config: ModelConfig,
    calib: Mapping[str, Any] | None,
    vol: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The band's spread below and above the median, ``[N, H, Q] -> 2 x [N, H]``: the tail
    heads' distance from the median, each at least the calibration's floor (a collapsed head
    must not make a zero-width band), blended with ``vol [N, H]`` by the calibration's
    ``vol_weight`` (see :func:`calibrate`)."""
    out = np.sort(out, axis=-1)
    m = out[..., config.median_index]
    lo, hi = m - out[..., 0], out[..., -1] - m  # [N, H]
    if calib is not None:
        floor = np.asarray(calib["spread_floor"], dtype=np.float64)  # [H]
        lo, hi = np.maximum(lo, floor), np.maximum(hi, floor)
        if vol is not None and "vol_weight" in calib:
            w = np.asarray(calib["vol_weight"], dtype=np.float64)  # [H]
            lo, hi = lo**w * vol ** (1.0 - w), hi**w * vol ** (1.0 - w)
    return lo, hi


def _cqr_factors(
    out: np.ndarray,
    y: np.ndarray,
    naive: np.ndarray,
    calib: Mapping[str, Any],
    config: ModelConfig,
    level: float,
    vol: np.ndarray | None = None,
    gate: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-horizon factors ``f_lo, f_hi`` ``[H]``, one factor for both sides: each error in
    units of the band's spread on its own side of the point forecast, and their ``2 * level -
    1`` quantile (``level`` is one tail's: ``0.9`` for an 80% band), so that the two tails
    together hold ``2 * (1 - level)`` of the windows.

    Not one quantile per side: the sides' errors carry the calibration windows' drift (the
    A-share training years rose, their upper factor at ``h = 10`` came out 10% above the
    lower one), which the point forecast drops as noise and the band must drop too. Per side,
    the 2018 test year's band was skewed up into a falling market: interval score 1.023x
    GARCH(1,1)-t at ``h = 10``, against 1.005x with the shared factor."""
    point = _point(out, naive, calib, config, gate)  # [N, H]
    lo, hi = _spreads(out, config, calib, vol)
    if not len(y):
        return np.ones(config.horizon), np.ones(config.horizon)
    err = np.where(y < point, (point - y) / lo, (y - point) / hi)  # [N, H] in own side's units
    f: np.ndarray = np.quantile(err, min(max(2.0 * level - 1.0, 0.0), 1.0), axis=0)  # [H]
    return f, f.copy()


def _point(
    out: np.ndarray,
    naive: np.ndarray,
    calib: Mapping[str, Any],
    config: ModelConfig,
    gate: np.ndarray | None = None,
) -> np.ndarray:
    """``naive + gate * shrink * (median - naive - drift)``. ``[N, H, Q] -> [N, H]``"""
    m = np.sort(out, axis=-1)[..., config.median_index]  # [N, H]
    drift = np.asarray(calib["drift"], dtype=np.float64)  # [H]
    shrink = np.asarray(calib["shrink"], dtype=np.float64)  # [H]
    if gate is not None:
        shrink = shrink * gate  # [N, H]
    point: np.ndarray = naive + shrink * (m - naive - drift)
    return point


def gate_rows(tickers: Sequence[str], calib: Mapping[str, Any], horizon: int) -> np.ndarray:
    """``[N, H]`` point-signal gates of windows of ``tickers``: their class's (their board,
    :func:`forecasting.data.price_limits.board_of`) from the calibration's ``gate``, 1 for a
    class it has none for (a model saved before the gate, a board it never saw)."""
    gates = calib.get("gate") or {}
    ones = [1.0] * horizon
    rows = [gates.get(board_of(t), ones) for t in tickers]
    return np.asarray(rows, dtype=np.float64).reshape(len(tickers), horizon)


def gap_widening(gap: np.ndarray | None, n: int, horizon: int) -> np.ndarray:
    """``[N, H]`` band factors ``sqrt((h + gap) / h)`` for ``gap [N]`` trading days that pass
    between a window's last bar and its forecast origin (a suspension, a stale price): the
    target then lies ``h + gap`` trading days after the last close the band was built from,
    and the spread of a sum of daily returns grows with the square root of their count."""
    h = np.arange(1, horizon + 1, dtype=np.float64)  # [H]
    if gap is None:
        return np.ones((n, horizon))
    g = np.maximum(np.asarray(gap, dtype=np.float64), 0.0)[:, None]  # [N, 1]
    widen: np.ndarray = np.sqrt((h + g) / h)
    return widen


def apply_calibration(
    out: np.ndarray,
    naive: np.ndarray,
    calib: Mapping[str, Any],
    config: ModelConfig,
    scale: np.ndarray | None = None,
    gap: np.ndarray | None = None,
    *,
    vol: np.ndarray | None = None,
    gate: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point, lower and upper in target units from raw outputs. ``[N, H, Q] -> 3 x [N, H]``.

    ``scale [N]`` is each window's :func:`recent_scale` (used by ``scaled_residual`` bands),
    ``gap [N]`` the trading days between each window's last bar and its origin
    (:func:`gap_widening`), ``vol [N, H]`` each window's volatility forecast (used by ``cqr``
    bands fitted with one), ``gate [N, H]`` each window's series gate (:func:`series_gates`,
    1 when absent). Guarantees ``lower <= point <= upper``.
    """
    if vol is None and calib.get("vol_weight") is not None and min(calib["vol_weight"]) < 1.0:
        raise ValueError(
            "apply_calibration: this calibration blends a volatility forecast into the band; "
            "pass vol (forecasting.model.volatility.har_sigma of the windows)"
        )
    point = _point(out, naive, calib, config, gate)  # [N, H]
    widen = gap_widening(gap, len(point), point.shape[1])  # [N, H]
    if calib.get("method") == "cqr":
        lo, hi = _spreads(out, config, calib, vol)  # [N, H]
        below = np.asarray(calib["f_lo"], dtype=np.float64) * lo
        above = np.asarray(calib["f_hi"], dtype=np.float64) * hi
    else:
        sc = np.ones(len(point)) if scale is None else np.asarray(scale, dtype=np.float64)
        below = -np.asarray(calib["q_lo"], dtype=np.float64) * sc[:, None]  # [N, H]
        above = np.asarray(calib["q_hi"], dtype=np.float64) * sc[:, None]
    lower = point - below * widen
    upper = point + above * widen
    return point, np.minimum(lower, point), np.maximum(upper, point)
