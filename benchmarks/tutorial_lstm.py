"""The popular tutorial recipe, reproduced as a baseline for the accuracy benchmark.

What the widely copied Keras/PyTorch "stock price prediction with LSTM" scripts do, flaws
included, because the point is to measure the project model against what people actually run:

* min-max scaling of the close over the **whole** series, test period included (a leak: the
  scaler knows the future price range; it is part of the recipe and kept on purpose);
* ``look_back = 5`` scaled closes as the features of **one** time step, input ``[N, 1, 5]``;
* ``nn.LSTM(5, 8, num_layers=2)`` and a linear head predicting the next scaled close;
* 100 full-batch epochs of Adam at ``lr = 1e-2`` on MSE;
* multi-step forecasts made recursively: each prediction is appended to the window and fed back.

One model per series, trained on the same span of closes as the project model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn


@dataclass(frozen=True)
class TutorialConfig:
    """The recipe's hyperparameters (the tutorials' values are the defaults)."""

    look_back: int = 5
    hidden_size: int = 8
    num_layers: int = 2
    epochs: int = 100
    lr: float = 1e-2
    seed: int = 0


class TutorialNet(nn.Module):
    """``[N, 1, look_back] -> [N, 1]``: an LSTM over a single time step, then a linear head."""

    def __init__(self, config: TutorialConfig) -> None:
        super().__init__()
        self.lstm = nn.LSTM(
            input_size=config.look_back,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
        )
        self.head = nn.Linear(config.hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)  # [N, 1, look_back] -> [N, 1, Hd]
        return self.head(out[:, -1])  # [N, 1, Hd] -> [N, Hd] -> [N, 1]


@dataclass
class TutorialModel:
    """One series' fitted tutorial network and its (whole-series) min-max scaler."""

    config: TutorialConfig
    net: TutorialNet
    lo: float
    hi: float

    def scale(self, closes: np.ndarray) -> np.ndarray:
        return (np.asarray(closes, dtype=np.float64) - self.lo) / (self.hi - self.lo)

    def unscale(self, scaled: np.ndarray) -> np.ndarray:
        return np.asarray(scaled, dtype=np.float64) * (self.hi - self.lo) + self.lo


def fit_tutorial(
    whole: pd.Series, train: pd.Series, config: TutorialConfig | None = None
) -> TutorialModel:
    """Fit the recipe on ``train`` closes, with the scaler fitted on ``whole`` (the leak).

    ``whole``: every close of the series, test period included (the tutorials scale before
    splitting). ``train``: the closes to learn from, in date order.
    """
    cfg = config or TutorialConfig()
    all_closes = whole.to_numpy(dtype=np.float64)
    lo, hi = float(np.min(all_closes)), float(np.max(all_closes))
    hi = max(hi, lo + 1e-12)
    scaled = (train.to_numpy(dtype=np.float64) - lo) / (hi - lo)  # [n]
    k = cfg.look_back
    if len(scaled) <= k:
        raise ValueError(
            f"{whole.name}: {len(scaled)} training closes, the tutorial recipe needs more than "
            f"look_back={k}; pass a longer training span"
        )
    windows = np.lib.stride_tricks.sliding_window_view(scaled, k + 1)  # [n-k, k+1]
    x = torch.tensor(windows[:, :k], dtype=torch.float32).unsqueeze(1)  # [N, 1, k]
    y = torch.tensor(windows[:, k:], dtype=torch.float32)  # [N, 1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = TutorialNet(cfg)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        loss_fn = nn.MSELoss()
        net.train()
        for _ in range(cfg.epochs):  # full batch, as the tutorials do
            opt.zero_grad()
            loss = loss_fn(net(x), y)  # [N, 1] vs [N, 1]
            loss.backward()
            opt.step()
    net.eval()
    return TutorialModel(cfg, net, lo, hi)


def forecast_tutorial(model: TutorialModel, windows: np.ndarray, horizon: int) -> np.ndarray:
    """Recursive forecasts in price units from many origins at once.

    ``windows [N, look_back]``: the last ``look_back`` closes (prices) up to each origin.
    Returns ``[N, horizon]`` prices: step ``h`` sees the predictions of steps ``1..h-1``.
    """
    w = torch.tensor(model.scale(windows), dtype=torch.float32)  # [N, k]
    steps = []
    with torch.no_grad():
        for _ in range(horizon):
            p = model.net(w.unsqueeze(1))  # [N, 1, k] -> [N, 1]
            steps.append(p)
            w = torch.cat([w[:, 1:], p], dim=1)  # [N, k-1] + [N, 1] -> [N, k]
    path = torch.cat(steps, dim=1).double().numpy()  # [N, horizon]
    return model.unscale(path)
