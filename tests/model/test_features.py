"""Model inputs beyond the return: scaled on the training span, point-in-time, limit flags."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from forecasting.model.features import FEATURES, feature_matrix, fit_feature_scaler
from forecasting.model.lstm import ModelConfig
from forecasting.model.training import build_dataset


def _closes(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2019-01-02", periods=n).values.astype("datetime64[D]")
    return 10 * np.exp(np.cumsum(rng.normal(0, 0.02, n))), dates


def test_a_planted_future_spike_moves_no_earlier_feature_and_no_scaler() -> None:
    """A 5x close and a month-long gap planted after the training span change neither the
    scaler (fitted on the training span only) nor any feature row before the spike."""
    c, d = _closes()
    through = dt.date.fromisoformat(str(d[-40]))
    spiked_c, spiked_d = c.copy(), d.copy()
    spiked_c[-20:] *= 5.0
    spiked_d[-20:] += 30  # a suspension: the last 20 bars a month later
    cfg = ModelConfig(input_len=20, horizon=5, val_days=20, history_days=0, hidden_size=4)
    index = lambda dates: [dt.date.fromisoformat(str(x)) for x in dates]  # noqa: E731
    a = build_dataset({"A.SH": pd.Series(c, index=index(d))}, cfg, through)
    b = build_dataset({"A.SH": pd.Series(spiked_c, index=index(spiked_d))}, cfg, through)
    assert a.scalers == b.scalers
    np.testing.assert_array_equal(a.panel.inputs, b.panel.inputs)  # both cut at `through`
    params = a.scalers["A.SH"]
    full = feature_matrix(c, d, params, "log_return", FEATURES, "600000.SH")
    moved = feature_matrix(spiked_c, spiked_d, params, "log_return", FEATURES, "600000.SH")
    np.testing.assert_array_equal(full[:-20], moved[:-20])
    assert not np.array_equal(full[-20], moved[-20])


def test_features_are_centred_on_the_training_span() -> None:
    """The absolute return and the calendar gap are centred by their training-span means, so
    both average zero there; the return column is the clipped normalized return."""
    c, d = _closes()
    params = fit_feature_scaler(c[:200], d[:200], "log_return")
    x = feature_matrix(c[:200], d[:200], params, "log_return", FEATURES, "600000.SH")
    assert x.shape == (200, len(FEATURES)) and x.dtype == np.float32
    assert abs(x[1:, 1].mean()) < 1e-6 and abs(x[1:, 2].mean()) < 1e-6
    np.testing.assert_allclose(x[1:, 0], np.diff(np.log(c[:200])) / params["std"], rtol=1e-5)


def test_limit_flags_follow_the_board_and_its_date() -> None:
    """A main-board close 10% up is a limit-up day, 9% is not; ChiNext's limit was 10% before
    2020-08-24 and 20% after; an index has no limit, so no flag."""
    days = np.array(["2019-03-01", "2019-03-04", "2019-03-05", "2019-03-06"], "datetime64[D]")
    c = np.array([10.0, 11.0, 11.99, 10.79])  # +10%, +9%, -10%
    cols = ("return", "limit_up", "limit_down")
    params = {"std": 0.02, "clip": 50.0}
    main = feature_matrix(c, days, params, "log_return", cols, "600000.SH")
    assert main[:, 1].tolist() == [0, 1, 0, 0] and main[:, 2].tolist() == [0, 0, 0, 1]
    chinext_2019 = feature_matrix(c, days, params, "log_return", cols, "300750.SZ")
    assert chinext_2019[:, 1].tolist() == [0, 1, 0, 0]
    chinext_2021 = feature_matrix(c, days + 800, params, "log_return", cols, "300750.SZ")
    assert chinext_2021[:, 1:].sum() == 0
    index = feature_matrix(c, days, params, "log_return", cols, "000300.SH")
    assert index[:, 1:].sum() == 0


def _bars(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Closes with a high/low range around them and a volume, indexed by date."""
    rng = np.random.default_rng(seed)
    c, d = _closes(n, seed)
    spread = np.exp(np.abs(rng.normal(0, 0.015, n)))
    index = [dt.date.fromisoformat(str(x)) for x in d]
    return pd.DataFrame(
        {"close": c, "high": c * spread, "low": c / spread, "vol": rng.uniform(1e5, 2e5, n)},
        index=index,
    )


def test_a_planted_future_range_or_volume_spike_moves_nothing_before_it() -> None:
    """A tenfold high/low range and a hundredfold volume planted after the training span
    change neither the scaler nor any input row before them, and do change the rows at them."""
    bars = _bars()
    through = bars.index[-40]
    spiked = bars.copy()
    spiked.iloc[-20:, spiked.columns.get_loc("high")] *= 10.0
    spiked.iloc[-20:, spiked.columns.get_loc("vol")] *= 100.0
    cfg = ModelConfig(input_len=20, horizon=5, val_days=20, history_days=0, hidden_size=4)
    a = build_dataset({"A.SH": bars}, cfg, through)
    b = build_dataset({"A.SH": spiked}, cfg, through)
    assert a.scalers == b.scalers and "range_ratio" in a.scalers["A.SH"]
    np.testing.assert_array_equal(a.panel.inputs, b.panel.inputs)
    params = a.scalers["A.SH"]
    d = np.asarray(pd.to_datetime(pd.Index(bars.index)).values, dtype="datetime64[D]")

    def rows(f: pd.DataFrame) -> np.ndarray:
        cols = {k: f[k].to_numpy() for k in ("high", "low", "vol")}
        return feature_matrix(
            f["close"].to_numpy(), d, params, "log_return", FEATURES, "A.SH", **cols
        )

    full, moved = rows(bars), rows(spiked)
    np.testing.assert_array_equal(full[:-20], moved[:-20])
    ri, vi = FEATURES.index("range"), FEATURES.index("volume")
    assert np.all(moved[-19:, ri] > full[-19:, ri])  # the range input sees the wider bars
    assert moved[-20, vi] > full[-20, vi]  # the volume change into the spike


def test_the_range_input_is_centred_and_falls_back_to_the_return_without_bars() -> None:
    """On the training span the range input averages 0; a series of closes only (no high or
    low) still gets a range input, from its squared returns, and a zero volume change."""
    bars = _bars()
    d = np.asarray(pd.to_datetime(pd.Index(bars.index)).values, dtype="datetime64[D]")
    c, hi, lo, vol = (bars[k].to_numpy() for k in ("close", "high", "low", "vol"))
    params = fit_feature_scaler(
        c[:200], d[:200], "log_return", high=hi[:200], low=lo[:200], vol=vol[:200]
    )
    x = feature_matrix(
        c[:200],
        d[:200],
        params,
        "log_return",
        FEATURES,
        "A.SH",
        high=hi[:200],
        low=lo[:200],
        vol=vol[:200],
    )
    ri, vi = FEATURES.index("range"), FEATURES.index("volume")
    assert abs(x[1:, ri].mean()) < 1e-5 and abs(x[1:, vi].mean()) < 1e-5
    closes_only = fit_feature_scaler(c[:200], d[:200], "log_return")
    y = feature_matrix(c[:200], d[:200], closes_only, "log_return", FEATURES, "A.SH")
    assert abs(y[1:, ri].mean()) < 1e-5 and np.all(y[:, vi] == 0.0)
    assert np.corrcoef(y[1:, ri], np.log(np.diff(np.log(c[:200])) ** 2))[0, 1] > 0.9
