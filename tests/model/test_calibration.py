"""Calibration: the shrink toward persistence, on synthetic predictions."""

from __future__ import annotations

import numpy as np

from forecasting.model.calibration import shrink_factors


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
    assert np.all(a > 0.7) and np.all(a <= a_ls)
