"""Per-series scalers: fitted on the training span only, invertible, JSON-able."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from forecasting.model import scaling
from forecasting.model.lstm import ModelConfig
from forecasting.model.training import fit


def _walk(n: int, seed: int = 0, start: float = 20.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return start * np.exp(np.cumsum(rng.normal(0, 0.02, n)))


def test_log_return_scaler_is_the_std_of_training_returns() -> None:
    """The log-return scaler is the std of daily log-returns of exactly the closes given."""
    c = _walk(300)
    params = scaling.fit_scaler(c, "log_return")
    assert params["std"] == pytest.approx(np.std(np.diff(np.log(c))))
    json.dumps(params)  # stored with the model as JSON


def test_scaler_ignores_data_after_fit_end() -> None:
    """Changing closes after fit_end cannot move the parameters fitted up to it."""
    c = _walk(300)
    fit_end = 200
    changed = c.copy()
    changed[fit_end:] *= 3.0
    for target in scaling.TARGETS:
        assert scaling.fit_scaler(c[:fit_end], target) == scaling.fit_scaler(
            changed[:fit_end], target
        )


def test_fit_keeps_validation_span_out_of_the_scalers() -> None:
    """fit() fits scalers on the span before the last val_days: a huge move inside the
    validation span leaves every scaler parameter unchanged."""
    dates = [d.date() for d in pd.bdate_range("2020-01-01", periods=200)]
    base = pd.Series(_walk(200, seed=1), index=dates)
    moved = base.copy()
    moved.iloc[-10:] *= 1.5  # inside the last val_days=20
    cfg = ModelConfig(
        input_len=20, horizon=5, hidden_size=8, num_layers=1, val_days=20, max_epochs=0
    )
    a = fit({"A": base}, cfg, dates[-1])
    b = fit({"A": moved}, cfg, dates[-1])
    assert a.scalers == b.scalers
    assert a.scalers["A"]["std"] == pytest.approx(np.std(np.diff(np.log(base.to_numpy()[:180]))))


@pytest.mark.parametrize("target", scaling.TARGETS)
def test_levels_round_trip_to_prices(target: str) -> None:
    """Target values rebuilt into prices give back the actual closes."""
    c = _walk(100)
    params = scaling.fit_scaler(c[:60], target)
    lv = scaling.levels(c, params, target)
    t, h = 70, np.arange(1, 11)
    values = lv[t + h] - lv[t] if target == "log_return" else lv[t + h]
    np.testing.assert_allclose(scaling.to_price(values, c[t], params, target), c[t + h])


def test_inputs_are_clipped_normalized_returns() -> None:
    """Inputs are log-returns over the training std, clipped at `clip` sigmas."""
    c = _walk(100)
    c[50] = c[49] * 3.0  # a data error: +110% log-return
    params = scaling.fit_scaler(c[:40], "log_return")
    x = scaling.inputs(c, params, "log_return")
    assert x[0] == 0.0
    assert x[50] == pytest.approx(params["clip"])
    np.testing.assert_allclose(x[1:50], np.diff(np.log(c[:50])) / params["std"], rtol=1e-12)


def test_bad_closes_name_the_series() -> None:
    """A non-positive close is refused with the series named."""
    with pytest.raises(scaling.ScalingError, match="600519.SH"):
        scaling.fit_scaler(np.array([10.0, 0.0, 11.0]), "log_return", name="600519.SH")
