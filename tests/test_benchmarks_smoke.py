"""Smoke test of the accuracy benchmark's core on two real series with tiny settings.

The full benchmark takes minutes; this runs the same code path (grouping by test window, one
global fit per group, batched rolling-origin predictions, the tutorial recipe, scoring and the
printed report) on one index and one panel stock in a few seconds.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks/` is not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks.accuracy import (  # noqa: E402
    COLUMNS,
    _origins,
    format_runs,
    format_summary,
    format_table,
    run_accuracy,
    window_groups,
)
from benchmarks.common import choose_panel_tickers, load_index  # noqa: E402
from benchmarks.tutorial_lstm import (  # noqa: E402
    TutorialConfig,
    fit_tutorial,
    forecast_tutorial,
)
from forecasting.model.lstm import ModelConfig  # noqa: E402

TEST_DAYS = 30
TINY = ModelConfig(
    input_len=10,
    hidden_size=4,
    num_layers=1,
    max_epochs=1,
    patience=0,
    history_days=150,
    val_days=20,
    batch_size=256,
    device="cpu",
)


@pytest.fixture(scope="module")
def two_series(shared_data: Path) -> dict[str, pd.Series]:
    stock = next(iter(choose_panel_tickers(1, shared_data).items()))
    return {"000300.SH": load_index("000300.SH", shared_data), stock[0]: stock[1]}


@pytest.fixture(scope="module")
def result(two_series: dict[str, pd.Series]):
    torch.set_num_threads(1)
    return run_accuracy(two_series, TINY, test_days=TEST_DAYS, tutorial=TutorialConfig(epochs=5))


def test_series_with_different_end_dates_get_their_own_cutoff(
    two_series: dict[str, pd.Series],
) -> None:
    """The index (ends 2022) and the panel stock (ends 2019) are tested on their own last days,
    each group's model trained through the trading day before its first origin."""
    groups = window_groups(two_series, TEST_DAYS)
    assert len(groups) == 2
    for g in groups:
        (tk,) = g.tickers
        s = two_series[tk]
        assert g.through == g.test_after
        assert pd.Timestamp(g.through) == s.index[-TEST_DAYS - 1]
    common = window_groups(two_series, TEST_DAYS, common=True)
    assert {g.test_after for g in common} == {g.test_after for g in groups}
    assert {g.through for g in common} == {min(g.through for g in groups)}


def test_a_suspended_stock_shares_its_peers_window_with_fewer_origins() -> None:
    """Series ending together form one group whose window is the last days of their combined
    calendar; a series missing days in it is not pushed into a window of its own."""
    days = pd.bdate_range("2020-01-01", periods=200)
    full = pd.Series(np.linspace(10.0, 11.0, 200), index=days)
    suspended = full.drop(days[150:170])  # 20 days suspended inside the last 50
    (group,) = window_groups({"A.SZ": full, "B.SZ": suspended}, 50)
    assert group.tickers == ("A.SZ", "B.SZ")
    assert pd.Timestamp(group.through) == days[-51]
    assert len(_origins(full, group.test_after)) == 49
    assert len(_origins(suspended, group.test_after)) == 49 - 20


def test_rows_cover_every_series_and_horizon_with_finite_ratios(result) -> None:
    """One row per (series, horizon); every origin's target lies after the model's cutoff;
    model and tutorial ratios are finite and coverage is a fraction."""
    rows = result.rows
    assert list(rows.columns) == COLUMNS
    assert len(rows) == 2 * 3
    assert sorted(rows["horizon"].unique()) == [1, 5, 10]
    for h, n in zip(rows["horizon"], rows["n_origins"], strict=True):
        assert n == TEST_DAYS - h
    assert (rows["first_origin"] > rows["trained_through"]).all()
    for col in ("ratio", "tutorial_ratio", "naive_rmse", "rmse"):
        assert np.isfinite(rows[col].to_numpy(dtype=float)).all(), col
    assert rows["coverage"].between(0.0, 1.0).all()
    assert len(result.runs) == 2
    assert all(math.isfinite(r.model.val_ratio) for r in result.runs)


def test_printed_report_has_a_line_per_series_and_a_summary_per_horizon(
    result, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table has a header naming each horizon's ratio, tutorial ratio and coverage and one
    line per series; the summary counts the pairs meeting the target and has a line per
    horizon."""
    table = format_table(result.rows)
    lines = table.splitlines()
    header = lines[0].split()
    assert header[:3] == ["ticker", "through", "n"]
    assert header[3:] == [f"{k}@{h}" for k in ("ratio", "tut", "cov") for h in (1, 5, 10)]
    body = [ln for ln in lines[2:] if ln and not ln.startswith("(")]
    assert sorted(ln.split()[0] for ln in body) == sorted(result.rows["ticker"].unique())
    for ln in body:
        values = [float(v.rstrip("*")) for v in ln.split()[3:]]
        assert len(values) == 9 and all(math.isfinite(v) for v in values)
    summary = format_summary(result.rows)
    assert "ratio <= 1.00:" in summary and "/6 series x horizons" in summary
    per_h = [ln.split()[0] for ln in summary.splitlines() if ln.split()[0] in {"1", "5", "10"}]
    assert per_h == ["1", "5", "10"]
    assert "val ratio" in format_runs(result.runs)


def test_tutorial_forecasts_recursively_from_whole_series_scaling() -> None:
    """The recipe's scaler spans the whole series (test period included), and a multi-step
    forecast feeds each prediction back: step 2 from a window equals step 1 from that window
    shifted by the step-1 prediction."""
    idx = pd.bdate_range("2020-01-01", periods=120)
    whole = pd.Series(np.linspace(10.0, 20.0, 120), index=idx, name="X")
    model = fit_tutorial(whole, whole.iloc[:80], TutorialConfig(epochs=3))
    assert (model.lo, model.hi) == (10.0, 20.0)  # the leak the tutorials make
    window = whole.to_numpy()[75:80][None, :]  # [1, 5]
    path = forecast_tutorial(model, window, 3)  # [1, 3]
    assert path.shape == (1, 3)
    shifted = np.concatenate([window[:, 1:], path[:, :1]], axis=1)  # [1, 5]
    np.testing.assert_allclose(forecast_tutorial(model, shifted, 1)[0, 0], path[0, 1], rtol=1e-5)
