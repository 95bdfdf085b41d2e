"""Calibration: the shrink toward persistence and the conformalized band, on synthetic
predictions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from forecasting.model.calibration import (
    SHRINK_MAX,
    VAL_TAIL_WINDOWS,
    _validation_trust,
    apply_calibration,
    calibrate,
    gap_widening,
    series_gates,
    shrink_factors,
)
from forecasting.model.inference import predict
from forecasting.model.lstm import ModelConfig
from forecasting.model.training import fit


def test_shrink_is_zero_without_evidence_and_near_one_with_it() -> None:
    """Predictions unrelated to the outcome get factor 0 (pure persistence); predictions that
    carry most of the outcome keep a factor close to the least-squares one."""
    rng = np.random.default_rng(0)
    n, h = 2000, 3
    groups = np.repeat(np.arange(200), 10)  # 10 series share each origin date
    d = rng.normal(size=(n, h))
    noise = rng.normal(size=(n, h))
    a, a_ls, se = shrink_factors(d, noise, groups)
    assert np.all(a == 0.0) and np.all(se > 0)
    a, a_ls, _ = shrink_factors(d, 0.8 * d + 0.3 * noise, groups)
    assert np.all(a > 0.75) and np.all(a <= a_ls)


def test_a_timid_but_well_measured_signal_is_scaled_up_within_the_bound() -> None:
    """A network whose predicted change is half the true conditional mean (the outcome is
    twice the prediction plus noise) gets a factor above 1, close to the least-squares 2; one
    that is ten times too timid is capped at SHRINK_MAX."""
    rng = np.random.default_rng(1)
    n, h = 3000, 2
    groups = np.repeat(np.arange(300), 10)
    signal = rng.normal(size=(n, h))
    outcome = signal + rng.normal(size=(n, h))
    a, a_ls, se = shrink_factors(0.5 * signal, outcome, groups)
    assert np.all(a > 1.5) and np.all(a <= a_ls) and np.all(np.abs(a_ls - 2.0) < 4 * se)
    a, _, _ = shrink_factors(0.1 * signal, outcome, groups)
    assert np.all(a == SHRINK_MAX)


def test_gap_widening_grows_with_the_square_root_of_the_days_spanned() -> None:
    """No gap leaves the band as it is; a gap of g trading days widens horizon h by
    sqrt((h + g) / h), so the one-day band widens most."""
    w = gap_widening(np.array([0, 3]), 2, 3)
    assert np.allclose(w[0], 1.0)
    assert np.allclose(w[1], np.sqrt([(1 + 3) / 1, (2 + 3) / 2, (3 + 3) / 3]))
    assert np.allclose(gap_widening(None, 4, 2), 1.0)


def _garch_panel(
    k: int, n: int, seed: int, bars: bool = False
) -> tuple[dict[str, pd.Series | pd.DataFrame], np.ndarray]:
    """GARCH(1,1) log-returns (alpha 0.1, beta 0.85, unconditional daily std 1.5%), and each
    day's conditional std ``[k, n]``. ``bars``: each day walked in 20 intraday steps, so the
    series are frames with the close and a true high and low."""
    rng = np.random.default_rng(seed)
    omega, alpha, beta = 0.05 * 0.015**2, 0.1, 0.85
    var = np.full(k, 0.015**2)
    steps = 20
    r = np.zeros((k, n))
    sd = np.zeros((k, n))
    up, down = np.zeros((k, n)), np.zeros((k, n))  # high and low above/below the open, log
    for t in range(n):
        sd[:, t] = np.sqrt(var)
        path = np.cumsum(rng.normal(size=(k, steps)), axis=1) * (sd[:, t] / np.sqrt(steps))[:, None]
        r[:, t] = path[:, -1]
        up[:, t], down[:, t] = np.maximum(path.max(axis=1), 0), np.minimum(path.min(axis=1), 0)
        var = omega + alpha * r[:, t] ** 2 + beta * var
    dates = [d.date() for d in pd.bdate_range("2015-01-05", periods=n)]
    series: dict[str, pd.Series | pd.DataFrame] = {}
    for i in range(k):
        close = 20 * np.exp(np.cumsum(r[i]))
        opened = close / np.exp(r[i])
        if bars:
            frame = {
                "close": close,
                "high": opened * np.exp(up[i]),
                "low": opened * np.exp(down[i]),
            }
            series[f"G{i}.SH"] = pd.DataFrame(frame, index=dates)
        else:
            series[f"G{i}.SH"] = pd.Series(close, index=dates)
    return series, sd


@pytest.mark.slow
@pytest.mark.parametrize("bars", [False, True], ids=["closes", "bars"])
def test_conformalized_bands_cover_80_percent_of_a_garch_series_and_follow_its_volatility(
    bars: bool,
) -> None:
    """Out of sample on simulated GARCH(1,1) series, the 80% band (the conformalized blend of
    the quantile heads and the HAR volatility forecast) covers about 80% of next-day closes
    (0.75-0.85, every horizon within 0.72-0.88), and is wider on days whose true conditional
    volatility is higher; from closes alone and from whole bars with a high and low."""
    torch.set_num_threads(1)
    series, sd = _garch_panel(4, 1100, seed=3, bars=bars)
    cfg = ModelConfig(
        input_len=30,
        horizon=3,
        hidden_size=8,
        val_days=60,
        max_epochs=2,
        batch_size=128,
        history_days=800,
        device="cpu",
    )
    test_days = 200
    dates = list(series["G0.SH"].index)
    through = dates[-test_days - 1]
    model = fit(series, cfg, through, progress=False)
    cut: dict[str, pd.Series | pd.DataFrame] = {}
    alias: dict[str, dict[str, float]] = {}
    keys = []
    for tk, s in series.items():
        for t in range(len(s) - test_days, len(s) - cfg.horizon):
            key = f"{tk}@{t}"
            cut[key], alias[key] = s.iloc[t - cfg.input_len : t + 1], model.scalers[tk]
            keys.append((tk, t, key))
    paths = predict(replace(model, scalers=alias), cut)
    covered = np.zeros((len(keys), cfg.horizon), dtype=bool)
    width, true_sd = np.zeros(len(keys)), np.zeros(len(keys))
    for i, (tk, t, key) in enumerate(keys):
        closes = series[tk]
        closes = closes["close"] if isinstance(closes, pd.DataFrame) else closes
        p, actual = paths[key], closes.to_numpy()[t + 1 : t + 1 + cfg.horizon]
        covered[i] = (actual >= p.lower) & (actual <= p.upper)
        width[i] = np.log(p.upper[0] / p.lower[0])
        true_sd[i] = sd[int(tk[1]), t + 1]
    coverage = covered.mean(axis=0)  # [H]
    assert 0.75 <= coverage[0] <= 0.85, coverage
    assert np.all((coverage >= 0.72) & (coverage <= 0.88)), coverage
    assert np.corrcoef(width, true_sd)[0, 1] > 0.3


def test_a_class_whose_validation_the_signal_did_not_help_gets_persistence() -> None:
    """Series 0-1 (class "main") follow the prediction, series 2-3 ("other") go the other
    way: the pooled shrink is kept for the first class and gated to 0 (persistence) for the
    second, per horizon; without classes every series keeps it (the pooled gain is > 0)."""
    rng = np.random.default_rng(2)
    n, h = 800, 2
    series = np.repeat([0, 1, 2, 3], n // 4)
    d = rng.normal(size=(n, h))
    e = np.where(series[:, None] < 2, d, -0.2 * d) + 0.5 * rng.normal(size=(n, h))
    gates = series_gates(d, e, np.full(h, 0.5), series, ["main", "main", "other", "other"])
    np.testing.assert_array_equal(gates, [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(series_gates(d, e, np.full(h, 0.5), series), np.ones((4, h)))


def test_a_short_validation_moves_the_long_horizon_band_off_the_training_factor_less() -> None:
    """The validation tail factor is fully trusted with n / h >= VAL_TAIL_WINDOWS windows and
    in proportion below, so three tickers' 150 windows move the 10-day band a sixth as far."""
    trust = _validation_trust(150, 10)
    np.testing.assert_allclose(trust[[0, 4, 9]], [1.0, 150 / 5 / VAL_TAIL_WINDOWS, 0.15])
    assert np.all(_validation_trust(34 * 51, 10) == 1.0)


def test_the_band_does_not_carry_the_calibration_windows_drift_as_skew() -> None:
    """Calibration windows whose outcomes drifted up by half a spread: one factor serves both
    sides (80% of the calibration errors inside, in each side's units), so on driftless
    outcomes the band misses about as often below as above; a factor per side would have
    skewed it up and missed below about six times as often as above."""
    rng = np.random.default_rng(5)
    cfg = ModelConfig(horizon=2, shrink=False)  # the quantile loss: heads at 10%, 50%, 90%
    n = 4000
    out = np.zeros((n, cfg.horizon, 3))
    out[..., 0], out[..., 2] = -1.0, 1.0  # heads at -+1: a unit spread each side
    y = 0.5 + rng.normal(size=(n, cfg.horizon))
    calib = calibrate(out, y, np.zeros((n, cfg.horizon)), cfg)
    np.testing.assert_array_equal(calib["f_lo"], calib["f_hi"])
    assert 0.78 <= calib["val_coverage"] <= 0.82, calib["val_coverage"]
    fresh = rng.normal(size=(n, cfg.horizon))
    _, lower, upper = apply_calibration(out, np.zeros((n, cfg.horizon)), calib, cfg)
    below, above = np.mean(fresh < lower, axis=0), np.mean(fresh > upper, axis=0)  # [H]
    assert np.all(np.abs(below - above) < 0.03), (below, above)
