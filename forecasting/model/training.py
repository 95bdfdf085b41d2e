"""Fit and fine-tune a :class:`~forecasting.model.lstm.SeqForecaster`.

The dataset is point-in-time: :func:`fit` first drops every observation after ``through``
(callers should already have), keeps each ticker on its own trading days, and fits each
series' scaler on its training span only — the span before the last ``val_days`` trading days,
whose targets form the validation set. Validation then serves three purposes: early stopping,
the point forecast's shrink toward persistence and the interval's split-conformal calibration
(both in :mod:`forecasting.model.calibration`).
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from forecasting.data.price_limits import board_of
from forecasting.errors import InputError
from forecasting.model.calibration import (
    apply_calibration,
    calibrate,
    gate_rows,
    recent_scale,
    rmse,
)
from forecasting.model.features import fit_feature_scaler
from forecasting.model.linear_start import start_skip
from forecasting.model.lstm import ModelConfig, SeqForecaster
from forecasting.model.metrics import ratio_to_naive
from forecasting.model.sampling import WindowSampler
from forecasting.model.trained_model import (
    EVAL_BATCH,
    TrainedModel,
    device_for,
    forward,
    load_weights,
)
from forecasting.model.volatility import (
    fit_har,
    fit_series_factors,
    har_sigma,
    window_variance,
)
from forecasting.model.windows import (
    Bars,
    Panel,
    SeriesLike,
    TensorWindows,
    build_panel,
    clean_bars,
    origins,
)

log = logging.getLogger(__name__)

MIN_TRAIN_WINDOWS = 20  # fewer training windows than this and a series only adds noise
GRAD_CLIP = 1.0
CALIB_TRAIN_SAMPLE = 20_000  # training windows that also inform the interval
_ARCH_FIELDS = (
    "input_len",
    "horizon",
    "cell",
    "hidden_size",
    "num_layers",
    "target",
    "loss",
    "features",
)


# ----------------------------------------------------------------------------- losses


def pinball_loss(pred: torch.Tensor, y: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """Mean quantile (pinball) loss. ``pred [B, H, Q]``, ``y [B, H]``, ``quantiles [Q]``."""
    diff = y.unsqueeze(-1) - pred  # [B, H, 1] - [B, H, Q] -> [B, H, Q]
    return torch.maximum(quantiles * diff, (quantiles - 1.0) * diff).mean()


def horizon_weights(config: ModelConfig, device: torch.device) -> torch.Tensor:
    """``[H]`` factors that put every horizon in one unit: an h-day log-return has about
    ``sqrt(h)`` times the spread of a one-day one, so without them the longest horizons would
    dominate the loss and the one-day signal would be the last thing learnt."""
    h = torch.arange(1, config.horizon + 1, dtype=torch.float32, device=device)
    return h.rsqrt() if config.target == "log_return" else torch.ones_like(h)


def _loss_fn(
    config: ModelConfig, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    w = horizon_weights(config, device)  # [H]
    if config.loss == "mse":
        return lambda pred, y: torch.mean(((pred[..., 0] - y) * w) ** 2)  # [B, H, 1] vs [B, H]
    qs = torch.tensor(config.quantiles, dtype=torch.float32, device=device)  # [Q]
    return lambda pred, y: pinball_loss(pred * w[:, None], y * w, qs)


def _point_loss(config: ModelConfig, device: torch.device) -> Callable[..., torch.Tensor]:
    """Squared error of the point head (the median), horizon-weighted: what the pipeline uses,
    so what early stopping and the learning-rate schedule watch. ``[B, H, Q], [B, H] -> []``"""
    w = horizon_weights(config, device)
    m = config.median_index
    return lambda pred, y: torch.mean(((pred[..., m] - y) * w) ** 2)


# ----------------------------------------------------------------------------- progress

#: Seconds between redraws of the training bar (tqdm's default).
BAR_INTERVAL_S = 0.1


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


@dataclass(frozen=True)
class Dataset:
    """The point-in-time training set: the panel plus training and validation origins."""

    panel: Panel
    train_idx: np.ndarray  # [Nt] flat origins whose targets all precede the validation span
    val_idx: np.ndarray  # [Nv] flat origins whose targets lie in the last val_days
    scalers: dict[str, dict[str, float]]


def build_dataset(
    series: Mapping[str, SeriesLike],
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
    bars: dict[str, Bars] = {}
    scalers: dict[str, dict[str, float]] = {}
    for tk, s in series.items():
        b = clean_bars(s, through)
        if days > 0:
            b = b.tail(days + L)
        d, c = b.dates, b.close
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
            f = b.head(fit_end)
            scalers[tk] = fit_feature_scaler(
                f.close, f.dates, config.target, name=tk, high=f.high, low=f.low, vol=f.vol
            )
        closes[tk], dates[tk], bars[tk] = c, d, b
    if not closes:
        raise InputError(
            f"no series has enough history through {through}: each needs at least {min_len} "
            "closes; ingest more history or lower input_len/val_days"
        )
    panel = build_panel(closes, dates, scalers, config.target, config.features, bars)
    n = panel.lengths  # [S]
    val_start = n - V  # [S] local position of the first validation target
    train_idx = origins(panel, L, H, np.zeros_like(n), val_start - 1 - H)  # targets < val_start
    val_idx = origins(panel, L, H, val_start - 1, n - 1)  # targets within the validation span

    return Dataset(panel, train_idx, val_idx, scalers)


def fit(
    series: Mapping[str, SeriesLike],
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
        raise InputError(
            f"val_days={config.val_days} < horizon={config.horizon}: validation needs at least "
            "one full forecast path; raise val_days"
        )
    if init is not None:
        diff = [f for f in _ARCH_FIELDS if getattr(init.config, f) != getattr(config, f)]
        if diff:
            raise InputError(
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
            load_weights(net, init.state_dict)
        net.to(device)
        tw = TensorWindows(panel, L, H, device)
        if init is None:
            start_skip(net, tw, torch.from_numpy(train_idx).to(device), config, config.seed)
        history, best_state = _train(
            net, panel, train_idx, val_idx, config, lr, epochs, device, progress
        )
        net.load_state_dict(best_state)
        vidx = torch.from_numpy(val_idx).to(device)
        xv = tw.inputs(vidx)  # [Nv, L, 1]
        out = forward(net, xv).numpy()  # [Nv, H, Q]
        scale = recent_scale(xv[..., 0].cpu().numpy(), config.target)  # [Nv]
        y = tw.targets(vidx).double().cpu().numpy()  # [Nv, H]
        naive = tw.naive(vidx).double().cpu().numpy()  # [Nv, H]
        # A seeded sample of training windows bounds the cost of the second calibration set.
        sample = np.random.default_rng(config.seed).permutation(train_idx)[:CALIB_TRAIN_SAMPLE]
        tidx = torch.from_numpy(np.sort(sample)).to(device)
        xt = tw.inputs(tidx)  # [Ns, L, 1]
        train_calib = (
            forward(net, xt).numpy(),  # [Ns, H, Q]
            tw.targets(tidx).double().cpu().numpy(),  # [Ns, H]
            tw.naive(tidx).double().cpu().numpy(),  # [Ns, H]
            recent_scale(xt[..., 0].cpu().numpy(), config.target),  # [Ns]
        )
        xt_np, xv_np = xt.cpu().numpy(), xv.cpu().numpy()
    flat_dates = np.concatenate(panel.dates).astype(np.int64)  # [N] day numbers
    series_of = np.searchsorted(panel.offsets, val_idx, side="right") - 1  # [Nv]
    vol: tuple[np.ndarray, np.ndarray | None] | None = None
    har: dict[str, object] = {}
    if config.target == "log_return" and len(config.quantiles) > 1 and len(sample):
        # Each training window's next H days' variance proxies, for the HAR fit.
        v_all = window_variance(panel.inputs[None], config.features)[0]  # [N]
        ahead = np.lib.stride_tricks.sliding_window_view(v_all, H + 1)[np.sort(sample)][:, 1:]
        fitted = fit_har(xt_np, ahead, config.features)
        t_series = np.searchsorted(panel.offsets, np.sort(sample), side="right") - 1  # [Ns]
        t_sigma = har_sigma(xt_np, {"har": fitted}, config.features)
        if t_sigma is not None:
            t_err = train_calib[1] - train_calib[2]  # [Ns, H] training errors of persistence
            fitted["series_factor"] = fit_series_factors(t_sigma, t_err, t_series, panel.tickers)
        har = {"har": fitted}
        t_tickers = [panel.tickers[i] for i in t_series]
        v_tickers = [panel.tickers[i] for i in series_of]
        sigma = har_sigma(xv_np, har, config.features, v_tickers)
        if sigma is not None:
            vol = (sigma, har_sigma(xt_np, har, config.features, t_tickers))
    calibration = calibrate(
        out,
        y,
        naive,
        config,
        groups=flat_dates[val_idx],
        scale=scale,
        train=train_calib,
        vol=vol,
        series=series_of,
        classes=[board_of(tk) for tk in panel.tickers],
    )
    if vol is not None:
        calibration.update(har)
    gate = gate_rows([panel.tickers[i] for i in series_of], calibration, H)  # [Nv, H]
    val_vol = None if vol is None else vol[0]
    point = apply_calibration(out, naive, calibration, config, scale, vol=val_vol, gate=gate)[0]
    model = TrainedModel(
        config=config,
        state_dict={k: v.detach().cpu().clone() for k, v in best_state.items()},
        scalers=scalers,
        calibration=calibration,
        tickers=list(panel.tickers),
        trained_through=through,
        val_rmse=rmse(point - y),
        val_naive_rmse=rmse(naive - y),
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
        ratio_to_naive(calibration["val_rmse_raw"], model.val_naive_rmse),
        calibration["val_coverage"],
    )
    return model


def fit_per_ticker(
    series: Mapping[str, SeriesLike],
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
    """Adam + ReduceLROnPlateau + gradient clipping + early stopping on the validation loss of
    the point forecast (``val_point``: the median's squared error, horizon-weighted).

    The training loss (pinball over the quantiles) is dominated by the tail heads, and it keeps
    improving while the median has not yet moved off persistence; stopping or halving the rate
    on it ended training with a median 40-80x too small on a panel with a known signal. So the
    schedule and the stop watch the number the forecast uses, with patience enough for a weak
    signal to appear. The starting weights are scored first (epoch 0): a fresh head starts at
    persistence and a fine-tune at its parent, so training never returns weights worse on
    validation than where it began. Returns the history and the best weights."""
    tw = TensorWindows(panel, config.input_len, config.horizon, device)
    tidx = torch.from_numpy(train_idx).to(device)  # [Nt]
    vidx = torch.from_numpy(val_idx).to(device)  # [Nv]
    # A fixed budget of windows per epoch, stratified by ticker (forecasting.model.sampling);
    # early stopping then scores one fixed sample of validation windows of the same size.
    sampler = None
    if config.windows_per_epoch:
        sampler = WindowSampler(panel, train_idx, config.windows_per_epoch, config.seed)
        tidx = torch.from_numpy(sampler.epoch(1)).to(device)  # [budget]
        val_sample = WindowSampler(panel, val_idx, config.windows_per_epoch, config.seed)
        vidx = torch.from_numpy(val_sample.epoch(0)).to(device)  # [<= budget]
    loss_fn = _loss_fn(config, device)
    point_fn = _point_loss(config, device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=0.5, patience=max(1, config.patience // 2)
    )
    gen = torch.Generator().manual_seed(config.seed)  # shuffling order, independent of device
    params = [p for p in net.parameters() if p.requires_grad]
    bs = config.batch_size

    def val_loss() -> tuple[float, float]:
        """(training objective, point loss) on validation."""
        net.eval()
        total = torch.zeros(2, dtype=torch.float64, device=device)
        with torch.no_grad():
            for a in range(0, len(vidx), EVAL_BATCH):
                idx = vidx[a : a + EVAL_BATCH]
                pred, y = net(tw.inputs(idx)), tw.targets(idx)
                both = torch.stack([loss_fn(pred, y), point_fn(pred, y)])
                total += both.double() * len(idx)
        objective, point = (total / max(len(vidx), 1)).tolist()
        return objective, point

    history: list[dict[str, float]] = []
    best_state = copy.deepcopy(net.state_dict())
    vl0, best = val_loss()
    history.append(
        {"epoch": 0, "train_loss": math.nan, "val_loss": vl0, "val_point": best, "lr": lr}
    )
    log.info(
        "training on %d windows (%d for validation), up to %d epochs; starting val loss %.5f, "
        "point %.5f",
        len(tidx),
        len(vidx),
        epochs,
        vl0,
        best,
    )
    bad = 0
    bar = None
    if _use_tqdm(progress) and epochs > 0:
        from tqdm.auto import tqdm

        # One bar over every batch of every epoch: an epoch on a large panel takes minutes,
        # and a bar that moves only between epochs sat at 0/N for all of the first one.
        # Early stopping can end it short of its total.
        per_epoch = -(-len(tidx) // bs)  # the sampler's budget is the same every epoch
        bar = tqdm(
            total=epochs * per_epoch,
            desc=f"training epoch 1/{epochs}",
            unit="batch",
            leave=False,
            disable=False,  # decided above; tqdm would read TQDM_DISABLE again
            mininterval=BAR_INTERVAL_S,
        )
    try:
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            net.train()
            if sampler is not None and epoch > 1:
                tidx = torch.from_numpy(sampler.epoch(epoch)).to(device)  # [budget]
            perm = torch.randperm(len(tidx), generator=gen).to(device)  # [Nt]
            total = torch.zeros((), dtype=torch.float64, device=device)
            for a in range(0, len(tidx), bs):
                idx = tidx[perm[a : a + bs]]  # [B] flat origins
                pred = net(tw.inputs(idx))  # [B, L, 1] -> [B, H, Q]
                loss = loss_fn(pred, tw.train_targets(idx))
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]  # untyped in torch's stubs
                nn.utils.clip_grad_norm_(params, GRAD_CLIP)
                opt.step()
                total += loss.detach().double() * len(idx)
                if bar is not None:
                    bar.update(1)
            train_loss = float(total) / max(len(tidx), 1)  # float() waits for the device
            t1 = time.perf_counter()
            vl, vp = val_loss()
            sched.step(vp)
            seconds = time.perf_counter() - t0
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "val_loss": vl,
                    "val_point": vp,
                    "lr": opt.param_groups[0]["lr"],
                    "seconds": seconds,  # whole epoch
                    "train_seconds": t1 - t0,  # the optimization loop alone
                    "windows": len(tidx),  # trained on this epoch
                }
            )
            if bar is not None:
                bar.set_postfix(train=f"{train_loss:.4f}", val=f"{vl:.4f}", point=f"{vp:.4f}")
                bar.set_description(f"training epoch {min(epoch + 1, epochs)}/{epochs}")
            else:
                log.info(
                    "epoch %d/%d: train loss %.5f, val loss %.5f, point %.5f, lr %.2g, %.1fs "
                    "(%d samples/s)",
                    epoch,
                    epochs,
                    train_loss,
                    vl,
                    vp,
                    opt.param_groups[0]["lr"],
                    seconds,
                    len(tidx) / seconds if seconds > 0 else 0,
                )
            if vp < best - 1e-7:
                best, bad = vp, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                bad += 1
                if bad > config.patience:
                    log.info("early stop after epoch %d: best val point loss %.5f", epoch, best)
                    break
    finally:
        if bar is not None:
            bar.close()
    return history, best_state
