"""Use a trained model: forecast paths from the latest closes, score it out of sample.

Both go through one batched forward pass over all tickers, and both apply the model's
calibration (:mod:`forecasting.model.calibration`), so what is scored is what is forecast.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from forecasting.model import scaling
from forecasting.model.calibration import apply_calibration, gate_rows, recent_scale, rmse
from forecasting.model.features import feature_matrix, fit_feature_scaler
from forecasting.model.metrics import interval_score, ratio_to_naive
from forecasting.model.trained_model import (
    TrainedModel,
    build_network,
    forward,
    inference_device,
)
from forecasting.model.volatility import har_sigma
from forecasting.model.windows import Bars, SeriesLike, clean_bars

log = logging.getLogger(__name__)


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
    """Out-of-sample RMSE of the model and of persistence, in normalized units, and the mean
    interval (Winkler) score of the model's band in the same units."""

    rmse: float
    naive_rmse: float
    n: int
    interval_score: float = math.nan

    @property
    def ratio(self) -> float:
        """``rmse / naive_rmse``; nan when there was nothing to score."""
        return ratio_to_naive(self.rmse, self.naive_rmse) if self.n else math.nan


def _as_date(d: np.datetime64) -> dt.date:
    return dt.date.fromisoformat(str(d.astype("datetime64[D]")))


def _scaler_for(model: TrainedModel, ticker: str, past: Bars) -> dict[str, float] | None:
    """The stored scaler, or — for a ticker the model never saw — one fitted on the closes
    passed in, which are the ticker's own past (the caller cuts them at the forecast origin or
    at the model's cutoff). ``None`` when there is too little to fit."""
    params = model.scalers.get(ticker)
    if params is not None:
        return params
    if len(past.close) < 2:
        return None
    return fit_feature_scaler(
        past.close,
        past.dates,
        model.config.target,
        name=ticker,
        high=past.high,
        low=past.low,
        vol=past.vol,
    )


def _features(b: Bars, params: Mapping[str, float], model: TrainedModel, ticker: str) -> np.ndarray:
    cfg = model.config
    return feature_matrix(
        b.close,
        b.dates,
        params,
        cfg.target,
        cfg.features,
        ticker,
        high=b.high,
        low=b.low,
        vol=b.vol,
    )


def predict(
    model: TrainedModel,
    series: Mapping[str, SeriesLike],
    *,
    gaps: Mapping[str, int] | None = None,
) -> dict[str, PathForecast]:
    """Forecast paths from the last ``input_len`` observations of each series.

    The caller cuts each series at the forecast origin. ``base_close`` is the last close and the
    ``log_return`` paths are ``base_close * exp(cumulative predicted log-return)``. All tickers go
    through one batched forward pass. Tickers with fewer than ``input_len + 1`` closes are
    omitted. A ticker without a stored scaler (not in the training set of a global model) gets a
    scaler fitted on the closes passed in, i.e. its own past. ``gaps``: trading days between
    a ticker's last bar and the forecast origin (a suspension, a late price); its band widens
    for them (:func:`forecasting.model.calibration.gap_widening`).
    """
    cfg = model.config
    L = cfg.input_len
    keep: list[tuple[str, dt.date, float, dict[str, float]]] = []
    xs: list[np.ndarray] = []
    naive: list[float] = []
    for tk, s in series.items():
        b = clean_bars(s, None)
        d, c = b.dates, b.close
        if len(c) < L + 1:
            log.debug("no forecast for %s: %d closes, need %d", tk, len(c), L + 1)
            continue
        params = _scaler_for(model, tk, b)
        if params is None:
            continue
        tail = c[-(L + 1) :]  # [L+1]
        xs.append(_features(b.tail(L + 1), params, model, tk)[1:])  # [L+1, F] -> [L, F]
        naive.append(
            0.0
            if cfg.target == "log_return"
            else float(scaling.levels(tail[-1:], params, cfg.target)[0])
        )
        keep.append((tk, _as_date(d[-1]), float(c[-1]), params))
    if not keep:
        return {}
    x = torch.from_numpy(np.stack(xs).astype(np.float32))  # [S, L, F]
    device = inference_device(cfg)
    out = forward(build_network(model, device), x.to(device)).numpy()  # [S, H, Q]
    nv = np.repeat(np.asarray(naive)[:, None], cfg.horizon, axis=1)  # [S, H]
    scale = recent_scale(x[..., 0].numpy(), cfg.target)  # [S]
    gap = np.array([(gaps or {}).get(tk, 0) for tk, *_ in keep], dtype=np.float64)  # [S]
    vol = har_sigma(x.numpy(), model.calibration, cfg.features, [tk for tk, *_ in keep])
    gate = gate_rows([tk for tk, *_ in keep], model.calibration, cfg.horizon)  # [S, H]
    point, lower, upper = apply_calibration(
        out, nv, model.calibration, cfg, scale, gap, vol=vol, gate=gate
    )
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
    series: Mapping[str, SeriesLike],
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
    xs, ys, nvs, masks, gates = [], [], [], [], []
    names: list[str] = []  # each window's ticker
    for tk, s in series.items():
        b = clean_bars(s, through)
        d, c = b.dates, b.close
        n = len(c)
        if n < L + 2:
            continue
        params = _scaler_for(model, tk, b.head(int(np.sum(d <= after64))))
        if params is None:
            continue
        first_origin = max(int(np.searchsorted(d, after64, "left")), L)
        first_target = max(int(np.searchsorted(d, after64, "right")), n - window)
        if first_origin > n - 2 or first_target > n - 1:
            continue
        t = np.arange(first_origin, n - 1)  # [T] origins with at least one target
        x = _features(b, params, model, tk)  # [n, F]
        lv = np.concatenate([scaling.levels(c, params, cfg.target), np.full(H, np.nan)])
        lvw = sliding_window_view(lv, H + 1)[t]  # [T, H+1]
        pos = t[:, None] + np.arange(1, H + 1)  # [T, H] target positions
        mask = (pos <= n - 1) & (pos >= first_target)  # [T, H]
        keep = mask.any(axis=1)
        t, lvw, mask = t[keep], lvw[keep], mask[keep]
        xs.append(sliding_window_view(x, L, axis=0)[t - L + 1].transpose(0, 2, 1))  # [T, L, F]
        if cfg.target == "log_return":
            ys.append(lvw[:, 1:] - lvw[:, :1])  # [T, H]
            nvs.append(np.zeros((len(t), H)))
        else:
            ys.append(lvw[:, 1:])
            nvs.append(np.repeat(lvw[:, :1], H, axis=1))
        masks.append(mask)
        gates.append(gate_rows([tk] * len(t), model.calibration, H))  # [T, H]
        names += [tk] * len(t)
    if not xs:
        return Score(math.nan, math.nan, 0)
    x_all = torch.from_numpy(np.concatenate(xs).astype(np.float32))  # [N, L, F]
    device = inference_device(cfg)
    out = forward(build_network(model, device), x_all.to(device)).numpy()  # [N, H, Q]
    y, nv, mask = np.concatenate(ys), np.concatenate(nvs), np.concatenate(masks)  # [N, H]
    scale = recent_scale(x_all[..., 0].numpy(), cfg.target)  # [N]
    vol = har_sigma(x_all.numpy(), model.calibration, cfg.features, names)  # [N, H] or None
    gate = np.concatenate(gates)  # [N, H]
    point, lower, upper = apply_calibration(
        out, nv, model.calibration, cfg, scale, vol=vol, gate=gate
    )
    y = np.where(mask, y, 0.0)  # masked targets may be NaN (past the series end)
    # An h-step log-return has ~sqrt(h) times the spread of a one-step one; dividing by sqrt(h)
    # puts every horizon in the same unit (about 1 on the training span), so an absolute
    # threshold means the same thing whatever H is. The ratio to naive is unaffected.
    per_h = np.sqrt(np.arange(1, H + 1)) if cfg.target == "log_return" else np.ones(H)  # [H]
    err, nerr = ((point - y) / per_h)[mask], ((nv - y) / per_h)[mask]
    winkler = interval_score(lower / per_h, upper / per_h, y / per_h, 1.0 - cfg.interval)[mask]
    return Score(rmse(err), rmse(nerr), int(mask.sum()), float(np.mean(winkler)))
