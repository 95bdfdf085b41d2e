"""The network and its configuration."""

from __future__ import annotations

import pytest
import torch

from forecasting.model.lstm import ModelConfig, SeqForecaster, lstm_flops_per_sample
from forecasting.settings import ModelSettings


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize(("loss", "q"), [("quantile", 3), ("mse", 1)])
def test_output_is_all_horizons_at_once(cell: str, loss: str, q: int) -> None:
    """[B, L, F] -> [B, H, Q] in one call, for every cell type and loss."""
    cfg = ModelConfig(input_len=12, horizon=7, cell=cell, loss=loss, hidden_size=8)
    out = SeqForecaster(cfg)(torch.randn(5, 12, len(cfg.features)))
    assert out.shape == (5, 7, q)
    assert len(cfg.quantiles) == q and cfg.quantiles[cfg.median_index] == 0.5


def test_untrained_head_starts_near_persistence() -> None:
    """A fresh network predicts (almost) no change, so early training cannot add variance."""
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=16)
    out = SeqForecaster(cfg).eval()(torch.randn(64, 60, len(cfg.features)))
    assert out.abs().max() < 0.5


def test_quantile_levels_follow_the_interval() -> None:
    """An 80% interval uses the 10% and 90% quantiles around the median."""
    assert ModelConfig(interval=0.8).quantiles == pytest.approx((0.1, 0.5, 0.9))


def test_config_round_trips_and_mirrors_settings() -> None:
    """to_dict/from_dict round-trip; from_settings copies every field of ModelSettings."""
    cfg = ModelConfig(cell="gru", hidden_size=32, target="minmax", loss="mse")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_dict({**cfg.to_dict(), "from_the_future": 1}) == cfg
    s = ModelSettings(hidden_size=16, cell="rnn", max_epochs=3)
    assert ModelConfig.from_settings(s) == ModelConfig(hidden_size=16, cell="rnn", max_epochs=3)
    assert ModelConfig().target == "log_return"


@pytest.mark.parametrize("bad", [{"cell": "transformer"}, {"target": "level"}, {"interval": 1.2}])
def test_invalid_config_is_refused(bad: dict) -> None:
    """A typo in a hyperparameter fails loudly, naming the field."""
    with pytest.raises(ValueError, match=next(iter(bad))):
        ModelConfig(**bad)


def test_flop_count_matches_the_gate_matmuls() -> None:
    """Two-layer LSTM: 4 gates x (in + hidden) x hidden multiply-adds per step and layer, plus
    the head and the linear skip from the whole window."""
    cfg = ModelConfig(
        input_len=10, horizon=2, hidden_size=4, num_layers=2, loss="mse", features=("return",)
    )
    expected = 2 * 4 * 4 * (1 + 4) * 10 + 2 * 4 * 4 * (4 + 4) * 10 + 2 * (4 + 10) * 2
    assert lstm_flops_per_sample(cfg) == expected
