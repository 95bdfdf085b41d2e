"""Windows: vectorized, zero-copy views that match a slow reference loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forecasting.model import scaling
from forecasting.model.windows import TensorWindows, WindowView, build_panel, origins


def _panel(target: str, lengths=(50, 13, 80)):
    rng = np.random.default_rng(0)
    closes = {
        f"T{i}": 10 * np.exp(np.cumsum(rng.normal(0, 0.02, n))) for i, n in enumerate(lengths)
    }
    dates = {k: np.arange(len(v)).astype("datetime64[D]") for k, v in closes.items()}
    scalers = {k: scaling.fit_scaler(v[:10], target) for k, v in closes.items()}
    return closes, scalers, build_panel(closes, dates, scalers, target)


@pytest.mark.parametrize("target", scaling.TARGETS)
def test_windows_match_a_slow_loop(target: str) -> None:
    """Every origin, input window and target equals a per-window Python reference, and no
    window crosses from one series into the next."""
    L, H = 7, 4
    closes, scalers, panel = _panel(target)
    idx = origins(panel, L, H, np.zeros(3, dtype=int), panel.lengths - 1)
    view = WindowView(panel, L, H)
    ref_x, ref_y, ref_naive = [], [], []
    for k, c in closes.items():
        x = scaling.inputs(c, scalers[k], target)
        lv = scaling.levels(c, scalers[k], target)
        for t in range(L, len(c) - H):
            ref_x.append(x[t - L + 1 : t + 1])
            ref_y.append(
                [lv[t + h] - (lv[t] if target == "log_return" else 0) for h in range(1, H + 1)]
            )
            ref_naive.append([0.0 if target == "log_return" else lv[t]] * H)
    assert view.inputs(idx).shape == (len(ref_x), L)
    np.testing.assert_allclose(view.inputs(idx), np.array(ref_x, dtype=np.float32))
    np.testing.assert_allclose(view.targets(idx), np.array(ref_y), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(view.naive(idx), np.array(ref_naive))
    assert len(idx) == sum(max(len(c) - H - L, 0) for c in closes.values())


def test_origin_bounds_are_clipped_to_complete_windows() -> None:
    """Requested bounds beyond a series are clipped; a series too short gives no windows."""
    _, _, panel = _panel("log_return", lengths=(30, 8))
    idx = origins(panel, 5, 3, [-100, 0], [1000, 1000])
    assert idx.min() == 5 and idx.max() == 30 - 1 - 3
    assert len(origins(panel, 5, 3, [0, 0], [-1, -1])) == 0


def test_windows_are_views_not_copies() -> None:
    """The input windows share the flat array's memory: memory does not grow with L."""
    _, _, panel = _panel("log_return", lengths=(500,))
    for L in (5, 200):
        w = WindowView(panel, L, 3).x_windows
        assert np.shares_memory(w, panel.x)
        assert w.shape == (500 - L + 1, L)


@pytest.mark.parametrize("target", scaling.TARGETS)
def test_tensor_windows_agree_with_numpy_views(target: str) -> None:
    """The torch batches used in training equal the numpy windows."""
    L, H = 6, 3
    _, _, panel = _panel(target)
    idx = origins(panel, L, H, np.zeros(3, dtype=int), panel.lengths - 1)
    view, tw = WindowView(panel, L, H), TensorWindows(panel, L, H, torch.device("cpu"))
    t = torch.from_numpy(idx)
    np.testing.assert_array_equal(tw.inputs(t)[..., 0].numpy(), view.inputs(idx))
    np.testing.assert_allclose(tw.targets(t).numpy(), view.targets(idx), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(tw.naive(t).numpy(), view.naive(idx), rtol=1e-6)
