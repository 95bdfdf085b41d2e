"""Accuracy benchmark: the project's global LSTM against persistence and the tutorial recipe.

Data: the four indices of ``../shared/data/indices`` and the ``--series-limit`` (default 30)
panel stocks with the longest history that end at the panel's last date (ties by ticker code;
see :func:`benchmarks.common.choose_panel_tickers`).

Method: rolling origins over the last ``--test-days`` (250) trading days. The panel ends
2019-01-07 and the indices 2022-12-30, so one cutoff for all would leave the indices four years
stale. Series are therefore grouped by end date (within ``--group-gap`` calendar days); a
group's test window is the last 250 days of its members' combined trading calendar, each
member's origins are its own trading days in that window (a suspended stock simply has fewer),
and horizon ``h`` counts the origins whose ``h``-th next trading day exists. Each group gets
ONE global model (:func:`forecasting.model.training.fit` on *all* series, each cut at the cutoff),
trained through the day before the group's window. With the shared data that is two models:
through 2017-12 for the panel stocks, through 2021-12 for the indices. ``--split common``
instead trains a single model through the earliest cutoff and scores every series with it.

Forecasts at ``h = 1, 5, 10`` come from :func:`forecasting.model.inference.predict` on the
series' bars (close, high, low, volume) cut at each origin, one call per origin date for all
series of the group, each under its own ticker as the daily pipeline calls it.

Printed per series and horizon: RMSE in price units as a ratio to persistence (``yhat = close
at origin``) on the same origins, the same ratio for the tutorial recipe
(:mod:`benchmarks.tutorial_lstm`), and the coverage of the forecast interval; then a summary.
``--out`` gets the rows as CSV.

    .venv/bin/python -m benchmarks.accuracy            # default run (~10 min on 2 cores)
    .venv/bin/python -m benchmarks.accuracy --quick    # small settings, a minute or so
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

if __package__ in (None, ""):  # run as a script (`python benchmarks/accuracy.py`, the Makefile)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.baselines import empirical_forecasts, garch_forecasts  # noqa: E402
from benchmarks.common import (  # noqa: E402
    INDEX_TICKERS,
    choose_panel_tickers,
    data_dir,
    load_indices,
    panel_path,
)
from benchmarks.tutorial_lstm import (  # noqa: E402
    TutorialConfig,
    fit_tutorial,
    forecast_tutorial,
)
from forecasting.model.inference import predict  # noqa: E402
from forecasting.model.lstm import ModelConfig  # noqa: E402
from forecasting.model.metrics import interval_score, pinball  # noqa: E402
from forecasting.model.trained_model import TrainedModel  # noqa: E402
from forecasting.model.training import fit  # noqa: E402

HORIZONS = (1, 5, 10)
TEST_DAYS = 250
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "accuracy.csv"
DEFAULT_EPOCHS = 5
TARGET_RATIO = 1.00
TARGET_COVERAGE = (0.75, 0.85)  # per series
TARGET_POOLED_COVERAGE = (0.77, 0.83)  # per horizon, pooled over series
BASELINES = ("empirical", "garch_t")
TARGET_WINKLER = {"garch_t": 0.98, "empirical": 0.97}  # geo-mean interval score, model / baseline

log = logging.getLogger("benchmarks.accuracy")


@dataclass(frozen=True)
class WindowGroup:
    """Series that share a test window and are scored with one model.

    Origins are each member's own trading days after ``test_after`` (its last day excepted);
    the model is trained through ``through`` (``== test_after`` unless ``--split common``
    moved it earlier).
    """

    through: dt.date
    test_after: dt.date
    tickers: tuple[str, ...]


@dataclass
class GroupRun:
    """What one group's model did: its cutoff, validation figures and timings."""

    group: WindowGroup
    model: TrainedModel
    fit_seconds: float
    predict_seconds: float
    tutorial_seconds: float
    baseline_seconds: float = 0.0


@dataclass
class AccuracyResult:
    """Rows (one per series and horizon) and the runs that produced them."""

    rows: pd.DataFrame
    runs: list[GroupRun] = field(default_factory=list)


def _dates(s: pd.Series | pd.DataFrame) -> np.ndarray:
    return np.asarray(pd.to_datetime(pd.Index(s.index)).values, dtype="datetime64[D]")


def _to_date(d: np.datetime64) -> dt.date:
    return dt.date.fromisoformat(str(d)[:10])


def window_groups(
    series: Mapping[str, pd.Series],
    test_days: int = TEST_DAYS,
    *,
    gap_days: int = 31,
    common: bool = False,
) -> list[WindowGroup]:
    """Group series that end within ``gap_days`` calendar days of each other.

    A group's test window is the last ``test_days`` days of its members' combined trading
    calendar, so a stock suspended for weeks has fewer origins rather than a window reaching
    back months earlier than its peers' (and a model of its own). The group's model is trained
    through the calendar day before that window, so no member's origins or targets reach the
    training data. ``common=True`` trains every group's model through the earliest of those
    cutoffs (one model for all) and leaves the test windows as they are.
    """
    ends: list[tuple[np.datetime64, str]] = []
    for tk, s in series.items():
        d = _dates(s)
        if len(d) < 2:
            raise ValueError(f"{tk}: {len(d)} closes; the benchmark needs a real series")
        ends.append((d[-1], tk))
    ends.sort()
    clusters: list[list[str]] = []
    cluster_end: np.datetime64 | None = None
    for end, tk in ends:
        if cluster_end is None or (end - cluster_end) > np.timedelta64(gap_days, "D"):
            clusters.append([])
        cluster_end = end
        clusters[-1].append(tk)
    groups = []
    for members in clusters:
        calendar = np.unique(np.concatenate([_dates(series[tk]) for tk in members]))
        if len(calendar) < test_days + 2:
            raise ValueError(
                f"{members}: {len(calendar)} trading days in all, the benchmark needs more than "
                f"test_days={test_days} (+ training history); drop them or lower --test-days"
            )
        cutoff = _to_date(calendar[-test_days - 1])
        groups.append(WindowGroup(cutoff, cutoff, tuple(sorted(members))))
    if common:
        earliest = min(g.through for g in groups)
        groups = [replace(g, through=earliest) for g in groups]
    return groups


def _origins(s: pd.Series | pd.DataFrame, test_after: dt.date) -> np.ndarray:
    """Origin positions of one series: its days after ``test_after`` but the last one (which
    has no target). ``[T]``"""
    after = int(np.searchsorted(_dates(s), np.datetime64(test_after, "D"), side="right"))
    return np.arange(after, len(s) - 1)


def project_forecasts(
    model: TrainedModel,
    series: Mapping[str, pd.Series | pd.DataFrame],
    test_after: dt.date,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``yhat, lower, upper`` (each ``[T, H]``, prices) from every origin of each series.

    One :func:`predict` call (one batched forward pass) per origin date, with every series
    cut at that date under its own ticker, exactly as the daily pipeline calls it: the
    ticker's stored scaler, its board's price limits and its class's signal gate all apply.
    Tickers the model skipped (too short) are left out.
    """
    L, H = model.config.input_len, model.config.horizon
    rounds: dict[pd.Timestamp, dict[str, tuple[int, pd.Series | pd.DataFrame]]] = {}
    out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for tk, s in series.items():
        if tk not in model.scalers:
            log.warning("%s: not in the model (too little training history); skipped", tk)
            continue
        t_all = _origins(s, test_after)
        out[tk] = tuple(np.full((len(t_all), H), np.nan) for _ in range(3))  # type: ignore[assignment]
        for i, t in enumerate(t_all):
            if t >= L:  # predict reads the last L returns: L+1 bars
                rounds.setdefault(s.index[t], {})[tk] = (i, s.iloc[t - L : t + 1])
    for day in sorted(rounds):
        part = rounds[day]
        paths = predict(model, {tk: cut for tk, (_, cut) in part.items()})
        for tk, (i, _) in part.items():
            p = paths.get(tk)
            if p is None:
                continue
            yhat, lower, upper = out[tk]
            yhat[i], lower[i], upper[i] = p.yhat, p.lower, p.upper
    return out


def tutorial_forecasts(
    series: Mapping[str, pd.Series],
    through: dt.date,
    test_after: dt.date,
    train_len: int,
    horizon: int,
    config: TutorialConfig,
) -> dict[str, np.ndarray]:
    """Tutorial-recipe forecasts ``[T, horizon]`` (prices) from every origin of each series.

    Trained per series on its last ``train_len`` closes through ``through`` (the project
    model's span); scaled over the whole series, as the recipe does."""
    out: dict[str, np.ndarray] = {}
    k = config.look_back
    cutoff = pd.Timestamp(through)
    for tk, s in series.items():
        train = s[s.index <= cutoff].iloc[-train_len:]
        model = fit_tutorial(s, train, config)
        c = s.to_numpy(dtype=np.float64)
        t = _origins(s, test_after)  # [T]
        windows = np.lib.stride_tricks.sliding_window_view(c, k)[t - k + 1]  # [T, k]
        out[tk] = forecast_tutorial(model, windows, horizon)  # [T, horizon]
    return out


def baseline_forecasts(
    series: Mapping[str, pd.Series],
    group: WindowGroup,
    horizon: int,
    interval: float,
    *,
    garch: bool = True,
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """The interval baselines (:mod:`benchmarks.baselines`) on the group's origins. GARCH is
    left out when ``garch=False`` or when the ``arch`` package (the bench extra) is missing."""
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {
        "empirical": {
            tk: empirical_forecasts(s, group.test_after, horizon, interval)
            for tk, s in series.items()
        }
    }
    if garch:
        try:
            import arch  # noqa: F401
        except ImportError:
            log.warning("GARCH baseline skipped: `pip install -e '.[bench]'` installs arch")
            return out
        out["garch_t"] = {
            tk: garch_forecasts(s, group.through, group.test_after, horizon, interval)
            for tk, s in series.items()
        }
    return out


def _rmse(err: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(err)))) if err.size else math.nan


def _band_scores(
    prefix: str,
    fc: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    ok: np.ndarray,
    h: int,
    y: np.ndarray,
    naive: np.ndarray,
    interval: float,
) -> dict[str, float]:
    """Coverage, width, interval (Winkler) score and pinball losses of one method's band at
    horizon ``h``, in percent of the origin close, over the origins ``ok``."""
    names = ("coverage", "width_pct", "winkler", "pinball_lo", "pinball_mid", "pinball_hi")
    if fc is None:
        return {f"{prefix}{k}": math.nan for k in names}
    yhat, lower, upper = (a[ok, h - 1] for a in fc)  # [T_h] each
    keep = np.isfinite(lower) & np.isfinite(upper)
    pct = 100.0 / naive
    tail = (1.0 - interval) / 2.0
    out = {
        "coverage": float(np.mean(((y >= lower) & (y <= upper))[keep])),
        "width_pct": float(np.mean(((upper - lower) * pct)[keep])),
        "winkler": float(np.mean((interval_score(lower, upper, y, 1 - interval) * pct)[keep])),
        "pinball_lo": float(np.mean((pinball(lower, y, tail) * pct)[keep])),
        "pinball_mid": float(np.mean((pinball(yhat, y, 0.5) * pct)[keep])),
        "pinball_hi": float(np.mean((pinball(upper, y, 1 - tail) * pct)[keep])),
    }
    return {f"{prefix}{k}": v for k, v in out.items()}


def score_rows(
    series: Mapping[str, pd.Series],
    group: WindowGroup,
    model_fc: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    tutorial_fc: Mapping[str, np.ndarray],
    horizons: Sequence[int],
    baselines: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]] | None = None,
    interval: float = 0.8,
) -> list[dict[str, object]]:
    """One row per (series, horizon) of a group: RMSEs, ratios to persistence, and for the
    model and each interval baseline (``baselines``: name -> forecasts per ticker) coverage,
    width, interval score and pinball losses."""
    baselines = baselines or {}
    rows: list[dict[str, object]] = []
    for tk in group.tickers:
        s = series[tk]
        c = s.to_numpy(dtype=np.float64)
        n = len(c)
        t = _origins(s, group.test_after)  # [T]
        fc = model_fc.get(tk)
        for h in horizons:
            ok = t + h <= n - 1  # [T] origins whose target exists
            tt = t[ok]
            if len(tt) == 0:
                log.warning("%s: no origin with a target %d days ahead; no row", tk, h)
                continue
            y, naive = c[tt + h], c[tt]  # [T_h]
            naive_rmse = _rmse(y - naive)
            rmse = coverage = width = tut_rmse = math.nan
            if fc is not None:
                yhat, lower, upper = (a[ok, h - 1] for a in fc)  # [T_h] each
                rmse = _rmse(yhat - y)
                coverage = float(np.mean((y >= lower) & (y <= upper)))
                width = float(np.mean((upper - lower) / naive) * 100.0)
            tut = tutorial_fc.get(tk)
            if tut is not None:
                tut_rmse = _rmse(tut[ok, h - 1] - y)
            scores = _band_scores("", fc, ok, h, y, naive, interval)
            for name in BASELINES:
                fcb = baselines.get(name, {}).get(tk)
                scores.update(_band_scores(f"{name}_", fcb, ok, h, y, naive, interval))
            row: dict[str, object] = {
                "ticker": tk,
                "kind": "index" if tk in INDEX_TICKERS else "stock",
                "trained_through": group.through.isoformat(),
                "horizon": h,
                "n_origins": int(ok.sum()),
                "first_origin": f"{s.index[tt[0]]:%Y-%m-%d}",
                "last_origin": f"{s.index[tt[-1]]:%Y-%m-%d}",
                "rmse": rmse,
                "naive_rmse": naive_rmse,
                "ratio": rmse / naive_rmse if naive_rmse > 0 else math.nan,
                "tutorial_rmse": tut_rmse,
                "tutorial_ratio": tut_rmse / naive_rmse if naive_rmse > 0 else math.nan,
                "coverage": coverage,
                "width_pct": width,
                **{k: v for k, v in scores.items() if k not in ("coverage", "width_pct")},
            }
            rows.append(row)
    return rows


COLUMNS = [
    "ticker",
    "kind",
    "trained_through",
    "horizon",
    "n_origins",
    "first_origin",
    "last_origin",
    "rmse",
    "naive_rmse",
    "ratio",
    "tutorial_rmse",
    "tutorial_ratio",
    "coverage",
    "width_pct",
    "winkler",
    "pinball_lo",
    "pinball_mid",
    "pinball_hi",
    *(
        f"{b}_{k}"
        for b in ("empirical", "garch_t")
        for k in ("coverage", "width_pct", "winkler", "pinball_lo", "pinball_mid", "pinball_hi")
    ),
]


def run_accuracy(
    series: Mapping[str, pd.Series],
    config: ModelConfig,
    *,
    test_days: int = TEST_DAYS,
    horizons: Sequence[int] = HORIZONS,
    tutorial: TutorialConfig | None = None,
    common: bool = False,
    gap_days: int = 31,
    progress: bool | None = False,
    garch: bool = True,
    bars: Mapping[str, pd.DataFrame] | None = None,
) -> AccuracyResult:
    """Fit one global model per test group, forecast every origin, score against persistence
    and the tutorial recipe. ``series``: closes per ticker, indexed by trade date, ascending;
    ``bars``: the same days' whole bars (``close``, ``high``, ``low``, ``vol``), which the
    model reads instead when given (the baselines and the tutorial read closes)."""
    inputs: Mapping[str, pd.Series | pd.DataFrame] = bars if bars is not None else series
    if max(horizons) > config.horizon:
        raise ValueError(
            f"horizons {tuple(horizons)} reach past the model's horizon={config.horizon}; "
            "raise horizon in the config or drop the longer horizons"
        )
    tut_cfg = tutorial or TutorialConfig(seed=config.seed)
    groups = window_groups(series, test_days, gap_days=gap_days, common=common)
    rows: list[dict[str, object]] = []
    runs: list[GroupRun] = []
    models: dict[dt.date, TrainedModel] = {}
    train_len = (config.history_days + config.input_len) if config.history_days else 10**9
    for group in groups:
        members = {tk: series[tk] for tk in group.tickers}
        t0 = time.perf_counter()
        if group.through not in models:
            # Every series contributes its history up to the cutoff; fit() drops the rest.
            models[group.through] = fit(inputs, config, group.through, progress=progress)
        model = models[group.through]
        t1 = time.perf_counter()
        model_fc = project_forecasts(
            model, {tk: inputs[tk] for tk in group.tickers}, group.test_after
        )
        t2 = time.perf_counter()
        tut_fc = tutorial_forecasts(
            members, group.through, group.test_after, train_len, max(horizons), tut_cfg
        )
        t3 = time.perf_counter()
        base = baseline_forecasts(members, group, max(horizons), config.interval, garch=garch)
        t4 = time.perf_counter()
        runs.append(GroupRun(group, model, t1 - t0, t2 - t1, t3 - t2, t4 - t3))
        rows += score_rows(
            series, group, model_fc, tut_fc, horizons, base, interval=config.interval
        )
    return AccuracyResult(pd.DataFrame(rows, columns=COLUMNS), runs)


def load_bars(ticker: str) -> pd.DataFrame:
    """Whole bars (``close``, ``high``, ``low``, ``vol``) of one index or panel ticker from
    the shared data, indexed by trade date, ascending (the closes' loaders' files)."""
    if ticker in INDEX_TICKERS:
        df = pd.read_csv(data_dir() / "indices" / f"{ticker}.csv", dtype={"trade_date": str})
        fmt = "%Y-%m-%d"
    else:
        df = pd.read_csv(panel_path(ticker), index_col=0, dtype={"trade_date": str})
        fmt = "%Y%m%d"
    df.index = pd.DatetimeIndex(pd.to_datetime(df["trade_date"].astype(str), format=fmt))
    df = df[~df.index.duplicated(keep="last")].sort_index()
    out: pd.DataFrame = df[["close", "high", "low", "vol"]].apply(pd.to_numeric, errors="coerce")
    out.index.name = "trade_date"
    return out


# ----------------------------------------------------------------------------- report


def _f(x: float, digits: int = 3) -> str:
    return "   nan" if not np.isfinite(x) else f"{x:.{digits}f}"


def format_table(rows: pd.DataFrame) -> str:
    """One line per series: model ratio, tutorial ratio and coverage at each horizon."""
    hs = sorted(int(h) for h in rows["horizon"].unique())
    order = list(dict.fromkeys(rows["ticker"]))

    def wide(col: str) -> pd.DataFrame:  # [series, horizon]
        return rows.pivot(index="ticker", columns="horizon", values=col).reindex(order)

    ratio, tut, cov = wide("ratio"), wide("tutorial_ratio"), wide("coverage")
    through = rows.groupby("ticker")["trained_through"].first()
    n = rows.groupby("ticker")["n_origins"].max()
    head = (
        f"{'ticker':<10} {'through':<10} {'n':>4}  "
        + " ".join(f"{'ratio@' + str(h):>8}" for h in hs)
        + "  "
        + " ".join(f"{'tut@' + str(h):>8}" for h in hs)
        + "  "
        + " ".join(f"{'cov@' + str(h):>7}" for h in hs)
    )
    lines = [head, "-" * len(head)]
    for tk in order:
        r = ratio.loc[tk].to_numpy(dtype=np.float64)  # [len(hs)]
        t = tut.loc[tk].to_numpy(dtype=np.float64)
        c = cov.loc[tk].to_numpy(dtype=np.float64)
        flag = " " if bool(np.all(r <= TARGET_RATIO)) else "*"
        lines.append(
            f"{tk:<10} {through[tk]!s:<10} {int(n[tk]):>4}  "
            + " ".join(f"{_f(x):>8}" for x in r)
            + "  "
            + " ".join(f"{_f(x):>8}" for x in t)
            + "  "
            + " ".join(f"{_f(x, 2):>7}" for x in c)
            + flag
        )
    lines.append("(* = ratio above 1.00 at some horizon; ratio = RMSE / persistence RMSE)")
    return "\n".join(lines)


def format_summary(rows: pd.DataFrame) -> str:
    """How many (series, horizon) pairs meet the targets, and ratio/coverage statistics."""
    ok = rows["ratio"] <= TARGET_RATIO
    lo, hi = TARGET_COVERAGE
    cov_ok = rows["coverage"].between(lo, hi)
    n_series = rows["ticker"].nunique()
    series_ok = int(rows.assign(ok=ok).groupby("ticker")["ok"].all().sum())
    lines = [
        f"ratio <= {TARGET_RATIO:.2f}: {int(ok.sum())}/{len(rows)} series x horizons; "
        f"{series_ok}/{n_series} series at every horizon",
        f"coverage in [{lo:.2f}, {hi:.2f}]: {int(cov_ok.sum())}/{len(rows)} series x horizons",
        f"{'h':>3} {'ratio mean':>10} {'ratio max':>10} {'worst':>10} {'<=1':>6} "
        f"{'cov mean':>9} {'cov min':>8} {'cov max':>8} {'tut mean':>9} {'tut max':>8}",
    ]
    for h, g in rows.groupby("horizon"):
        r = g["ratio"].to_numpy(dtype=np.float64)  # [series]
        worst = str(g["ticker"].to_numpy()[int(np.nanargmax(r))]) if np.isfinite(r).any() else "-"
        lines.append(
            f"{h!s:>3} {_f(g['ratio'].mean(), 4):>10} {_f(g['ratio'].max(), 4):>10} "
            f"{worst:>10} {int((g['ratio'] <= TARGET_RATIO).sum()):>3}/{len(g):<2} "
            f"{_f(g['coverage'].mean()):>9} {_f(g['coverage'].min()):>8} "
            f"{_f(g['coverage'].max()):>8} {_f(g['tutorial_ratio'].mean()):>9} "
            f"{_f(g['tutorial_ratio'].max()):>8}"
        )
    lines.append(
        f"all ratio mean {_f(rows['ratio'].mean(), 4)} max {_f(rows['ratio'].max(), 4)}; "
        f"coverage mean {_f(rows['coverage'].mean())} min {_f(rows['coverage'].min())} "
        f"max {_f(rows['coverage'].max())}; tutorial ratio mean "
        f"{_f(rows['tutorial_ratio'].mean())} max {_f(rows['tutorial_ratio'].max())}"
    )
    for kind, g in rows.groupby("kind"):
        lines.append(
            f"{kind:>6}: ratio mean {_f(g['ratio'].mean(), 4)} max {_f(g['ratio'].max(), 4)}, "
            f"coverage mean {_f(g['coverage'].mean())}, tutorial ratio mean "
            f"{_f(g['tutorial_ratio'].mean())}"
        )
    return "\n".join(lines)


def _geo_mean(x: np.ndarray) -> float:
    x = x[np.isfinite(x) & (x > 0)]
    return float(np.exp(np.mean(np.log(x)))) if len(x) else math.nan


def format_scores(rows: pd.DataFrame) -> str:
    """Per horizon, the model's band beside the baselines' on the same origins: coverage
    pooled over series (weighted by origins), mean width, mean interval (Winkler) score and
    pinball losses (percent of the origin close), and the geometric mean over series of the
    model's interval score over each baseline's, with its target."""
    lo, hi = TARGET_POOLED_COVERAGE
    head = (
        f"{'h':>3} {'method':<10} {'coverage':>8} {'width%':>7} {'winkler':>8} "
        f"{'pb_lo':>6} {'pb_mid':>6} {'pb_hi':>6} {'model/this':>10} {'target':>7}"
    )
    lines = [head, "-" * len(head)]
    for h, g in rows.groupby("horizon"):
        w = g["n_origins"].to_numpy(dtype=np.float64)  # [series]
        for name in ("model", *BASELINES):
            p = "" if name == "model" else f"{name}_"
            cov = g[f"{p}coverage"].to_numpy(dtype=np.float64)
            if not np.isfinite(cov).any():
                continue
            ok = np.isfinite(cov)
            pooled = float(np.sum(cov[ok] * w[ok]) / np.sum(w[ok]))
            ratio, target, flag = math.nan, "", ""
            if name != "model":
                r = g["winkler"].to_numpy(dtype=np.float64) / g[f"{p}winkler"].to_numpy(
                    dtype=np.float64
                )
                ratio = _geo_mean(r)
                target = f"<={TARGET_WINKLER[name]:.2f}"
                flag = " ok" if ratio <= TARGET_WINKLER[name] else " MISS"
            elif not lo <= pooled <= hi:
                flag = f" MISS (coverage target {lo:.2f}-{hi:.2f})"
            lines.append(
                f"{h!s:>3} {name:<10} {pooled:>8.3f} {g[f'{p}width_pct'].mean():>7.2f} "
                f"{g[f'{p}winkler'].mean():>8.3f} {g[f'{p}pinball_lo'].mean():>6.3f} "
                f"{g[f'{p}pinball_mid'].mean():>6.3f} {g[f'{p}pinball_hi'].mean():>6.3f} "
                f"{_f(ratio, 4):>10} {target:>7}{flag}"
            )
    lines.append(
        "(scores in % of the origin close; model/this = geo-mean over series of the model's "
        "interval score / the method's; lower is better)"
    )
    return "\n".join(lines)


def format_runs(runs: Sequence[GroupRun]) -> str:
    """Per model: cutoff, series, validation ratio, shrink factors, timings."""
    lines = []
    for r in runs:
        m = r.model
        shrink = m.calibration.get("shrink", [])
        lines.append(
            f"model through {r.group.through} ({len(m.tickers)} training series, "
            f"{m.n_train_samples} windows, {len(m.history)} epochs) for "
            f"{len(r.group.tickers)} test series: val ratio {_f(m.val_ratio, 4)}, "
            f"val coverage {_f(float(m.calibration.get('val_coverage', math.nan)))}, "
            f"shrink h1/h5/h10 "
            + "/".join(_f(float(shrink[h - 1]), 2) for h in HORIZONS if h <= len(shrink))
            + (
                ", band's head weight h1/h5/h10 "
                + "/".join(_f(float(vw[h - 1]), 2) for h in HORIZONS if h <= len(vw))
                if (vw := m.calibration.get("vol_weight"))
                else ""
            )
            + f"; fit {r.fit_seconds:.0f}s, predict {r.predict_seconds:.1f}s, "
            f"tutorial {r.tutorial_seconds:.1f}s, baselines {r.baseline_seconds:.1f}s"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


def _parse_set(items: Sequence[str]) -> dict[str, object]:
    """``key=value`` pairs for ModelConfig; values parsed as JSON when they parse."""
    known = {f.name for f in fields(ModelConfig)}
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"--set {item!r}: use KEY=VALUE with KEY one of {sorted(known)}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.accuracy",
        description="Rolling-origin accuracy of the global LSTM vs persistence and the "
        "tutorial recipe on real index and A-share closes.",
    )
    p.add_argument("--series-limit", type=int, default=30, help="panel stocks (default 30)")
    p.add_argument(
        "--epochs",
        type=int,
        default=DEFAULT_EPOCHS,
        help=f"max_epochs of the model (default {DEFAULT_EPOCHS}: validation loss is flat after "
        "2-3 epochs on this data (the ridge-started skip is there at epoch 0); the project default is 10)",
    )
    p.add_argument("--device", default=None, help="model device (auto, cpu, cuda, ...)")
    p.add_argument("--quick", action="store_true", help="small settings for a fast check")
    p.add_argument("--test-days", type=int, default=None, help=f"default {TEST_DAYS}")
    p.add_argument("--split", choices=("group", "common"), default="group")
    p.add_argument("--group-gap", type=int, default=31, help="calendar days (default 31)")
    p.add_argument("--no-indices", action="store_true", help="panel stocks only")
    p.add_argument("--no-garch", action="store_true", help="skip the GARCH(1,1)-t baseline")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a ModelConfig field (repeatable), e.g. --set hidden_size=32",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared 2-core machine two OpenMP threads ran "
        "10x slower than one)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"CSV (default {DEFAULT_OUT})")
    p.add_argument("-v", "--verbose", action="store_true", help="log training progress")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides: dict[str, object] = {}
    test_days = TEST_DAYS
    tut = TutorialConfig()
    limit = args.series_limit
    if args.quick:
        # Small enough for a minute on a shared CPU; figures are only a smoke signal.
        overrides.update(hidden_size=16, history_days=400, val_days=40)
        test_days, tut = 60, replace(tut, epochs=30)
        limit = min(limit, 4)
    overrides["max_epochs"] = min(args.epochs, 3) if args.quick else args.epochs
    if args.device:
        overrides["device"] = args.device
    overrides.update(_parse_set(args.set))
    if args.test_days:
        test_days = args.test_days
    config = replace(ModelConfig(), **overrides)  # type: ignore[arg-type]
    tut = replace(tut, seed=config.seed)

    series: dict[str, pd.Series] = {} if args.no_indices else load_indices()
    series.update(choose_panel_tickers(limit))
    bars = {tk: load_bars(tk).reindex(s.index) for tk, s in series.items()}
    print(
        f"accuracy benchmark: {len(series)} series ({sum(t in INDEX_TICKERS for t in series)} "
        f"indices, {limit} panel stocks), last {test_days} trading days each, horizons "
        f"{HORIZONS}, split={args.split}"
    )
    print("model config: " + json.dumps(config.to_dict(), sort_keys=True))
    started = time.perf_counter()
    result = run_accuracy(
        series,
        config,
        test_days=test_days,
        tutorial=tut,
        common=args.split == "common",
        gap_days=args.group_gap,
        garch=not args.no_garch,
        bars=bars,
    )
    print(format_runs(result.runs))
    print()
    print(format_table(result.rows))
    print()
    print(format_summary(result.rows))
    print()
    print(format_scores(result.rows))
    print(f"total {time.perf_counter() - started:.0f}s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result.rows.to_csv(args.out, index=False, float_format="%.6g")
    print(f"rows written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
