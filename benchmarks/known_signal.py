"""Signal benchmark: does the model learn a conditional mean that is known to exist?

(Named ``known_signal.py``, not ``signal.py``: run as a script, this folder comes first on
``sys.path``, and a ``signal.py`` here would stand in for the standard library's ``signal``
module, which ``subprocess`` and ``asyncio`` import, breaking every other benchmark script.)

Synthetic panels whose log-returns have a known conditional mean, so the best possible h-step
forecast (the *oracle*) is known exactly:

- ``ar1_0.3`` / ``ar1_0.15``: AR(1) daily log-returns, ``r[t+1] = phi r[t] + e``;
- ``ou``: a mean-reverting (Ornstein-Uhlenbeck) log price, ``x[t+1] - mu = (1 - kappa)(x[t] - mu)
  + e`` with ``kappa`` = :data:`OU_KAPPA` (half-life about a week);
- ``weekly``: a zero-mean weekday pattern in the returns (:data:`WEEKLY_PATTERN`, in units of the
  noise's std).

Each panel: ``--series`` (50) series of ``--days`` (2,500) business days, Gaussian noise of
:data:`SIGMA` a day. Rolling origins over the last ``--test-days`` (250) days; the model is
trained (:func:`forecasting.model.training.fit`, **project defaults**) through the day before
them and forecasts every origin through :func:`forecasting.model.inference.predict`, calibration
included, exactly as the pipeline does. Beside it, on the same origins: the oracle, and a pooled
ridge AR(20) on normalized returns, fitted on the same training span (one regression per
horizon, direct).

Printed per process, seed and horizon: RMSE of the log price as a ratio to persistence, for the
model, the oracle and the ridge, and the model's share of the oracle's gain,
``(1 - ratio_model) / (1 - ratio_oracle)``; then the targets (>= 80% of the oracle's h=1 gain on
``ar1_0.3``, >= 50% on ``ar1_0.15`` and ``ou``, every seed) and the training time of each fit.

    .venv/bin/python -m benchmarks.known_signal                      # full run (~1 h on a loaded 2-core box)
    .venv/bin/python -m benchmarks.known_signal --quick              # 10 series, 1 seed, smoke run
    .venv/bin/python -m benchmarks.known_signal --process ar1_0.3 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.accuracy import project_forecasts  # noqa: E402
from forecasting.model.lstm import ModelConfig  # noqa: E402
from forecasting.model.training import fit  # noqa: E402

SIGMA = 0.02
OU_KAPPA = 0.1
WEEKLY_PATTERN = (0.4, 0.1, -0.2, -0.4, 0.1)  # Monday..Friday mean return / SIGMA, sums to 0
HORIZONS = (1, 5, 10)
RIDGE_LAGS = 20
RIDGE_LAMBDA = 10.0
TARGETS = {"ar1_0.3": 0.80, "ar1_0.15": 0.50, "ou": 0.50}  # share of the oracle's h=1 gain
PROCESSES = ("ar1_0.3", "ar1_0.15", "ou", "weekly")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "known_signal.csv"

log = logging.getLogger("benchmarks.known_signal")


@dataclass(frozen=True)
class Panel:
    """Log prices ``[S, T]`` on business days, and the oracle's expected h-step log change
    ``[S, T, H]`` from each day (NaN where it is not defined)."""

    dates: pd.DatetimeIndex
    log_price: np.ndarray
    oracle: np.ndarray


def simulate(process: str, n_series: int, n_days: int, horizon: int, seed: int) -> Panel:
    """One synthetic panel; deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    e = rng.normal(0.0, SIGMA, (n_series, n_days))  # [S, T]
    dates = pd.bdate_range("2010-01-04", periods=n_days)  # a Monday: position t is weekday t%5
    k = np.arange(1, horizon + 1)  # [H]
    oracle = np.full((n_series, n_days, horizon), np.nan)
    if process.startswith("ar1_"):
        phi = float(process.split("_")[1])
        r = np.zeros_like(e)
        r[:, 0] = e[:, 0] / math.sqrt(1 - phi * phi)
        for t in range(1, n_days):
            r[:, t] = phi * r[:, t - 1] + e[:, t]
        x = np.cumsum(r, axis=1)
        # E[r(t+1) + ... + r(t+h) | r(t)] = r(t) phi (1 - phi^h) / (1 - phi)
        oracle[:] = r[:, :, None] * (phi * (1 - phi**k) / (1 - phi))[None, None, :]
    elif process == "ou":
        mu = rng.normal(0.0, 0.5, (n_series, 1))  # [S, 1]
        dev = np.zeros_like(e)
        dev[:, 0] = e[:, 0] / math.sqrt(OU_KAPPA * (2 - OU_KAPPA))
        for t in range(1, n_days):
            dev[:, t] = (1 - OU_KAPPA) * dev[:, t - 1] + e[:, t]
        x = mu + dev
        oracle[:] = dev[:, :, None] * ((1 - OU_KAPPA) ** k - 1)[None, None, :]
    elif process == "weekly":
        pattern = SIGMA * np.asarray(WEEKLY_PATTERN)  # [5]
        day = np.arange(n_days)
        x = np.cumsum(pattern[day % 5][None, :] + e, axis=1)
        ahead = pattern[(day[:, None] + k[None, :]) % 5]  # [T, H] mean return on day t+k
        oracle[:] = np.cumsum(ahead, axis=1)[None, :, :]
    else:
        raise SystemExit(f"unknown process {process!r}; use one of {PROCESSES}")
    return Panel(dates, x + math.log(30.0), oracle)


def as_series(panel: Panel) -> dict[str, pd.Series]:
    """Closes per synthetic ticker, as the pipeline reads them."""
    return {
        f"S{i:03d}.SH": pd.Series(np.exp(panel.log_price[i]), index=panel.dates)
        for i in range(panel.log_price.shape[0])
    }


def ridge_forecasts(panel: Panel, test_start: int, horizons: Sequence[int]) -> np.ndarray:
    """Pooled ridge AR(``RIDGE_LAGS``) forecasts of the h-step log change, ``[S, T_test, H]``.

    Returns are divided by each series' training-span std (as the model's inputs are); one
    direct regression per horizon, fitted on every training origin of every series (targets
    before ``test_start``)."""
    x = panel.log_price
    r = np.diff(x, axis=1, prepend=x[:, :1])  # [S, T]; r[:, 0] = 0
    std = r[:, 1:test_start].std(axis=1, keepdims=True)  # [S, 1]
    z = r / std
    p = RIDGE_LAGS
    n_days = x.shape[1]
    feats = np.lib.stride_tricks.sliding_window_view(z, p, axis=1)  # [S, T-p+1, p]; ends at t
    origins = np.arange(p, n_days)  # feature window z[t-p+1..t] is feats[:, t-p+1]
    out = np.full((x.shape[0], n_days - test_start, len(horizons)), np.nan)
    for j, h in enumerate(horizons):
        tr = origins[origins + h < test_start]
        a = feats[:, tr - p + 1].reshape(-1, p)  # [S*T_tr, p]
        y = ((x[:, tr + h] - x[:, tr]) / std).reshape(-1)  # [S*T_tr]
        a1 = np.c_[a, np.ones(len(a))]
        reg = RIDGE_LAMBDA * np.eye(p + 1)
        reg[-1, -1] = 0.0
        beta = np.linalg.solve(a1.T @ a1 + reg, a1.T @ y)  # [p+1]
        te = np.arange(test_start, n_days)
        ft = np.c_[feats[:, te - p + 1].reshape(-1, p), np.ones(x.shape[0] * len(te))]
        out[:, :, j] = (ft @ beta).reshape(x.shape[0], len(te)) * std
    return out


def _ratio(pred: np.ndarray, actual: np.ndarray) -> float:
    ok = np.isfinite(pred) & np.isfinite(actual)
    return float(np.sqrt(np.mean((pred[ok] - actual[ok]) ** 2) / np.mean(actual[ok] ** 2)))


def run_one(
    process: str,
    seed: int,
    config: ModelConfig,
    *,
    n_series: int,
    n_days: int,
    test_days: int,
    horizons: Sequence[int] = HORIZONS,
) -> list[dict[str, object]]:
    """Simulate, train at ``config`` (seeded), forecast every test origin; one row per horizon."""
    panel = simulate(process, n_series, n_days, config.horizon, seed)
    series = as_series(panel)
    test_start = n_days - test_days  # first origin position
    through = panel.dates[test_start - 1].date()
    cfg = replace(config, seed=seed)
    t0 = time.perf_counter()
    model = fit(series, cfg, through, progress=False)
    fit_seconds = time.perf_counter() - t0
    fc = project_forecasts(model, series, through)  # [T_test - 1, H] per ticker
    ridge = ridge_forecasts(panel, test_start, horizons)  # [S, T_test, len(horizons)]
    x = panel.log_price
    rows: list[dict[str, object]] = []
    for j, h in enumerate(horizons):
        t = np.arange(test_start, n_days - h)  # origins with a target
        actual = x[:, t + h] - x[:, t]  # [S, T] realized log change
        oracle = panel.oracle[:, t, h - 1]
        model_change = np.stack(
            [np.log(fc[tk][0][t - test_start, h - 1]) - x[i, t] for i, tk in enumerate(series)]
        )  # [S, T]
        r_model = _ratio(model_change, actual)
        r_oracle = _ratio(oracle, actual)
        r_ridge = _ratio(ridge[:, t - test_start, j], actual)
        gain = 1.0 - r_oracle
        rows.append(
            {
                "process": process,
                "seed": seed,
                "horizon": h,
                "n": int(actual.size),
                "model_ratio": r_model,
                "oracle_ratio": r_oracle,
                "ridge_ratio": r_ridge,
                "model_share": (1.0 - r_model) / gain if gain > 0 else math.nan,
                "ridge_share": (1.0 - r_ridge) / gain if gain > 0 else math.nan,
                "shrink": float(model.calibration["shrink"][h - 1]),
                "shrink_ls": float(model.calibration["shrink_ls"][h - 1]),
                "epochs": len(model.history) - 1,
                "fit_seconds": fit_seconds,
            }
        )
    return rows


def format_rows(rows: pd.DataFrame) -> str:
    head = (
        f"{'process':<9} {'seed':>4} {'h':>3} {'model':>7} {'oracle':>7} {'ridge':>7} "
        f"{'share':>6} {'ridge%':>6} {'target':>6} {'shrink':>6} {'a_ls':>6} {'ep':>3} "
        f"{'fit s':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows.itertuples(index=False):
        target = TARGETS.get(str(r.process)) if r.horizon == 1 else None
        flag = "" if target is None else ("ok" if r.model_share >= target else "MISS")
        lines.append(
            f"{r.process:<9} {r.seed:>4} {r.horizon:>3} {r.model_ratio:>7.4f} "
            f"{r.oracle_ratio:>7.4f} {r.ridge_ratio:>7.4f} {r.model_share:>6.0%} "
            f"{r.ridge_share:>6.0%} {(f'{target:.0%}' if target else ''):>6} {r.shrink:>6.2f} "
            f"{r.shrink_ls:>6.2f} {r.epochs:>3} {r.fit_seconds:>6.0f} {flag}"
        )
    lines.append(
        "(ratios: RMSE of the log price / persistence's; share = (1 - model) / (1 - oracle))"
    )
    return "\n".join(lines)


def format_summary(rows: pd.DataFrame) -> str:
    lines = []
    h1 = rows[rows["horizon"] == 1]
    for process, g in h1.groupby("process", sort=False):
        target = TARGETS.get(str(process))
        shares = g["model_share"].to_numpy(dtype=np.float64)
        met = (
            ""
            if target is None
            else (
                f"target >= {target:.0%}: "
                + ("met" if bool(np.all(shares >= target)) else "MISSED")
            )
        )
        lines.append(
            f"{process:<9} h=1 share of oracle gain: min {shares.min():.0%}, mean "
            f"{shares.mean():.0%} over {len(shares)} seeds (ridge mean "
            f"{g['ridge_share'].mean():.0%}); {met}"
        )
    lines.append(
        f"training time per fit: mean {rows['fit_seconds'].mean():.0f}s, max "
        f"{rows['fit_seconds'].max():.0f}s ({torch.get_num_threads()} torch thread(s))"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.known_signal", description=__doc__.split("\n")[0]
    )
    p.add_argument("--process", action="append", choices=PROCESSES, help="repeatable; default all")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--series", type=int, default=50)
    p.add_argument("--days", type=int, default=2500)
    p.add_argument("--test-days", type=int, default=250)
    p.add_argument("--quick", action="store_true", help="10 series, seed 0: a smoke run")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a ModelConfig field (repeatable)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    torch.set_num_threads(args.threads)
    overrides: dict[str, object] = {"device": "cpu"}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    config = replace(ModelConfig(), **overrides)  # type: ignore[arg-type]
    n_series, seeds = (10, [0]) if args.quick else (args.series, args.seeds)
    processes = args.process or list(PROCESSES)
    print(
        f"signal benchmark: {n_series} series x {args.days} days, last {args.test_days} days "
        f"as rolling origins, seeds {seeds}; model at project defaults"
        + (f" with {overrides}" if len(overrides) > 1 else "")
    )
    rows: list[dict[str, object]] = []
    run: Callable[[str, int], list[dict[str, object]]] = lambda proc, seed: run_one(  # noqa: E731
        proc, seed, config, n_series=n_series, n_days=args.days, test_days=args.test_days
    )
    started = time.perf_counter()
    for process in processes:
        for seed in seeds:
            rows += run(process, seed)
            print(format_rows(pd.DataFrame(rows[-len(HORIZONS) :])).splitlines()[2], flush=True)
    frame = pd.DataFrame(rows)
    print()
    print(format_rows(frame))
    print()
    print(format_summary(frame))
    print(f"total {time.perf_counter() - started:.0f}s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False, float_format="%.6g")
    return 0


if __name__ == "__main__":
    sys.exit(main())
