"""A trained model: its weights plus everything needed to use them, and its network.

:class:`TrainedModel` is what :func:`forecasting.model.training.fit` returns, what
:mod:`forecasting.model.registry` stores and loads, and what :mod:`forecasting.model.inference`
forecasts and scores with. The helpers here turn it back into a network on a device and run
that network without gradients.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from forecasting.model.lstm import ModelConfig, SeqForecaster
from forecasting.model.metrics import ratio_to_naive

EVAL_BATCH = 8192


@dataclass
class TrainedModel:
    """Weights plus everything needed to use them: config, scalers, calibration, provenance."""

    config: ModelConfig
    state_dict: dict[str, torch.Tensor]  # CPU tensors
    scalers: dict[str, dict[str, float]]  # per ticker, fitted on the training span only
    calibration: dict[str, Any]  # JSON-able: shrink factors and interval offsets per horizon
    tickers: list[str]
    trained_through: dt.date
    val_rmse: float  # normalized units, validation windows, calibrated point forecast
    val_naive_rmse: float  # persistence on the same windows, same units
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    n_train_samples: int = 0

    @property
    def val_ratio(self) -> float:
        """Validation RMSE relative to persistence (< 1 beats it)."""
        return ratio_to_naive(self.val_rmse, self.val_naive_rmse)


def device_for(config: ModelConfig) -> torch.device:
    """``"auto"``: CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def inference_device(config: ModelConfig) -> torch.device:
    """Like :func:`device_for`, but a model trained on a GPU still forecasts on a machine
    without one."""
    device = device_for(config)
    return device if device.type != "cuda" or torch.cuda.is_available() else torch.device("cpu")


def load_weights(net: SeqForecaster, state_dict: dict[str, torch.Tensor]) -> None:
    """Load ``state_dict`` into ``net``. A checkpoint saved before the network had its linear
    skip has no ``skip.*`` weights; the skip then stays at its zero start, which is exactly
    the network that was saved. Any other mismatch is an error."""
    missing, unexpected = net.load_state_dict(state_dict, strict=False)
    wrong = [k for k in missing if not k.startswith("skip.")] + list(unexpected)
    if wrong:
        raise RuntimeError(f"checkpoint does not fit the network: {sorted(wrong)}")


def build_network(model: TrainedModel, device: torch.device | None = None) -> SeqForecaster:
    """The network of a trained model, weights loaded, in eval mode."""
    net = SeqForecaster(model.config)
    load_weights(net, model.state_dict)
    return net.to(device or torch.device("cpu")).eval()


def forward(net: nn.Module, x: torch.Tensor, batch: int = EVAL_BATCH) -> torch.Tensor:
    """No-grad forward in chunks. ``[N, L, 1] -> [N, H, Q]`` (float64, CPU)."""
    net.eval()
    outs = []
    with torch.no_grad():
        for a in range(0, len(x), batch):
            outs.append(net(x[a : a + batch]).double().cpu())  # [b, H, Q]
    if not outs:
        return torch.empty(0)
    return torch.cat(outs)
