"""Sliding windows over many series without materializing them.

All series are concatenated into one flat array (``Panel``); series ``s`` occupies
``offsets[s]:offsets[s+1]``, each on its own trading days. A window is named by its *origin*:
the flat index ``t`` of its last input observation. Inputs are ``x[t-L+1 .. t]`` and targets
are read from the levels at ``t+1 .. t+H``. Only index arrays of origins are kept; the windows
themselves are strided views (``sliding_window_view`` / ``Tensor.unfold``), so memory does not
grow with ``L``: a batch is materialized by fancy-indexing the view with a few hundred origins.

Series arrive as pandas closes indexed by trading date; :func:`clean_closes` turns each into the
sorted, finite, positive arrays that :func:`build_panel` (and inference) work on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from numpy.lib.stride_tricks import sliding_window_view

from forecasting.model import scaling
from forecasting.model.features import feature_matrix

BAR_COLUMNS = ("high", "low", "vol")  # what a bar may carry beyond its close
SeriesLike = pd.Series | pd.DataFrame  # a series' closes, or its bars with a "close" column


@dataclass(frozen=True)
class Bars:
    """One series' bars, ascending, finite positive closes only: ``dates`` (``datetime64[D]``),
    ``close`` and the optional ``high``, ``low``, ``vol`` (NaN where a source gave none)."""

    dates: np.ndarray
    close: np.ndarray
    high: np.ndarray
    low: np.ndarray
    vol: np.ndarray

    def tail(self, n: int) -> Bars:
        """The last ``n`` bars."""
        return Bars(*(a[-n:] for a in (self.dates, self.close, self.high, self.low, self.vol)))

    def head(self, n: int) -> Bars:
        """The first ``n`` bars."""
        return Bars(*(a[:n] for a in (self.dates, self.close, self.high, self.low, self.vol)))


def _numbers(values: object, n: int) -> np.ndarray:
    if values is None:
        return np.full(n, np.nan)
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiu":
        # What the database loaders give: no need for pandas (this runs per ticker and column).
        return values.astype(np.float64, copy=False)
    return pd.to_numeric(pd.Series(values, copy=False), errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan
    )


def _days(index: pd.Index) -> np.ndarray:
    """``index`` as ``datetime64[D]``: dates, datetimes or ISO strings."""
    values = index.to_numpy()
    if values.dtype.kind == "M":
        return values.astype("datetime64[D]")
    try:  # datetime.date objects, as the database loaders give: numpy converts them directly
        return np.asarray(values, dtype="datetime64[D]")
    except (TypeError, ValueError):
        return np.asarray(pd.to_datetime(index).values, dtype="datetime64[D]")


def clean_bars(s: SeriesLike, through: dt.date | None) -> Bars:
    """The bars of one series, ascending, with finite positive closes, everything after
    ``through`` dropped (defense in depth: leakage is designed out). ``s`` is a Series of
    closes or a frame with a ``close`` column and any of :data:`BAR_COLUMNS`."""
    if len(s) == 0:
        empty = np.empty(0)
        return Bars(np.empty(0, dtype="datetime64[D]"), empty, empty, empty, empty)
    dates = _days(pd.Index(s.index))
    n = len(dates)
    if isinstance(s, pd.DataFrame):
        cols = [_numbers(s[c].to_numpy() if c in s.columns else None, n) for c in BAR_COLUMNS]
        closes = _numbers(s["close"].to_numpy(), n)
    else:
        cols = [np.full(n, np.nan) for _ in BAR_COLUMNS]
        closes = _numbers(s.to_numpy(), n)
    ok = np.isfinite(closes) & (closes > 0)
    if through is not None:
        ok &= dates <= np.datetime64(through, "D")
    order = np.flatnonzero(ok)[np.argsort(dates[ok], kind="stable")]
    d = dates[order]
    if len(d) > 1:
        # A duplicated date keeps its last value, as a re-sent bar would.
        order = order[np.r_[d[1:] != d[:-1], True]]
    return Bars(dates[order], closes[order], *(c[order] for c in cols))


def clean_closes(s: SeriesLike, through: dt.date | None) -> tuple[np.ndarray, np.ndarray]:
    """Dates (``datetime64[D]``) and closes of one series (:func:`clean_bars`)."""
    b = clean_bars(s, through)
    return b.dates, b.close


@dataclass(frozen=True)
class Panel:
    """Every series of a dataset, flat and aligned.

    ``x`` (float32): the return input at each date (see :func:`forecasting.model.scaling.inputs`).
    ``inputs`` (float32, ``[N, F]``): every model input at each date, column 0 being ``x``
    (see :mod:`forecasting.model.features`).
    ``level`` (float64): exact scaled level; targets and errors are differences of it.
    ``train_level`` (float64): the level rebuilt from the *clipped* inputs for ``log_return``
    (the same as ``level`` for ``minmax``), so that a data error does not dominate the loss.
    ``dates``: per series, its trading days (``datetime64[D]``).
    """

    tickers: list[str]
    offsets: np.ndarray  # [S+1] int64
    x: np.ndarray  # [N] float32
    inputs: np.ndarray  # [N, F] float32
    level: np.ndarray  # [N] float64
    train_level: np.ndarray  # [N] float64
    dates: list[np.ndarray]
    target: str

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)  # [S]


def build_panel(
    closes: Mapping[str, np.ndarray],
    dates: Mapping[str, np.ndarray],
    scalers: Mapping[str, Mapping[str, float]],
    target: str,
    features: Sequence[str] = ("return",),
    bars: Mapping[str, Bars] | None = None,
) -> Panel:
    """Concatenate the scaled series. ``closes[t]`` and ``dates[t]`` are aligned, ascending;
    ``features`` names the input columns (the first must be ``return``); ``bars[t]``, aligned
    with them, gives the high, low and volume that the ``range`` and ``volume`` inputs read."""
    if not features or features[0] != "return":
        raise ValueError(f"features must start with 'return', got {tuple(features)}")
    tickers = list(closes)
    lengths = np.array([len(closes[t]) for t in tickers], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    x = np.empty(n, dtype=np.float32)
    inputs = np.empty((n, len(features)), dtype=np.float32)
    level = np.empty(n, dtype=np.float64)
    train_level = np.empty(n, dtype=np.float64)
    for s, t in enumerate(tickers):  # a loop over series, never over windows
        a, b = offsets[s], offsets[s + 1]
        params = dict(scalers[t])
        bar = (bars or {}).get(t)
        extra = {} if bar is None else {"high": bar.high, "low": bar.low, "vol": bar.vol}
        feats = feature_matrix(closes[t], dates[t], params, target, features, t, **extra)
        xs = feats[:, 0].astype(np.float64)  # [n_s] the return column
        lv = scaling.levels(closes[t], params, target)  # [n_s]
        x[a:b] = feats[:, 0]
        inputs[a:b] = feats
        level[a:b] = lv
        if target == "log_return":
            # [n_s]: level rebuilt from clipped returns, anchored at the true first level
            train_level[a:b] = lv[0] + np.cumsum(xs, dtype=np.float64)
        else:
            train_level[a:b] = lv
    return Panel(
        tickers=tickers,
        offsets=offsets,
        x=x,
        inputs=inputs,
        level=level,
        train_level=train_level,
        dates=[np.asarray(dates[t], dtype="datetime64[D]") for t in tickers],
        target=target,
    )


def origins(
    panel: Panel,
    input_len: int,
    horizon: int,
    first: Sequence[int] | np.ndarray,
    last: Sequence[int] | np.ndarray,
) -> np.ndarray:
    """Flat origin indices of series ``s`` for local positions ``first[s]..last[s]`` inclusive.

    Bounds are clipped so that every window is complete: inputs start at local position 1 or
    later (position 0 has no return) and all ``horizon`` targets exist. ``[S] -> [n_windows]``.
    """
    lengths = panel.lengths
    lo = np.maximum(np.asarray(first, dtype=np.int64), input_len)
    hi = np.minimum(np.asarray(last, dtype=np.int64), lengths - 1 - horizon)
    counts = np.maximum(hi - lo + 1, 0)  # [S]
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    # Vectorized concatenation of ranges: start of each run repeated, plus a running index.
    starts = panel.offsets[:-1] + lo  # [S] flat start of each run
    run_start = np.repeat(starts, counts)  # [n_windows]
    within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    flat: np.ndarray = run_start + within
    return flat


@dataclass(frozen=True)
class WindowView:
    """Strided (zero-copy) views of all windows of a panel, in numpy.

    ``inputs(idx)``: ``[B] -> [B, L]``; ``targets(idx)``: ``[B] -> [B, H]`` (exact levels),
    ``naive(idx)``: ``[B] -> [B, H]`` persistence in the same units.
    """

    panel: Panel
    input_len: int
    horizon: int

    @property
    def x_windows(self) -> np.ndarray:
        return sliding_window_view(self.panel.x, self.input_len)  # [N-L+1, L] view

    @property
    def level_windows(self) -> np.ndarray:
        return sliding_window_view(self.panel.level, self.horizon + 1)  # [N-H, H+1] view

    def inputs(self, idx: np.ndarray) -> np.ndarray:
        x: np.ndarray = self.x_windows[idx - self.input_len + 1]  # [B] -> [B, L]
        return x

    def targets(self, idx: np.ndarray) -> np.ndarray:
        lv = self.level_windows[idx]  # [B] -> [B, H+1]
        if self.panel.target == "log_return":
            returns: np.ndarray = lv[:, 1:] - lv[:, :1]  # [B, H] cumulative normalized log-returns
            return returns
        levels: np.ndarray = lv[:, 1:]  # [B, H] scaled price levels
        return levels

    def naive(self, idx: np.ndarray) -> np.ndarray:
        if self.panel.target == "log_return":
            return np.zeros((len(idx), self.horizon))  # [B, H] persistence = no change
        return np.repeat(self.panel.level[idx][:, None], self.horizon, axis=1)  # [B, H]


class TensorWindows:
    """The same windows as :class:`WindowView`, as torch views on one device.

    The flat float32 inputs are copied to the device once; batches are gathered there by
    fancy-indexing ``Tensor.unfold`` views, so no per-sample Python runs in the training loop.
    """

    def __init__(self, panel: Panel, input_len: int, horizon: int, device: torch.device) -> None:
        self.input_len = input_len
        self.horizon = horizon
        self.target = panel.target
        self.x = torch.from_numpy(panel.inputs).to(device)  # [N, F]
        self.x_unf = self.x.unfold(0, input_len, 1)  # [N-L+1, F, L] view
        self.train_level = torch.from_numpy(panel.train_level).to(device)  # [N] float64
        self.train_unf = self.train_level.unfold(0, horizon + 1, 1)  # [N-H, H+1] view
        self.level = torch.from_numpy(panel.level).to(device)  # [N] float64
        self.level_unf = self.level.unfold(0, horizon + 1, 1)  # [N-H, H+1] view

    def inputs(self, idx: torch.Tensor) -> torch.Tensor:
        return self.x_unf[idx - self.input_len + 1].transpose(1, 2)  # [B] -> [B, L, F]

    def _targets(self, unf: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        lv = unf[idx]  # [B] -> [B, H+1]
        if self.target == "log_return":
            return (lv[:, 1:] - lv[:, :1]).float()  # [B, H]
        return lv[:, 1:].float()  # [B, H]

    def train_targets(self, idx: torch.Tensor) -> torch.Tensor:
        """Targets from clipped returns, for the loss. ``[B] -> [B, H]``."""
        return self._targets(self.train_unf, idx)

    def targets(self, idx: torch.Tensor) -> torch.Tensor:
        """Exact targets, for metrics and calibration. ``[B] -> [B, H]``."""
        return self._targets(self.level_unf, idx)

    def naive(self, idx: torch.Tensor) -> torch.Tensor:
        """Persistence in target units. ``[B] -> [B, H]``."""
        if self.target == "log_return":
            return torch.zeros(len(idx), self.horizon, device=self.x.device)
        return self.level[idx].float().unsqueeze(1).expand(-1, self.horizon)  # [B, H]
