"""The model: a recurrent cell with a direct multi-horizon head, and its frozen configuration.

The network reads ``input_len`` normalized observations and emits every horizon ``1..H`` at
once (not recursively, so errors do not compound) and, for the quantile loss, several
quantiles per horizon: ``[B, L, F] -> [B, H, Q]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from forecasting.model.features import FEATURES
from forecasting.model.scaling import TARGETS
from forecasting.settings import ModelSettings

CELLS = ("lstm", "gru", "rnn")
LOSSES = ("quantile", "mse")


@dataclass(frozen=True)
class ModelConfig(ModelSettings):
    """Every hyperparameter of a model, saved as JSON next to its weights.

    ``target`` picks the representation (see :mod:`forecasting.model.scaling`): ``log_return`` is the
    default; ``minmax`` is the tutorial-style price-level scaling, kept only for comparison.
    ``interval`` is the nominal coverage of the forecast interval (0.8 = 10%..90%).
    ``history_days`` / ``finetune_days``: trading days of each series used by a full fit / a
    fine-tune (plus ``input_len`` of context); 0 means all of it. ``per_ticker``: the caller
    fits one model per ticker (:func:`forecasting.model.training.fit_per_ticker`).
    ``shrink`` lets calibration pull the point forecast toward persistence by a per-horizon
    factor fitted on validation (off only for ablations). ``features``: the input columns
    (:mod:`forecasting.model.features`), ``return`` first; a model saved before they existed
    read the return alone.
    """

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))  # JSON gives a list
        problems = []
        if not self.features or self.features[0] != "return":
            problems.append(f"features={list(self.features)} (must start with 'return')")
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown or len(set(self.features)) != len(self.features):
            problems.append(f"features={list(self.features)} (use each of {FEATURES} once at most)")
        if self.cell not in CELLS:
            problems.append(f"cell={self.cell!r} (use one of {CELLS})")
        if self.target not in TARGETS:
            problems.append(f"target={self.target!r} (use one of {TARGETS})")
        if self.loss not in LOSSES:
            problems.append(f"loss={self.loss!r} (use one of {LOSSES})")
        if not 0.0 < self.interval < 1.0:
            problems.append(f"interval={self.interval} (must be between 0 and 1)")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout={self.dropout} (must be in [0, 1))")
        for name in ("input_len", "horizon", "hidden_size", "num_layers", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} (must be >= 1)")
        for name in (
            "max_epochs",
            "patience",
            "val_days",
            "finetune_epochs",
            "finetune_days",
            "windows_per_epoch",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} (must be >= 0)")
        if problems:
            raise ValueError("invalid model configuration: " + "; ".join(problems))

    @property
    def quantiles(self) -> tuple[float, ...]:
        """Quantile levels of the output axis Q; the median is :attr:`median_index`."""
        if self.loss == "mse":
            return (0.5,)
        a = (1.0 - self.interval) / 2.0
        return (a, 0.5, 1.0 - a)

    @property
    def median_index(self) -> int:
        return self.quantiles.index(0.5)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field (``features`` as a list, as JSON reads it back)."""
        d = asdict(self)
        d["features"] = list(self.features)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`. Unknown keys (from a newer version) are ignored so that
        old checkpoints stay loadable; missing keys take today's defaults."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values.setdefault("features", ("return",))  # saved before features: the return only
        return cls(**values)

    @classmethod
    def from_settings(cls, s: ModelSettings) -> ModelConfig:
        """Build from :class:`forecasting.settings.ModelSettings` (same field names)."""
        known = {f.name for f in fields(cls)}
        return cls(**{f.name: getattr(s, f.name) for f in fields(s) if f.name in known})


_CELL_CLASSES: dict[str, type[nn.LSTM] | type[nn.GRU] | type[nn.RNN]] = {
    "lstm": nn.LSTM,
    "gru": nn.GRU,
    "rnn": nn.RNN,
}


class SeqForecaster(nn.Module):
    """Recurrent encoder + direct multi-horizon, multi-quantile linear head, plus a linear
    skip from the whole input window to the outputs.

    The skip is an autoregression on the window (LSTNet's "highway"): a linear signal in past
    returns (autocorrelation, mean reversion of the price, a weekday pattern) is one matrix
    away, learnt in a few epochs where the recurrent path alone needed forty, and the
    recurrent path is left what is not linear. It starts at zero, so an untrained network is
    still (almost) persistence. ``forward``: ``[B, L, F] -> [B, H, Q]`` with
    ``Q = len(config.quantiles)``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        n_features = len(config.features)
        self.horizon = config.horizon
        self.n_quantiles = len(config.quantiles)
        self.cell = _CELL_CLASSES[config.cell](
            input_size=n_features,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.horizon * self.n_quantiles)
        self.skip = nn.Linear(config.input_len * n_features, config.horizon * self.n_quantiles)
        # Start at (almost) persistence: daily returns are nearly unpredictable, so an untrained
        # head that already outputs ~0 change keeps early epochs from chasing noise.
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()
            self.skip.weight.zero_()
            self.skip.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.cell(x)  # [B, L, F] -> [B, L, Hd]
        last = self.drop(out[:, -1])  # [B, L, Hd] -> [B, Hd]
        # The skip in float64: a float32 matmul over L*F inputs rounds differently with the
        # batch's size, and a ticker's forecast must not depend on which tickers share its batch.
        skip = nn.functional.linear(
            x.flatten(1).double(), self.skip.weight.double(), self.skip.bias.double()
        )  # [B, L*F] -> [B, H*Q]
        y = self.head(last).double() + skip  # [B, Hd] -> [B, H*Q]
        paths: torch.Tensor = y.view(-1, self.horizon, self.n_quantiles)  # [B, H*Q] -> [B, H, Q]
        return paths


def lstm_flops_per_sample(config: ModelConfig) -> float:
    """Forward FLOPs of one sample (multiply-add = 2 FLOPs), gates' matmuls only.

    Each LSTM layer and step computes 4 gates: ``x W_ih`` (in x 4Hd) and ``h W_hh`` (Hd x 4Hd).
    GRU has 3 gates, a plain RNN 1. The head and elementwise ops are negligible beside them.
    """
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[config.cell]
    n_features = len(config.features)
    hd = config.hidden_size
    total = 0.0
    for layer in range(config.num_layers):
        inp = n_features if layer == 0 else hd
        total += 2.0 * gates * hd * (inp + hd) * config.input_len
    total += 2.0 * (hd + config.input_len * n_features) * config.horizon * len(config.quantiles)
    return total
