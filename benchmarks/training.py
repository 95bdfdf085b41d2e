"""Training-loop throughput, FLOP rates and windowing memory on the real A-share panel.

Prints, from one run on one machine:

* samples/s of the project's training loop (``forecasting.model.training.fit``) beside a bare
  ``nn.LSTM`` forward/backward/Adam loop with the same shapes, batch size and thread count,
  and their ratio (target >= 0.9);
* the machine's float32 matmul GFLOP/s and the model's achieved GFLOP/s (LSTM gate FLOPs,
  forward + backward ~= 3x forward);
* peak memory of windowing the whole 150-ticker panel (tracemalloc + RSS delta; target <= 1 GiB).

Run from the project root::

    python benchmarks/training.py                 # CPU, about 1 minute on an idle machine
    python benchmarks/training.py --device cuda   # on a GPU machine: GPU samples/s
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import resource
import sys
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forecasting.model.lstm import ModelConfig, lstm_flops_per_sample  # noqa: E402
from forecasting.model.training import build_dataset, fit  # noqa: E402
from forecasting.model.windows import TensorWindows, WindowView  # noqa: E402

GiB = 1024**3


def read_panel(folder: Path) -> dict[str, pd.Series]:
    """Closes of every CSV in the tushare ``pro_bar`` panel (newest-first, YYYYMMDD dates)."""
    out = {}
    for path in sorted(folder.glob("*.csv")):
        df = pd.read_csv(path, index_col=0, dtype={"trade_date": str})
        dates = [dt.date(int(s[:4]), int(s[4:6]), int(s[6:])) for s in df["trade_date"]]
        out[path.name.split(".daily")[0].upper()] = pd.Series(
            df["close"].to_numpy(float), index=dates
        ).sort_index()
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, n: int = 1024, seconds: float = 1.0) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            a @ b
        reps += 10
        sync(device)
    return 2.0 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def bare_loop(cfg: ModelConfig, n_samples: int, device: torch.device) -> float:
    """samples/s of nn.LSTM + linear head + MSE + Adam on one pre-built random batch."""
    torch.manual_seed(0)
    q = len(cfg.quantiles)
    lstm = nn.LSTM(
        1,
        cfg.hidden_size,
        cfg.num_layers,
        batch_first=True,
        dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
    ).to(device)
    head = nn.Linear(cfg.hidden_size, cfg.horizon * q).to(device)
    opt = torch.optim.Adam([*lstm.parameters(), *head.parameters()], lr=cfg.lr)
    x = torch.randn(cfg.batch_size, cfg.input_len, 1, device=device)  # [B, L, 1]
    y = torch.randn(cfg.batch_size, cfg.horizon * q, device=device)  # [B, H*Q]

    def step() -> None:
        out, _ = lstm(x)  # [B, L, Hd]
        loss = ((head(out[:, -1]) - y) ** 2).mean()  # [B, H*Q]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    sync(device)
    steps = max(1, n_samples // cfg.batch_size)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def windowing_memory(series: dict[str, pd.Series], cfg: ModelConfig) -> dict[str, float]:
    """Peak memory of building the windows of the whole panel and drawing batches from them."""
    gc.collect()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    t0 = time.perf_counter()
    through = max(s.index[-1] for s in series.values())
    ds = build_dataset(series, cfg, through)
    view = WindowView(ds.panel, cfg.input_len, cfg.horizon)
    tw = TensorWindows(ds.panel, cfg.input_len, cfg.horizon, torch.device("cpu"))
    rng = np.random.default_rng(0)
    for _ in range(20):  # draw batches the way training does
        idx = rng.choice(ds.train_idx, cfg.batch_size)
        view.inputs(idx), view.targets(idx)
        tw.inputs(torch.from_numpy(idx)), tw.train_targets(torch.from_numpy(idx))
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    n_windows = len(ds.train_idx) + len(ds.val_idx)
    return {
        "series": len(ds.panel.tickers),
        "observations": int(ds.panel.offsets[-1]),
        "windows": n_windows,
        "peak_traced": peak,
        "rss_delta": rss1 - rss0,
        "materialized": n_windows * (cfg.input_len + cfg.horizon) * 4.0,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--tickers", type=int, default=10, help="tickers in the throughput run")
    p.add_argument("--history-days", type=int, default=300)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--cell", default="lstm")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    panel_dir = args.data / "ashare_qfq_panel"
    t0 = time.perf_counter()
    series = read_panel(panel_dir)
    print(f"read {len(series)} series from {panel_dir} in {time.perf_counter() - t0:.1f}s")
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (a busy machine "
        "oversubscribes torch's threads and slows both loops; compare --threads 1)"
    )

    default = ModelConfig()
    mem = windowing_memory(series, default)
    print(
        f"\nwindowing, whole panel (L={default.input_len}, H={default.horizon}, "
        f"history_days={default.history_days}): {mem['series']} series, "
        f"{mem['observations']:,} observations, {mem['windows']:,} windows in "
        f"{mem['seconds']:.2f}s\n"
        f"  peak traced memory {mem['peak_traced'] / 2**20:.1f} MiB, "
        f"max-RSS delta {mem['rss_delta'] / 2**20:.1f} MiB (target <= 1024 MiB); "
        f"materializing every window would take {mem['materialized'] / 2**20:.0f} MiB"
    )
    with_all = replace(default, history_days=0)
    mem_all = windowing_memory(series, with_all)
    print(
        f"  full history (history_days=0): {mem_all['windows']:,} windows, peak traced "
        f"{mem_all['peak_traced'] / 2**20:.1f} MiB, max-RSS delta "
        f"{mem_all['rss_delta'] / 2**20:.1f} MiB (materialized: "
        f"{mem_all['materialized'] / GiB:.2f} GiB)"
    )

    cfg = ModelConfig(
        cell=args.cell,
        hidden_size=args.hidden,
        num_layers=args.layers,
        batch_size=args.batch,
        max_epochs=args.epochs,
        patience=args.epochs,
        history_days=args.history_days,
        device=args.device,
    )
    subset = dict(list(series.items())[: args.tickers])
    through = dt.date(2018, 12, 28)
    gflops = matmul_gflops(device)
    bare_before = bare_loop(cfg, 5 * cfg.batch_size, device)
    t0 = time.perf_counter()
    model = fit(subset, cfg, through, progress=False)
    fit_seconds = time.perf_counter() - t0
    epochs = [h for h in model.history if h["epoch"] >= 1]
    loop_seconds = sum(h["train_seconds"] for h in epochs)
    samples = model.n_train_samples * len(epochs)
    ours = samples / loop_seconds
    bare_after = bare_loop(cfg, 5 * cfg.batch_size, device)
    bare = (bare_before + bare_after) / 2
    flops = 3.0 * lstm_flops_per_sample(cfg)  # forward + backward ~= 3x forward
    print(
        f"\ntraining throughput: {len(model.tickers)} series, {model.n_train_samples:,} windows, "
        f"{len(epochs)} epochs, {cfg.cell} hidden={cfg.hidden_size} layers={cfg.num_layers} "
        f"L={cfg.input_len} H={cfg.horizon} Q={len(cfg.quantiles)} batch={cfg.batch_size}\n"
        f"  project loop  {ours:10,.0f} samples/s  (optimization loop; whole fit() incl. "
        f"dataset, validation and calibration: {samples / fit_seconds:,.0f} samples/s)\n"
        f"  bare nn.LSTM  {bare:10,.0f} samples/s  (before {bare_before:,.0f}, after "
        f"{bare_after:,.0f})\n"
        f"  ratio         {ours / bare:10.3f}  (target >= 0.9)\n"
        f"\nmatmul float32: {gflops:,.1f} GFLOP/s; model: {flops / 1e6:.1f} MFLOP per training "
        f"sample, achieved {ours * flops / 1e9:,.2f} GFLOP/s "
        f"({100 * ours * flops / 1e9 / gflops:.1f}% of matmul)"
    )
    print(
        f"\nvalidation after {len(epochs)} epochs: rmse {model.val_rmse:.4f} vs persistence "
        f"{model.val_naive_rmse:.4f} (ratio {model.val_ratio:.4f}), interval coverage "
        f"{model.calibration['val_coverage']:.3f}"
    )


if __name__ == "__main__":
    main()
