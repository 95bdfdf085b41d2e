"""Fit, fine-tune, predict and score a :class:`~forecasting.model.lstm.SeqForecaster`.

The dataset is point-in-time: :func:`fit` first drops every observation after ``through``
(callers should already have), keeps each ticker on its own trading days, and fits each
series' scaler on its training span only — the span before the last ``val_days`` trading days,
whose targets form the validation set. Validation then serves three purposes: early stopping,
a point forecast that keeps only the part of the network's predicted change that validation
supports (its average drift removed, the rest shrunk toward persistence by the lower confidence
bound of the MSE-optimal factor — so it is never worse than persistence on validation and is
exactly persistence when validation shows no reliable skill), and split-conformal calibration
of the interval, scaled by each window's recent volatility.

Units: "normalized" errors are in target units — cumulative log-returns divided by the
series' training-span daily std for ``log_return``, min-max scaled prices for ``minmax``.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch import nn

from forecasting.model import scaling
from forecasting.model.lstm import ModelConfig, SeqForecaster
from forecasting.model.windows import Panel, TensorWindows, build_panel, origins

log = logging.getLogger(__name__)

MIN_TRAIN_WINDOWS = 20  # fewer training windows than this and a series only adds noise
GRAD_CLIP = 1.0
CALIB_TRAIN_SAMPLE = 20_000  # training windows that also inform the interval
SCALE_DAYS = 20  # recent-volatility window that scales the interval
SHRINK_Z = 2.0  # shrink to the lower ~97.5% confidence bound of the MSE-optimal factor
EVAL_BATCH = 8192
_ARCH_FIELDS = ("input_len", "horizon", "cell", "hidden_size", "num_layers", "target", "loss")


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
        return self.val_rmse / self.val_naive_rmse if self.val_naive_rmse > 0 else math.nan


@dataclass(frozen=True)
class PathForecast:
    """A forecast path from ``origin`` for horizons ``1..H`` in price units."""

    ticker: str
    origin: dt.date
    base_close: float
    yhat: np.ndarray  # [H]
    lower: np.ndarray  # [H]
    upper: np.ndarray  # [H]


@dataclass(frozen=True)
class Score:
    """Out-of-sample RMSE of the model and of persistence, in normalized units."""

    rmse: float
    naive_rmse: float
    n: int

    @property
    def ratio(self) -> float:
        """``rmse / naive_rmse``; nan when there was nothing to score."""
        if self.n == 0 or not self.naive_rmse > 0:
            return math.nan
        return self.rmse / self.naive_rmse


def device_for(config: ModelConfig) -> torch.device:
    """``"auto"``: CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def _inference_device(config: ModelConfig) -> torch.device:
    """Like :func:`device_for`, but a model trained on a GPU still forecasts on a machine
    without one."""
    device = device_for(config)
    return device if device.type != "cuda" or torch.cuda.is_available() else torch.device("cpu")


# ----------------------------------------------------------------------------- data


def _clean(s: pd.Series, through: dt.date | None, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Dates (``datetime64[D]``) and closes of one series, ascending, finite and positive,
    with everything after ``through`` dropped (defense in depth: leakage is designed out)."""
    if len(s) == 0:
        return np.empty(0, dtype="datetime64[D]"), np.empty(0)
    dates = np.asarray(pd.to_datetime(pd.Index(s.index)).values, dtype="datetime64[D]")
    closes = pd.to_numeric(pd.Series(s.to_numpy(), copy=False), errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan
    )
    ok = np.isfinite(closes) & (closes > 0)
    if through is not None:
        ok &= dates <= np.datetime64(through, "D")
    dates, closes = dates[ok], closes[ok]
    order = np.argsort(dates, kind="stable")
    dates, closes = dates[order], closes[order]
    if len(dates) > 1:
        # A duplicated date keeps its last value, as a re-sent bar would.
        last = np.r_[dates[1:] != dates[:-1], True]
        dates, closes = dates[last], closes[last]
    return dates, closes


def _as_date(d: np.datetime64) -> dt.date:
    return dt.date.fromisoformat(str(d.astype("datetime64[D]")))


# ----------------------------------------------------------------------------- losses


def pinball_loss(pred: torch.Tensor, y: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """Mean quantile (pinball) loss. ``pred [B, H, Q]``, ``y [B, H]``, ``quantiles [Q]``."""
    diff = y.unsqueeze(-1) - pred  # [B, H, 1] - [B, H, Q] -> [B, H, Q]
    return torch.maximum(quantiles * diff, (quantiles - 1.0) * diff).mean()


def _loss_fn(config: ModelConfig, device: torch.device):
    if config.loss == "mse":
        return lambda pred, y: torch.mean((pred[..., 0] - y) ** 2)  # [B, H, 1] vs [B, H]
    qs = torch.tensor(config.quantiles, dtype=torch.float32, device=device)  # [Q]
    return lambda pred, y: pinball_loss(pred, y, qs)


# ----------------------------------------------------------------------------- progress


def _use_tqdm(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return sys.stderr.isatty() and not os.environ.get("TQDM_DISABLE")


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch inside a forked RNG state, so training is reproducible and the caller's
    global RNG is left as it was."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


# ----------------------------------------------------------------------------- fit


def build_network(model: TrainedModel, device: torch.device | None = None) -> SeqForecaster:
    """The network of a trained model, weights loaded, in eval mode."""
    net = SeqForecaster(model.config)
    net.load_state_dict(model.state_dict)
    return net.to(device or torch.device("cpu")).eval()


def _forward(net: nn.Module, x: torch.Tensor, batch: int = EVAL_BATCH) -> torch.Tensor:
    """No-grad forward in chunks. ``[N, L, 1] -> [N, H, Q]`` (float64, CPU)."""
    net.eval()
    outs = []
    with torch.no_grad():
        for a in range(0, len(x), batch):
            outs.append(net(x[a : a + batch]).double().cpu())  # [b, H, Q]
    if not outs:
        return torch.empty(0)
    return torch.cat(outs)


@dataclass(frozen=True)
class Dataset:
    """The point-in-time training set: the panel plus training and validation origins."""

    panel: Panel
    train_idx: np.ndarray  # [Nt] flat origins whose targets all precede the validation span
    val_idx: np.ndarray  # [Nv] flat origins whose targets lie in the last val_days
    scalers: dict[str, dict[str, float]]


def build_dataset(
    series: Mapping[str, pd.Series],
    config: ModelConfig,
    through: dt.date,
    *,
    init: TrainedModel | None = None,
) -> Dataset:
    """Cut every series at ``through``, keep its last ``history_days`` (``finetune_days`` when
    fine-tuning from ``init``) plus ``input_len`` of context, fit its scaler on the span before
    the last ``val_days`` (or reuse ``init``'s) and index the windows. Short series are skipped
    with a log line."""
    L, H, V = config.input_len, config.horizon, config.val_days
    days = config.finetune_days if init is not None else config.history_days
    min_len = L + H + V + MIN_TRAIN_WINDOWS
    closes: dict[str, np.ndarray] = {}
    dates: dict[str, np.ndarray] = {}
    scalers: dict[str, dict[str, float]] = {}
    for tk, s in series.items():
        d, c = _clean(s, through, tk)
        if days > 0:
            d, c = d[-(days + L) :], c[-(days + L) :]
        if len(c) < min_len:
            log.info(
                "skipping %s: %d usable closes through %s, need %d (input_len+horizon+val_days+%d)",
                tk,
                len(c),
                through,
                min_len,
                MIN_TRAIN_WINDOWS,
            )
            continue
        fit_end = len(c) - V  # exclusive; the scaler never sees the validation span
        if init is not None and tk in init.scalers:
            scalers[tk] = dict(init.scalers[tk])
        else:
            scalers[tk] = scaling.fit_scaler(c[:fit_end], config.target, name=tk)
        closes[tk], dates[tk] = c, d
    if not closes:
        raise ValueError(
            f"no series has enough history through {through}: each needs at least {min_len} "
            "closes; ingest more history or lower input_len/val_days"
        )
    panel = build_panel(closes, dates, scalers, config.target)
    n = panel.lengths  # [S]
    val_start = n - V  # [S] local position of the first validation target
    train_idx = origins(panel, L, H, np.zeros_like(n), val_start - 1 - H)  # targets < val_start
    val_idx = origins(panel, L, H, val_start - 1, n - 1)  # targets within the validation span

    return Dataset(panel, train_idx, val_idx, scalers)


def fit(
    series: Mapping[str, pd.Series],
    config: ModelConfig,
    through: dt.date,
    *,
    init: TrainedModel | None = None,
    progress: bool | None = None,
) -> TrainedModel:
    """Train a model on closes up to and including ``through``.

    ``series``: closes per ticker indexed by trading date (anything after ``through`` is
    dropped here as well). ``init=None`` trains from scratch on each series' last
    ``history_days`` (+ ``input_len`` of context); with ``init`` it fine-tunes: warm start from
    ``init``'s weights and scalers, on the last ``finetune_days`` only, with ``finetune_lr``
    for ``finetune_epochs``. The starting weights are epoch 0 of the history, so training never
    returns weights worse on validation than it started from. Series too short for
    ``input_len + horizon + val_days + 20`` observations are skipped with a log line.

    ``config.per_ticker`` models are fitted one ticker at a time: see :func:`fit_per_ticker`.
    """
    started = time.perf_counter()
    if config.per_ticker and len(series) > 1:
        raise ValueError(
            f"config.per_ticker=True but fit() got {len(series)} series; a per-ticker model "
            "has one series. Call fit_per_ticker(...) to fit one model per ticker."
        )
    if config.val_days < config.horizon:
        raise ValueError(
            f"val_days={config.val_days} < horizon={config.horizon}: validation needs at least "
            "one full forecast path; raise val_days"
        )
    if init is not None:
        diff = [f for f in _ARCH_FIELDS if getattr(init.config, f) != getattr(config, f)]
        if diff:
            raise ValueError(
                f"cannot fine-tune: the model trained through {init.trained_through} differs "
                f"from the config in {diff}; run a full retrain (`forecasting train --full`)"
            )
    ds = build_dataset(series, config, through, init=init)
    panel, train_idx, val_idx, scalers = ds.panel, ds.train_idx, ds.val_idx, ds.scalers
    L, H = config.input_len, config.horizon

    device = device_for(config)
    lr = config.finetune_lr if init is not None else config.lr
    epochs = config.finetune_epochs if init is not None else config.max_epochs
    with _seeded(config.seed, device):
        net = SeqForecaster(config)
        if init is not None:
            net.load_state_dict(init.state_dict)
        net.to(device)
        history, best_state = _train(
            net, panel, train_idx, val_idx, config, lr, epochs, device, progress
        )
        net.load_state_dict(best_state)
        tw = TensorWindows(panel, L, H, device)
        vidx = torch.from_numpy(val_idx).to(device)
        xv = tw.inputs(vidx)  # [Nv, L, 1]
        out = _forward(net, xv).numpy()  # [Nv, H, Q]
        scale = recent_scale(xv[..., 0].cpu().numpy(), config.target)  # [Nv]
        y = tw.targets(vidx).double().cpu().numpy()  # [Nv, H]
        naive = tw.naive(vidx).double().cpu().numpy()  # [Nv, H]
        # A seeded sample of training windows bounds the cost of the second calibration set.
        sample = np.random.default_rng(config.seed).permutation(train_idx)[:CALIB_TRAIN_SAMPLE]
        tidx = torch.from_numpy(np.sort(sample)).to(device)
        xt = tw.inputs(tidx)  # [Ns, L, 1]
        train_calib = (
            _forward(net, xt).numpy(),  # [Ns, H, Q]
            tw.targets(tidx).double().cpu().numpy(),  # [Ns, H]
            tw.naive(tidx).double().cpu().numpy(),  # [Ns, H]
            recent_scale(xt[..., 0].cpu().numpy(), config.target),  # [Ns]
        )
    flat_dates = np.concatenate(panel.dates).astype(np.int64)  # [N] day numbers
    calibration = calibrate(
        out, y, naive, config, groups=flat_dates[val_idx], scale=scale, train=train_calib
    )
    point = apply_calibration(out, naive, calibration, config, scale)[0]
    model = TrainedModel(
        config=config,
        state_dict={k: v.detach().cpu().clone() for k, v in best_state.items()},
        scalers=scalers,
        calibration=calibration,
        tickers=list(panel.tickers),
        trained_through=through,
        val_rmse=_rmse(point - y),
        val_naive_rmse=_rmse(naive - y),
        history=history,
        train_seconds=time.perf_counter() - started,
        n_train_samples=len(train_idx),
    )
    log.info(
        "trained %s model on %d series (%d windows) through %s in %.1fs: val rmse %.4f, "
        "naive %.4f, ratio %.4f (unshrunk %.4f), interval coverage on validation %.3f",
        config.cell,
        len(panel.tickers),
        len(train_idx),
        through,
        model.train_seconds,
        model.val_rmse,
        model.val_naive_rmse,
        model.val_ratio,
        calibration["val_rmse_raw"] / model.val_naive_rmse if model.val_naive_rmse else math.nan,
        calibration["val_coverage"],
    )
    return model


def fit_per_ticker(
    series: Mapping[str, pd.Series],
    config: ModelConfig,
    through: dt.date,
    *,
    init: Mapping[str, TrainedModel] | None = None,
    progress: bool | None = None,
) -> dict[str, TrainedModel]:
    """One model per ticker (``scope=<ticker>`` in the registry). Tickers too short to fit are
    left out; ``init`` maps tickers to the models to fine-tune from."""
    cfg = replace(config, per_ticker=True)
    models: dict[str, TrainedModel] = {}
    for tk, s in series.items():
        try:
            models[tk] = fit({tk: s}, cfg, through, init=(init or {}).get(tk), progress=progress)
        except ValueError as exc:
            log.warning("no per-ticker model for %s through %s: %s", tk, through, exc)
    return models


def _train(
    net: SeqForecaster,
    panel: Panel,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    config: ModelConfig,
    lr: float,
    epochs: int,
    device: torch.device,
    progress: bool | None,
) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
    """Adam + ReduceLROnPlateau + gradient clipping + early stopping on validation loss.

    The starting weights are scored first (epoch 0): a fresh head starts at persistence and a
    fine-tune starts at its parent, so training can only return weights at least as good on
    validation as where it began. Returns the history and the best weights."""
    tw = TensorWindows(panel, config.input_len, config.horizon, device)
    tidx = torch.from_numpy(train_idx).to(device)  # [Nt]
    vidx = torch.from_numpy(val_idx).to(device)  # [Nv]
    loss_fn = _loss_fn(config, device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=0.5, patience=max(1, config.patience // 2)
    )
    gen = torch.Generator().manual_seed(config.seed)  # shuffling order, independent of device
    params = [p for p in net.parameters() if p.requires_grad]
    bs = config.batch_size

    def val_loss() -> float:
        net.eval()
        total = torch.zeros((), dtype=torch.float64, device=device)
        with torch.no_grad():
            for a in range(0, len(vidx), EVAL_BATCH):
                idx = vidx[a : a + EVAL_BATCH]
                total += loss_fn(net(tw.inputs(idx)), tw.targets(idx)).double() * len(idx)
        return float(total) / max(len(vidx), 1)

    history: list[dict[str, float]] = []
    best_state = copy.deepcopy(net.state_dict())
    best = val_loss()
    history.append({"epoch": 0, "train_loss": math.nan, "val_loss": best, "lr": lr})
    log.info(
        "training on %d windows (%d for validation), up to %d epochs; starting val loss %.5f",
        len(tidx),
        len(vidx),
        epochs,
        best,
    )
    bad = 0
    bar = None
    if _use_tqdm(progress) and epochs > 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc="training", unit="epoch", leave=False)
    try:
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            net.train()
            perm = torch.randperm(len(tidx), generator=gen).to(device)  # [Nt]
            total = torch.zeros((), dtype=torch.float64, device=device)
            for a in range(0, len(tidx), bs):
                idx = tidx[perm[a : a + bs]]  # [B] flat origins
                pred = net(tw.inputs(idx))  # [B, L, 1] -> [B, H, Q]
                loss = loss_fn(pred, tw.train_targets(idx))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(params, GRAD_CLIP)
                opt.step()
                total += loss.detach().double() * len(idx)
            train_loss = float(total) / max(len(tidx), 1)  # float() waits for the device
            t1 = time.perf_counter()
            vl = val_loss()
            sched.step(vl)
            seconds = time.perf_counter() - t0
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "val_loss": vl,
                    "lr": opt.param_groups[0]["lr"],
                    "seconds": seconds,  # whole epoch
                    "train_seconds": t1 - t0,  # the optimization loop alone
                }
            )
            if bar is not None:
                bar.set_postfix(train=f"{train_loss:.4f}", val=f"{vl:.4f}")
                bar.update(1)
            else:
                log.info(
                    "epoch %d/%d: train loss %.5f, val loss %.5f, lr %.2g, %.1fs (%d samples/s)",
                    epoch,
                    epochs,
                    train_loss,
                    vl,
                    opt.param_groups[0]["lr"],
                    seconds,
                    len(tidx) / seconds if seconds > 0 else 0,
                )
            if vl < best - 1e-7:
                best, bad = vl, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                bad += 1
                if bad > config.patience:
                    log.info("early stop after epoch %d: best val loss %.5f", epoch, best)
                    break
    finally:
        if bar is not None:
            bar.close()
    return history, best_state


# ----------------------------------------------------------------------------- calibration


def _rmse(err: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(err)))) if err.size else math.nan


def _conformal_level(n: int, coverage: float) -> float:
    """Finite-sample conformal quantile level ``ceil((n+1) * coverage) / n``, capped at 1."""
    return min(1.0, math.ceil((n + 1) * coverage) / max(n, 1))


def shrink_factors(
    d: np.ndarray, e: np.ndarray, groups: np.ndarray | None = None, z: float = SHRINK_Z
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-horizon factor ``a`` in ``[0, 1]`` for ``point = naive + a * d``.

    ``d [N, H]`` is the predicted change from persistence, ``e [N, H]`` the actual one. The
    least-squares ``a_ls = <d, e> / <d, d>`` minimizes validation MSE, but validation is short
    and its windows are far from independent: every series moves with the market on the same
    day, and the h-day targets of consecutive origins overlap. So ``a_ls`` is noisy, and a
    model that merely caught the validation period's trend gets a large factor and then loses
    to persistence out of sample. We therefore use the lower confidence bound
    ``a = clip(a_ls - z * se, 0, 1)``, with ``se`` from the per-date sums (``groups``: one
    label per window, its origin date) and a Bartlett (Newey-West) correction for ``h`` days of
    overlap. No evidence of skill -> ``a = 0`` -> exactly persistence.
    Returns ``(a, a_ls, se)``, each ``[H]``.
    """
    n, horizon = d.shape
    if n == 0:
        zeros = np.zeros(horizon)
        return zeros, zeros, zeros
    if groups is None:
        groups = np.arange(n)
    _, g = np.unique(groups, return_inverse=True)  # [N] group number, in date order
    n_groups = int(g.max()) + 1
    num = np.zeros((n_groups, horizon))
    den = np.zeros((n_groups, horizon))
    np.add.at(num, g, d * e)  # [G, H] per-date sums
    np.add.at(den, g, d * d)
    total_den = np.maximum(den.sum(0), 1e-12)  # [H]
    a_ls = num.sum(0) / total_den  # [H]
    u = num - a_ls * den  # [G, H] per-date score of the LS equation
    var = (u * u).sum(0)  # [H]
    for h in range(horizon):
        for lag in range(1, min(h + 1, n_groups - 1) + 1):  # h-day targets overlap h-1 days
            w = 1.0 - lag / (h + 2)
            var[h] += 2.0 * w * (u[lag:, h] * u[:-lag, h]).sum()
    se = np.sqrt(np.maximum(var, 0.0)) / total_den  # [H]
    return np.clip(a_ls - z * se, 0.0, 1.0), a_ls, se


def recent_scale(x: np.ndarray, target: str, days: int = SCALE_DAYS) -> np.ndarray:
    """Recent volatility of each input window, in target units per day. ``[N, L] -> [N]``.

    Root mean square of the last ``days`` normalized returns (for ``minmax``, of the daily
    changes of the scaled level). Interval widths are proportional to it, so they widen as soon
    as the market gets rougher than it was on validation.
    """
    x = np.asarray(x, dtype=np.float64)
    steps = x[:, -days:] if target == "log_return" else np.diff(x[:, -(days + 1) :], axis=1)
    return np.sqrt(np.mean(np.square(steps), axis=1) + 1e-8)  # [N]


def calibrate(
    out: np.ndarray,
    y: np.ndarray,
    naive: np.ndarray,
    config: ModelConfig,
    groups: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    train: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Fit the point forecast's drift and shrink and the interval, per horizon, on validation.

    ``out [N, H, Q]`` raw network outputs, ``y [N, H]`` actual targets, ``naive [N, H]``,
    ``groups [N]`` each window's origin date, ``scale [N]`` its :func:`recent_scale`.

    Point: ``naive + a_h * (median - naive - drift_h)``. ``drift_h`` is the mean predicted change
    on validation: the network's average view of the market's direction, learnt from the
    training years. On real data it is what fails out of sample (A-shares through 2017-10:
    validation favoured it with a least-squares factor of 1, the next 250 days wanted -1.5 to
    -2), so it is removed, and only the window-to-window variation is kept, shrunk by
    :func:`shrink_factors`. Interval: split-conformal quantiles of validation residuals divided
    by the recent volatility of each window, times that of the window being forecast. When
    ``train = (out, y, naive, scale)`` of (a sample of) training windows is given, each bound is
    the wider of the validation and the training quantile: sixty validation days are one
    regime, and a calm one makes a band that the next turbulent quarter breaks (CSI indices,
    validation late 2021, tested on 2022: 0.69 coverage from validation alone, 0.81 with the
    wider bound; A-shares 2017/18: 0.76 -> 0.80). Training residuals are in-sample and can only
    be too narrow, so taking the wider bound never trusts them more than validation.
    """
    cfg = config
    n = len(y)
    if scale is None:
        scale = np.ones(n)
    out = np.sort(out, axis=-1)  # [N, H, Q]; quantile heads may cross
    m = out[..., cfg.median_index]  # [N, H]
    change = m - naive  # [N, H] predicted change from persistence
    drift = change.mean(axis=0) if n else np.zeros(cfg.horizon)  # [H]
    shrink, a_ls, se = shrink_factors(change - drift, y - naive, groups)
    if not cfg.shrink:
        drift, shrink = np.zeros(cfg.horizon), np.ones(cfg.horizon)
    point = naive + shrink * (change - drift)  # [N, H]
    r = (y - point) / scale[:, None]  # [N, H] residuals in units of recent volatility
    hi_level = _conformal_level(n, (1.0 + cfg.interval) / 2.0)
    q_lo = np.quantile(r, 1.0 - hi_level, axis=0) if n else np.zeros(cfg.horizon)  # [H]
    q_hi = np.quantile(r, hi_level, axis=0) if n else np.zeros(cfg.horizon)  # [H]
    if train is not None and len(train[1]):
        t_out, t_y, t_naive, t_scale = train
        t_m = np.sort(t_out, axis=-1)[..., cfg.median_index]  # [Nt, H]
        t_r = (t_y - (t_naive + shrink * (t_m - t_naive - drift))) / t_scale[:, None]  # [Nt, H]
        a = (1.0 - cfg.interval) / 2.0
        q_lo = np.minimum(q_lo, np.quantile(t_r, a, axis=0))
        q_hi = np.maximum(q_hi, np.quantile(t_r, 1.0 - a, axis=0))
    calib: dict[str, Any] = {
        "method": "scaled_residual",
        "interval": cfg.interval,
        "scale_days": SCALE_DAYS,
        "drift": drift.tolist(),
        "shrink": shrink.tolist(),
        "shrink_ls": a_ls.tolist(),
        "shrink_se": se.tolist(),
        "q_lo": q_lo.tolist(),
        "q_hi": q_hi.tolist(),
        "n_val": int(n),
        "val_rmse_raw": _rmse(m - y),
    }
    _, lower, upper = apply_calibration(out, naive, calib, cfg, scale)
    calib["val_coverage"] = float(np.mean((y >= lower) & (y <= upper))) if n else math.nan
    return calib


def apply_calibration(
    out: np.ndarray,
    naive: np.ndarray,
    calib: Mapping[str, Any],
    config: ModelConfig,
    scale: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point, lower and upper in target units from raw outputs. ``[N, H, Q] -> 3 x [N, H]``.

    ``scale [N]`` is each window's :func:`recent_scale`. Guarantees ``lower <= point <= upper``.
    """
    out = np.sort(out, axis=-1)  # [N, H, Q]
    m = out[..., config.median_index]  # [N, H]
    drift = np.asarray(calib["drift"], dtype=np.float64)  # [H]
    shrink = np.asarray(calib["shrink"], dtype=np.float64)  # [H]
    point = naive + shrink * (m - naive - drift)  # [N, H]
    sc = (np.ones(len(m)) if scale is None else np.asarray(scale, dtype=np.float64))[:, None]
    lower = point + np.asarray(calib["q_lo"], dtype=np.float64) * sc  # [N, H]
    upper = point + np.asarray(calib["q_hi"], dtype=np.float64) * sc
    return point, np.minimum(lower, point), np.maximum(upper, point)


# ----------------------------------------------------------------------------- predict / score


def _scaler_for(
    model: TrainedModel, ticker: str, past_closes: np.ndarray
) -> dict[str, float] | None:
    """The stored scaler, or — for a ticker the model never saw — one fitted on the closes
    passed in, which are the ticker's own past (the caller cuts them at the forecast origin or
    at the model's cutoff). ``None`` when there is too little to fit."""
    params = model.scalers.get(ticker)
    if params is not None:
        return params
    if len(past_closes) < 2:
        return None
    return scaling.fit_scaler(past_closes, model.config.target, name=ticker)


def predict(model: TrainedModel, series: Mapping[str, pd.Series]) -> dict[str, PathForecast]:
    """Forecast paths from the last ``input_len`` observations of each series.

    The caller cuts each series at the forecast origin. ``base_close`` is the last close and the
    ``log_return`` paths are ``base_close * exp(cumulative predicted log-return)``. All tickers go
    through one batched forward pass. Tickers with fewer than ``input_len + 1`` closes are
    omitted. A ticker without a stored scaler (not in the training set of a global model) gets a
    scaler fitted on the closes passed in, i.e. its own past.
    """
    cfg = model.config
    L = cfg.input_len
    keep: list[tuple[str, dt.date, float, dict[str, float]]] = []
    xs: list[np.ndarray] = []
    naive: list[float] = []
    for tk, s in series.items():
        d, c = _clean(s, None, tk)
        if len(c) < L + 1:
            log.debug("no forecast for %s: %d closes, need %d", tk, len(c), L + 1)
            continue
        params = _scaler_for(model, tk, c)
        if params is None:
            continue
        tail = c[-(L + 1) :]  # [L+1]
        xs.append(scaling.inputs(tail, params, cfg.target)[1:])  # [L]
        naive.append(
            0.0
            if cfg.target == "log_return"
            else float(scaling.levels(tail[-1:], params, cfg.target)[0])
        )
        keep.append((tk, _as_date(d[-1]), float(c[-1]), params))
    if not keep:
        return {}
    x = torch.from_numpy(np.stack(xs).astype(np.float32)).unsqueeze(-1)  # [S, L, 1]
    device = _inference_device(cfg)
    out = _forward(build_network(model, device), x.to(device)).numpy()  # [S, H, Q]
    nv = np.repeat(np.asarray(naive)[:, None], cfg.horizon, axis=1)  # [S, H]
    scale = recent_scale(x[..., 0].numpy(), cfg.target)  # [S]
    point, lower, upper = apply_calibration(out, nv, model.calibration, cfg, scale)
    result = {}
    for i, (tk, origin, base, params) in enumerate(keep):
        yhat = scaling.to_price(point[i], base, params, cfg.target)  # [H]
        lo = scaling.to_price(lower[i], base, params, cfg.target)
        hi = scaling.to_price(upper[i], base, params, cfg.target)
        result[tk] = PathForecast(
            tk, origin, base, yhat, np.minimum(lo, yhat), np.maximum(hi, yhat)
        )
    return result


def score(
    model: TrainedModel,
    series: Mapping[str, pd.Series],
    *,
    after: dt.date,
    through: dt.date,
    window: int,
) -> Score:
    """Out-of-sample RMSE of the model vs persistence in normalized units.

    Origins ``o >= after`` (normally ``model.trained_through``); targets ``o+h`` for every
    ``h = 1..H``, counted on each series' own trading days, that fall among the newest
    ``window`` trading days of the series in ``(after, through]``. Persistence (no change) is
    scored on exactly the same (origin, horizon) pairs. One batched forward pass.
    """
    cfg = model.config
    L, H = cfg.input_len, cfg.horizon
    after64 = np.datetime64(after, "D")
    xs, ys, nvs, masks = [], [], [], []
    for tk, s in series.items():
        d, c = _clean(s, through, tk)
        n = len(c)
        if n < L + 2:
            continue
        params = _scaler_for(model, tk, c[d <= after64])
        if params is None:
            continue
        first_origin = max(int(np.searchsorted(d, after64, "left")), L)
        first_target = max(int(np.searchsorted(d, after64, "right")), n - window)
        if first_origin > n - 2 or first_target > n - 1:
            continue
        t = np.arange(first_origin, n - 1)  # [T] origins with at least one target
        x = scaling.inputs(c, params, cfg.target)  # [n]
        lv = np.concatenate([scaling.levels(c, params, cfg.target), np.full(H, np.nan)])
        lvw = sliding_window_view(lv, H + 1)[t]  # [T, H+1]
        pos = t[:, None] + np.arange(1, H + 1)  # [T, H] target positions
        mask = (pos <= n - 1) & (pos >= first_target)  # [T, H]
        keep = mask.any(axis=1)
        t, lvw, mask = t[keep], lvw[keep], mask[keep]
        xs.append(sliding_window_view(x, L)[t - L + 1])  # [T, L]
        if cfg.target == "log_return":
            ys.append(lvw[:, 1:] - lvw[:, :1])  # [T, H]
            nvs.append(np.zeros((len(t), H)))
        else:
            ys.append(lvw[:, 1:])
            nvs.append(np.repeat(lvw[:, :1], H, axis=1))
        masks.append(mask)
    if not xs:
        return Score(math.nan, math.nan, 0)
    x_all = torch.from_numpy(np.concatenate(xs).astype(np.float32)).unsqueeze(-1)  # [N, L, 1]
    device = _inference_device(cfg)
    out = _forward(build_network(model, device), x_all.to(device)).numpy()  # [N, H, Q]
    y, nv, mask = np.concatenate(ys), np.concatenate(nvs), np.concatenate(masks)  # [N, H]
    scale = recent_scale(x_all[..., 0].numpy(), cfg.target)  # [N]
    point = apply_calibration(out, nv, model.calibration, cfg, scale)[0]
    y = np.where(mask, y, 0.0)  # masked targets may be NaN (past the series end)
    # An h-step log-return has ~sqrt(h) times the spread of a one-step one; dividing by sqrt(h)
    # puts every horizon in the same unit (about 1 on the training span), so an absolute
    # threshold means the same thing whatever H is. The ratio to naive is unaffected.
    per_h = np.sqrt(np.arange(1, H + 1)) if cfg.target == "log_return" else np.ones(H)  # [H]
    err, nerr = ((point - y) / per_h)[mask], ((nv - y) / per_h)[mask]
    return Score(_rmse(err), _rmse(nerr), int(mask.sum()))
