"""The per-epoch window budget, stratified by ticker."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from forecasting.model.lstm import ModelConfig
from forecasting.model.sampling import WindowSampler, quotas
from forecasting.model.training import fit
from forecasting.model.windows import Panel, origins


@pytest.mark.parametrize(
    ("counts", "budget", "expected"),
    [
        ([100, 100, 100], 30, [10, 10, 10]),
        ([5, 100, 100], 45, [5, 20, 20]),  # a short series gives all it has
        ([5, 100, 100], 46, [5, 21, 20]),  # the remainder goes one by one
        ([5, 6, 7], 100, [5, 6, 7]),  # a budget above the total takes everything
        ([50, 50], 0, [0, 0]),
    ],
)
def test_quotas_are_an_even_share_capped_by_each_series(
    counts: list[int], budget: int, expected: list[int]
) -> None:
    """Every series gets the same share, a series with fewer windows all of its own."""
    got = quotas(np.array(counts), budget)
    assert got.tolist() == expected
    assert got.sum() == min(budget, sum(counts))


def _panel(lengths: list[int]) -> Panel:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    return Panel(
        tickers=[f"T{i}" for i in range(len(lengths))],
        offsets=offsets,
        x=np.zeros(n, dtype=np.float32),
        inputs=np.zeros((n, 1), dtype=np.float32),
        level=np.zeros(n),
        train_level=np.zeros(n),
        dates=[np.arange(k).astype("datetime64[D]") for k in lengths],
        target="log_return",
    )


def test_each_epoch_draws_the_budget_evenly_and_differently() -> None:
    """A small and a large history count alike; epochs differ; a rerun draws the same."""
    panel = _panel([120, 3000, 3000])
    idx = origins(panel, 20, 5, np.zeros(3, dtype=np.int64), panel.lengths - 1)
    sampler = WindowSampler(panel, idx, budget=600, seed=7)
    first, second = sampler.epoch(1), sampler.epoch(2)
    assert len(first) == len(second) == 600
    assert set(first) <= set(idx.tolist()) and len(set(first)) == 600  # no repeats, valid
    per_series = np.bincount(np.searchsorted(panel.offsets, first, side="right") - 1)
    assert per_series.tolist() == [95, 253, 252]  # the short series has 95 windows in all
    assert not np.array_equal(first, second)
    assert np.array_equal(first, WindowSampler(panel, idx, budget=600, seed=7).epoch(1))
    assert np.all(np.diff(first) > 0)


def test_a_series_shorter_than_its_share_gives_all_its_windows() -> None:
    """The 95 windows of the short series all go in; the rest is split between the others."""
    panel = _panel([120, 3000, 3000])
    idx = origins(panel, 20, 5, np.zeros(3, dtype=np.int64), panel.lengths - 1)
    sample = WindowSampler(panel, idx, budget=1000, seed=0).epoch(1)
    per_series = np.bincount(np.searchsorted(panel.offsets, sample, side="right") - 1)
    assert per_series.tolist() == [95, 453, 452]


def test_a_budget_covering_everything_is_every_window() -> None:
    panel = _panel([60, 70])
    idx = origins(panel, 20, 5, np.zeros(2, dtype=np.int64), panel.lengths - 1)
    assert np.array_equal(WindowSampler(panel, idx, budget=10_000, seed=0).epoch(3), idx)


def _closes(k: int, n: int = 260) -> dict[str, pd.Series]:
    dates = [d.date() for d in pd.bdate_range("2020-01-01", periods=n)]
    rng = np.random.default_rng(0)
    return {
        f"T{i}.SH": pd.Series(30 * np.exp(np.cumsum(rng.normal(0, 0.02, n))), index=dates)
        for i in range(k)
    }


def test_full_fits_and_fine_tunes_train_on_the_budget_whatever_the_universe() -> None:
    """With windows_per_epoch set, every epoch of a full fit trains on that many windows for 3
    tickers and for 12, and so does a fine-tune; without it, on all of them."""
    torch.set_num_threads(1)
    cfg = ModelConfig(
        input_len=20,
        horizon=5,
        hidden_size=8,
        val_days=20,
        max_epochs=2,
        patience=5,
        batch_size=64,
        history_days=200,
        finetune_days=120,
        finetune_epochs=1,
        device="cpu",
        windows_per_epoch=128,
    )
    for k in (3, 12):
        series = _closes(k)
        through = max(series["T0.SH"].index)
        model = fit(series, cfg, through)
        assert [h["windows"] for h in model.history[1:]] == [128, 128]
        assert model.n_train_samples > 128 * k  # the budget, not the data, set the epoch
    tuned = fit(series, cfg, through, init=model)
    assert [h["windows"] for h in tuned.history[1:]] == [128]
    everything = fit(series, replace(cfg, windows_per_epoch=0, max_epochs=1), through)
    assert everything.history[1]["windows"] == everything.n_train_samples
