"""The HAR volatility layer: fitted on training windows, it tracks the true volatility, from
the high/low range or from the returns alone."""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from forecasting.model.features import feature_matrix, fit_feature_scaler
from forecasting.model.volatility import (
    SERIES_PRIOR_WINDOWS,
    fit_har,
    fit_series_factors,
    har_sigma,
    window_variance,
)

FEATURES = ("return", "range")


def _garch_bars(n: int, seed: int, steps: int = 40) -> tuple[pd.DataFrame, np.ndarray]:
    """GARCH(1,1) days (alpha 0.1, beta 0.85, daily std 1.5%) walked in ``steps`` intraday
    steps, so each bar has a true high and low; and each day's conditional std ``[n]``."""
    rng = np.random.default_rng(seed)
    omega, alpha, beta = 0.05 * 0.015**2, 0.1, 0.85
    var, logp = 0.015**2, np.log(20.0)
    rows, sd = [], np.zeros(n)
    for t in range(n):
        sd[t] = np.sqrt(var)
        path = logp + np.cumsum(rng.normal(0, sd[t] / np.sqrt(steps), steps))
        hi, lo = max(path.max(), logp), min(path.min(), logp)
        r = path[-1] - logp
        rows.append((np.exp(path[-1]), np.exp(hi), np.exp(lo)))
        logp = path[-1]
        var = omega + alpha * r**2 + beta * var
    close, high, low = map(np.array, zip(*rows, strict=True))
    dates = pd.bdate_range("2015-01-05", periods=n).values.astype("datetime64[D]")
    return pd.DataFrame({"close": close, "high": high, "low": low}, index=dates), sd


def _windows(bars: pd.DataFrame, with_range: bool, fit_end: int, length: int, horizon: int):
    c, d = bars["close"].to_numpy(), bars.index.to_numpy()
    hl = {"high": bars["high"].to_numpy(), "low": bars["low"].to_numpy()} if with_range else {}
    params = fit_feature_scaler(
        c[:fit_end], d[:fit_end], "log_return", **{k: v[:fit_end] for k, v in hl.items()}
    )
    x = feature_matrix(c, d, params, "log_return", FEATURES, "G.SH", **hl)  # [n, F]
    t = np.arange(length, len(c) - horizon)  # origins
    win = sliding_window_view(x, length, axis=0)[t - length + 1].transpose(0, 2, 1)  # [T, L, F]
    v = window_variance(x[None], FEATURES if with_range else ("return",))[0]  # [n]
    ahead = sliding_window_view(v, horizon + 1)[t][:, 1:]  # [T, H]
    return t, win if with_range else win[..., :1], ahead


def test_har_sigma_tracks_the_true_volatility_from_the_range_or_the_returns() -> None:
    """Fitted on the first 2000 days' windows, the one-day HAR spread of the later windows
    correlates with the true conditional std (0.93 from the range, 0.86 from the returns on
    this seed; on GARCH data, where the volatility is driven by the returns, the range is not
    always better)."""
    bars, sd = _garch_bars(3000, seed=5)
    corr = {}
    for with_range in (True, False):
        feats = FEATURES if with_range else ("return",)
        t, win, ahead = _windows(bars, with_range, 2000, 60, 5)
        train = t + 5 < 2000
        har = {"har": fit_har(win[train], ahead[train], feats)}
        sigma = har_sigma(win[~train], har, feats)
        assert sigma is not None and sigma.shape == (int((~train).sum()), 5)
        assert np.all(np.diff(sigma, axis=1) > 0)  # the h-day spread grows with h
        corr[with_range] = np.corrcoef(sigma[:, 0], sd[t[~train] + 1])[0, 1]
    assert corr[True] > 0.85 and corr[False] > 0.75, corr


def test_no_har_fit_means_no_volatility_forecast() -> None:
    """A calibration saved before the HAR layer has no ``har``: no forecast, and the band
    falls back to the network's heads alone."""
    assert har_sigma(np.zeros((3, 10, 2)), {"shrink": [0.0]}, FEATURES) is None


def test_a_series_whose_moves_come_in_jumps_gets_a_narrower_spread_for_the_same_variance() -> None:
    """Three series with unit-variance errors on a unit spread: steady (normal), jumpy
    (Student-t, 3 degrees of freedom, rescaled to unit variance: a smaller 80% quantile), and
    a normal one with only a few windows. The jumpy one's factor is below the steady one's,
    by about their 80% quantiles' ratio; the short one is pulled towards 1; har_sigma applies
    each ticker's factor and 1 to a ticker it has none for."""
    rng = np.random.default_rng(4)
    n, h = 20_000, 2
    err = np.concatenate(
        [
            rng.normal(size=(n, h)),
            rng.standard_t(3, size=(n, h)) / np.sqrt(3.0),
            rng.normal(size=(40, h)) * 2.0,
        ]
    )
    series = np.repeat([0, 1, 2], [n, n, 40])
    factors = fit_series_factors(np.ones_like(err), err, series, ["steady", "jumpy", "short"])
    steady, jumpy, short = (np.asarray(factors[k]) for k in ("steady", "jumpy", "short"))
    assert np.all(jumpy < 0.9 * steady), (jumpy, steady)
    expected = np.quantile(np.abs(err[n : 2 * n]), 0.8) / np.quantile(np.abs(err[:n]), 0.8)
    np.testing.assert_allclose(jumpy / steady, expected, rtol=0.05)
    # 40 windows at h = 1 are 40 outcomes: weight 40 / (40 + prior) of the log of about 2x.
    assert 1.0 < short[0] < 2.0 ** (40 / (40 + SERIES_PRIOR_WINDOWS)) * 1.15, short
    x = np.zeros((3, 60, 2))
    har = {"har": {"lags": [1, 5, 22, 60], "coef": [[0.0] * 5] * h, "series_factor": factors}}
    sigma = har_sigma(x, har, FEATURES, ["jumpy", "steady", "unknown"])
    assert sigma is not None
    np.testing.assert_allclose(sigma[0], jumpy * np.sqrt([1.0, 2.0]))
    np.testing.assert_allclose(sigma[1], steady * np.sqrt([1.0, 2.0]))
    np.testing.assert_allclose(sigma[2], np.sqrt([1.0, 2.0]))
