"""The network's linear skip, started at the pooled ridge autoregression of the training windows.

A full fit does not start the skip (:class:`forecasting.model.lstm.SeqForecaster`) at zero but
at the least-squares answer: a ridge regression of each horizon's target on the input window,
pooled over every training window of every series, solved in closed form. Gradient descent
took tens of epochs to find the same linear signal from zero (66 Adam steps an epoch on 50
series at batch 512, each moving a weight by about the learning rate); solved directly it is
there at epoch 0, where early stopping scores it first. The tail heads start at the ridge
forecast plus a linear spread (a second ridge regression, of the absolute residual on the same
window, whose absolute-return inputs make it a volatility model) times the empirical quantiles
of the residuals in units of that spread, so the quantile loss starts at a calibrated band that
already widens after rough days, instead of a zero-width one. Only training windows are used: the validation
span stays out of the regression as it stays out of the scalers.

On a series without a linear signal the ridge coefficients are noise of order ``1/sqrt(N)``;
calibration (:func:`forecasting.model.calibration.shrink_factors`) then finds no skill and the
point forecast is persistence.
"""

from __future__ import annotations

import numpy as np
import torch

from forecasting.model.lstm import ModelConfig, SeqForecaster
from forecasting.model.trained_model import EVAL_BATCH
from forecasting.model.windows import TensorWindows

RIDGE = 0.01  # penalty per window: lambda = RIDGE * N on unit-variance inputs
RIDGE_SAMPLE = 200_000  # training windows in the regression: one pass, bounded over a market
RESIDUAL_SAMPLE = 50_000  # training windows whose residuals set the tail heads' start
SPREAD_FLOOR = 0.2  # the tail start's spread is at least this share of the mean |residual|


def start_skip(
    net: SeqForecaster,
    tw: TensorWindows,
    train_idx: torch.Tensor,
    config: ModelConfig,
    seed: int,
) -> None:
    """Set ``net.skip`` to the ridge autoregression of the targets on the input windows.

    ``train_idx [Nt]`` flat training origins. Accumulates ``X'X`` and ``X'Y`` over chunks
    (``X [B, L*F]`` inputs plus an intercept, ``Y [B, H]`` the clipped-return targets the loss
    uses), solves once, then starts quantile ``q`` of horizon ``h`` at the regression plus the
    ``q``-quantile of that horizon's residuals in units of their fitted spread."""
    if len(train_idx) == 0:
        return
    gen = torch.Generator().manual_seed(seed)
    if len(train_idx) > RIDGE_SAMPLE:
        pick = torch.randperm(len(train_idx), generator=gen)[:RIDGE_SAMPLE]
        train_idx = train_idx[pick.sort().values.to(train_idx.device)]
    n = len(train_idx)
    weight = net.skip.weight  # [H*Q, L*F]
    n_in = weight.shape[1]
    xtx = torch.zeros(n_in + 1, n_in + 1, dtype=torch.float64, device=tw.x.device)
    xty = torch.zeros(n_in + 1, config.horizon, dtype=torch.float64, device=tw.x.device)

    def design(idx: torch.Tensor) -> torch.Tensor:
        x = tw.inputs(idx).flatten(1).double()  # [B, L, F] -> [B, L*F]
        return torch.cat([x, torch.ones(len(idx), 1, dtype=x.dtype, device=x.device)], 1)

    for a in range(0, n, EVAL_BATCH):
        idx = train_idx[a : a + EVAL_BATCH]
        x = design(idx)  # [B, L*F+1]
        xtx += x.T @ x
        xty += x.T @ tw.train_targets(idx).double()  # [L*F+1, B] @ [B, H]
    penalty = torch.full((n_in + 1,), RIDGE * n, dtype=torch.float64, device=xtx.device)
    penalty[-1] = 0.0  # the intercept is not penalized
    beta = torch.linalg.solve(xtx + torch.diag(penalty), xty)  # [L*F+1, H]

    pick = torch.randperm(n, generator=gen)[:RESIDUAL_SAMPLE].to(train_idx.device)
    sample = train_idx[pick]
    xs = torch.cat([design(idx) for idx in torch.split(sample, EVAL_BATCH)])  # [Ns, L*F+1]
    ys = torch.cat([tw.train_targets(idx).double() for idx in torch.split(sample, EVAL_BATCH)])
    resid = ys - xs @ beta  # [Ns, H]
    # The spread: a ridge regression of |residual| on the same window (the absolute returns
    # among the inputs make it a linear volatility model), floored so it stays positive.
    pen = torch.diag(penalty * len(sample) / n)
    gamma = torch.linalg.solve(xs.T @ xs + pen, xs.T @ resid.abs())  # [L*F+1, H]
    spread = xs @ gamma  # [Ns, H]
    floor = SPREAD_FLOOR * resid.abs().mean(0)  # [H]
    z = resid / torch.maximum(spread, floor)  # [Ns, H] residuals in units of the spread
    qs = torch.tensor(config.quantiles, dtype=torch.float64, device=resid.device)  # [Q]
    c = torch.quantile(z, qs, dim=0).T  # [Q, H] -> [H, Q]
    n_q = len(config.quantiles)
    with torch.no_grad():
        # Output h * Q + q of the skip is horizon h, quantile q (the head's [B, H, Q] view):
        # the ridge forecast plus c[h, q] times the spread.
        coef = beta.T[:, None, :] + c[:, :, None] * gamma.T[:, None, :]  # [H, Q, L*F+1]
        coef = coef.reshape(config.horizon * n_q, n_in + 1)
        net.skip.weight.copy_(coef[:, :-1].to(weight.dtype))
        net.skip.bias.copy_(coef[:, -1].to(weight.dtype))


def ridge_coefficients(net: SeqForecaster, config: ModelConfig) -> np.ndarray:
    """The skip's weights of the median head, ``[H, L*F]`` (for inspection and tests)."""
    w = net.skip.weight.detach().cpu().double().numpy()  # [H*Q, L*F]
    coefs: np.ndarray = w.reshape(config.horizon, len(config.quantiles), -1)[:, config.median_index]
    return coefs
