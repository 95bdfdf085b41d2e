"""Backfill benchmark: drift-triggered refits against a calendar policy (qlib's rolling default).

The panel (``../shared/data/ashare_qfq_panel``, via the CSV source and the real ingest) goes into
a temporary SQLite database; then the daily pipeline is replayed point-in-time over its last
``--days`` trading days twice, each in a lineage of its own:

1. **drift**: the project's policy (settings defaults): keep while the rolling RMSE ratio to
   naive persistence stays under the threshold, fine-tune (then retrain if that is not enough)
   when it does not, retrain when the model is older than ``max_age_days``;
2. **calendar**: a full retrain every ``--retrain-every`` trading days (20: qlib's rolling
   default) and no drift check in between.

Printed per policy: wall time, refits, training compute (sum of ``model_checks.train_seconds``)
and the RMSE ratio to persistence of the forecasts it wrote (``forecasting.evaluation.evaluation``); then
the compute ratio. Target: the drift policy reaches an equal (within 0.01%) or better RMSE
ratio with at most 1/3 of the calendar policy's training compute.

    python benchmarks/backfill.py [--days 250] [--tickers-limit 150] [--epochs 5]
                                  [--hidden 32] [--retrain-every 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_tmp = Path(tempfile.mkdtemp(prefix="forecasting-bench-backfill-"))
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from sqlalchemy import func, select  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from benchmarks.common import choose_panel_tickers, data_dir  # noqa: E402
from forecasting.data.db import init_db, make_engine  # noqa: E402
from forecasting.data.ingest import ingest  # noqa: E402
from forecasting.data.prices import load_closes  # noqa: E402
from forecasting.data.schema import model_versions, prices  # noqa: E402
from forecasting.data.sources import make_source  # noqa: E402
from forecasting.evaluation.evaluation import evaluate  # noqa: E402
from forecasting.model.lstm import ModelConfig  # noqa: E402
from forecasting.model.training import fit  # noqa: E402
from forecasting.pipeline.backfill import backfill, calendar_policy, trading_days  # noqa: E402
from forecasting.settings import ModelSettings, PolicySettings, Settings  # noqa: E402

# "Equal" RMSE ratio: two policies whose ratios differ by less than 0.01% have written the
# same forecasts for practical purposes; the difference is printed either way.
RATIO_TOLERANCE = 1e-4


def sample_epochs(engine: Engine, lineage: str) -> int:
    """Training windows x epochs run, summed over the lineage's saved versions: a compute
    measure that CPU contention cannot distort (fine-tunes discarded for a full retrain are
    not saved, so it undercounts those)."""
    v = model_versions.c
    total = 0
    with engine.connect() as conn:
        rows = conn.execute(
            select(v.n_train_samples, v.history).where(v.scope.like(f"{lineage}/%"))
        ).all()
    for n, history in rows:
        epochs = [h for h in json.loads(history or "[]") if h.get("epoch", 0) > 0]
        total += int(n or 0) * len(epochs)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--days", type=int, default=250, help="trading days to backfill")
    ap.add_argument("--tickers-limit", type=int, default=150, help="panel tickers to use")
    ap.add_argument("--epochs", type=int, default=5, help="max epochs of a full retrain")
    ap.add_argument("--hidden", type=int, default=32, help="LSTM hidden size (1 layer)")
    ap.add_argument("--retrain-every", type=int, default=20, help="calendar policy period")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument(
        "--abs-threshold",
        default="default",
        help="drift policy's absolute threshold: a number, 'none', or 'default' (settings)",
    )
    ap.add_argument(
        "--max-age-days", type=int, help="drift policy's max_age_days (default: settings)"
    )
    ap.add_argument("--db", help="SQLite file to use (default: a temporary one)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    url = f"sqlite:///{args.db or _tmp / 'backfill.db'}"
    engine = make_engine(url)
    init_db(engine)
    model = ModelSettings(
        input_len=40,
        horizon=5,
        hidden_size=args.hidden,
        num_layers=1,
        dropout=0.0,
        max_epochs=args.epochs,
        patience=2,
        val_days=40,
        history_days=500,
        batch_size=512,
        finetune_epochs=max(1, args.epochs // 2),
        finetune_days=250,
    )
    policy = PolicySettings()
    if args.abs_threshold != "default":
        none = args.abs_threshold.lower() == "none"
        policy = replace(policy, abs_threshold=None if none else float(args.abs_threshold))
    if args.max_age_days is not None:
        policy = replace(policy, max_age_days=args.max_age_days)
    settings = Settings(database_url=url, model=model, policy=policy)

    tickers = sorted(choose_panel_tickers(args.tickers_limit))
    source = make_source("csv", path=data_dir() / "ashare_qfq_panel")
    t0 = time.perf_counter()
    report = ingest(
        engine,
        source,
        tickers=tickers,
        end=dt.date(2019, 1, 31),
        history_start=dt.date(2005, 1, 1),
        progress=False,
    )
    print(f"ingest: {report.summary().splitlines()[0]} ({time.perf_counter() - t0:.1f}s)")
    with engine.connect() as conn:
        last = conn.execute(select(func.max(prices.c.trade_date))).scalar()
        if last is None:
            raise SystemExit("no prices were ingested; check ../shared/data")
        days = trading_days(conn, dt.date(2000, 1, 1), last, tickers)[-args.days :]
    start, end = days[0], days[-1]
    print(
        f"backfill {len(days)} trading days {start}..{end}, {len(tickers)} tickers, "
        f"LSTM hidden {args.hidden} x1 layer, <= {args.epochs} epochs, {args.threads} threads; "
        f"drift policy: rel {policy.rel_threshold}, abs {policy.abs_threshold}, "
        f"max age {policy.max_age_days}d"
    )

    # Warm torch up outside the timed runs, on the full panel: the first fit in a process pays
    # one-off costs (allocator growth, kernel selection for these shapes) that would otherwise
    # be charged to whichever policy happens to run first.
    with engine.connect() as conn:
        warm = load_closes(conn, tickers=tickers, through=start)
    t0 = time.perf_counter()
    fit(warm, ModelConfig.from_settings(replace(model, max_epochs=1)), start)
    print(f"warm-up fit (1 epoch, not counted): {time.perf_counter() - t0:.1f}s", flush=True)

    policies = {
        "drift": (settings, None),
        f"calendar/{args.retrain_every}d": (calendar_policy(settings), args.retrain_every),
    }
    figures: dict[str, dict[str, float]] = {}
    for name, (s, every) in policies.items():
        t0 = time.perf_counter()
        result = backfill(engine, s, start, end, tickers=tickers, retrain_every=every)
        wall = time.perf_counter() - t0
        with engine.connect() as conn:
            ev = evaluate(conn, start=start, end=end, lineage=result.lineage)
        figures[name] = {
            "wall_seconds": wall,
            "retrains": ev.n_retrains,
            "finetunes": ev.n_finetunes,
            "train_seconds": ev.train_seconds,
            "rmse_ratio": ev.rmse_ratio,
            "rmse_ratio_h1": float(ev.by_horizon["rmse_ratio"].iloc[0]),
            "n_forecasts_scored": int(ev.overall["n"]),
            "sample_epochs": sample_epochs(engine, result.lineage),
        }
        f = figures[name]
        print(
            f"  {name:<14} wall {wall:7.1f}s  retrains {f['retrains']:3d}  fine-tunes "
            f"{f['finetunes']:3d}  training {f['train_seconds']:7.1f}s "
            f"({f['sample_epochs'] / 1e6:.2f}M sample-epochs)  RMSE/naive "
            f"{f['rmse_ratio']:.6f} (h1 {f['rmse_ratio_h1']:.6f}, n={f['n_forecasts_scored']})",
            flush=True,
        )

    drift, cal = figures["drift"], figures[f"calendar/{args.retrain_every}d"]
    compute = (
        drift["train_seconds"] / cal["train_seconds"] if cal["train_seconds"] else float("nan")
    )
    ok_compute = compute <= 1 / 3
    ok_ratio = drift["rmse_ratio"] <= cal["rmse_ratio"] * (1 + RATIO_TOLERANCE)
    se = drift["sample_epochs"] / cal["sample_epochs"] if cal["sample_epochs"] else float("nan")
    print()
    print(f"training compute drift / calendar: {compute:.3f}  (target <= 0.333: {ok_compute})")
    print(f"sample-epochs drift / calendar: {se:.3f}")
    print(
        f"RMSE ratio drift {drift['rmse_ratio']:.6f} vs calendar {cal['rmse_ratio']:.6f}  "
        f"(difference {drift['rmse_ratio'] / cal['rmse_ratio'] - 1:+.2e}; target drift <= "
        f"calendar within {RATIO_TOLERANCE:.0e}: {ok_ratio})"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "figures": figures, "compute_ratio": compute}, indent=2)
        )


if __name__ == "__main__":
    main()
