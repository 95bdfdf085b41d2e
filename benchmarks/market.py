"""Whole-market benchmark: a generated market of N tickers x 10 years, on SQLite and Postgres.

For each backend, in this order, each step in a process of its own (so its peak memory is its
own, read from ``getrusage``):

1. generate: the market (a seeded random walk per ticker, clipped to the +-10% limit, with OHLC,
   volume and amount) written into ``prices`` through the ingest's own upsert; the next day's
   bars are kept for the stub. Not a target; its time is printed.
2. model: for each size, a short fit of the global model on that size's tickers, so the daily
   run of each size has a champion (a run restricted to some tickers runs in a lineage of its
   own, with its own models); not a target.
3. ingest: the next day for all N tickers through the by-date path: the real tushare client
   against the local stub (``tests/tushare_stub.py``), which counts the calls. Targets: <= 3
   calls for the day (plus trade_cal and stock_basic), and <= 10 s on SQLite.
4. daily: the day's run without a refit (check -> keep, forecast, publish) at each size.
   Target: <= 5 ms per ticker at 5,000, growing linearly from 500; peak memory <= 2 GiB.
5. retrain: a full retrain of the global model over the largest size, with a fixed budget of
   windows per epoch (model.windows_per_epoch). Target: <= 15 minutes on 2 CPU cores; the
   budget and the validation ratio (model RMSE / persistence RMSE) are printed with it.

    python benchmarks/market.py [--sizes 500,1500,5000] [--years 10] [--backends sqlite,postgres]
                                [--budget 20000] [--epochs 10] [--retrain-backends sqlite]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, where a module named like one of the
# standard library's would stand in for it.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the tushare stub
os.environ.setdefault("TQDM_DISABLE", "1")

#: The market's span: ten years of sessions ending the trading day before the increment.
INCREMENT_DAY = dt.date(2026, 11, 30)  # a Monday
TOKEN = "market-benchmark-token-0b1c"
PG_ADMIN = os.environ.get("FORECASTING_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def market_tickers(n: int) -> list[str]:
    """``n`` main-board codes: 600000.SH upwards, then 000001.SZ upwards."""
    half = (n + 1) // 2
    return [f"{600000 + i}.SH" for i in range(half)] + [f"{i + 1:06d}.SZ" for i in range(n - half)]


def sessions(years: int) -> list[dt.date]:
    """The stub's trading days from ``years`` years before the increment day through it."""
    from tushare_stub import TushareStub

    first = INCREMENT_DAY.replace(year=INCREMENT_DAY.year - years)
    return TushareStub(first=first, last=INCREMENT_DAY).trading_days()


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cpu_seconds() -> float:
    """CPU time of this process so far, all threads: on a shared machine the wall clock also
    counts the time other work held the cores, so both are printed."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------------------------- steps


def step_generate(url: str, n: int, years: int, out: Path) -> dict[str, Any]:
    """The market into ``prices`` (through upsert_prices, chunk by chunk), the next day's bars
    into ``out`` as tushare rows."""
    import numpy as np

    from forecasting.data.db import init_db, make_engine

    engine = make_engine(url)
    init_db(engine)
    days = sessions(years)
    history, increment = days[:-1], days[-1]
    sqlite = engine.dialect.name == "sqlite"
    dates: list[Any] = [d.isoformat() for d in history] if sqlite else list(history)
    source = "tushare"
    assert increment == INCREMENT_DAY, increment
    tickers = market_tickers(n)
    rng = np.random.default_rng(16)
    stamp: Any = dt.datetime.now(dt.UTC)
    if sqlite:
        stamp = stamp.strftime("%Y-%m-%d %H:%M:%S.%f")  # as SQLAlchemy stores a DateTime
    next_day = []
    t0, c0 = time.perf_counter(), cpu_seconds()
    chunk = 250
    for lo in range(0, n, chunk):
        names = tickers[lo : lo + chunk]
        k, t = len(names), len(days)
        vol = rng.uniform(0.012, 0.035, size=(k, 1))
        ret = np.clip(rng.standard_t(4, size=(k, t)) * vol / np.sqrt(2), -0.095, 0.095)
        close = np.round(rng.uniform(5, 80, size=(k, 1)) * np.exp(np.cumsum(ret, axis=1)), 2)
        close = np.maximum(close, 0.01)
        gap = np.clip(rng.normal(0, 0.3, size=(k, t)) * vol, -0.09, 0.09)
        open_ = np.round(close * np.exp(-ret + gap), 2)  # around the previous close
        span = np.abs(rng.normal(0, 0.6, size=(k, t))) * vol
        # within the day's limits around the previous close, as the exchange holds them
        prev = np.concatenate([close[:, :1], close[:, :-1]], axis=1)
        high = np.round(np.minimum(np.maximum(open_, close) * (1 + span), prev * 1.099), 2)
        low = np.round(np.maximum(np.minimum(open_, close) * (1 - span), prev * 0.901), 2)
        high, low = (
            np.maximum(high, np.maximum(open_, close)),
            np.minimum(low, np.minimum(open_, close)),
        )
        volume = np.round(rng.lognormal(10, 1, size=(k, t)), 0)
        amount = np.round(volume * close / 10, 3)
        with engine.begin() as conn:
            for i, ticker in enumerate(names):
                # Straight to the driver (COPY on Postgres, executemany on SQLite), as the
                # ingest's own bulk insert does: generating the market is not what is measured.
                rows = zip(
                    [ticker] * len(history),
                    dates,
                    *(a[i, :-1].tolist() for a in (open_, high, low, close, volume, amount)),
                    [1.0] * len(history),
                    [source] * len(history),
                    [stamp] * len(history),
                    strict=True,
                )
                _insert(conn, rows)
                next_day.append(
                    {
                        "ts_code": ticker,
                        "trade_date": increment.strftime("%Y%m%d"),
                        "open": float(open_[i, -1]),
                        "high": float(high[i, -1]),
                        "low": float(low[i, -1]),
                        "close": float(close[i, -1]),
                        "vol": float(volume[i, -1]),
                        "amount": float(amount[i, -1]),
                        "adj_factor": 1.0,
                    }
                )
    out.write_text(json.dumps(next_day), encoding="utf-8")
    return {
        "seconds": time.perf_counter() - t0,
        "rows": n * len(history),
        "cpu_seconds": cpu_seconds() - c0,
        "peak_mib": peak_mib(),
    }


_COLUMNS = (
    "ticker, trade_date, open, high, low, close, volume, amount, adj_factor, source, ingested_at"
)


def _insert(conn: Any, rows: Any) -> None:
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection
        with raw.cursor() as cur, cur.copy(f"COPY prices ({_COLUMNS}) FROM STDIN") as cp:
            for row in rows:
                cp.write_row(row)
        return
    marks = ", ".join("?" * 11)
    conn.exec_driver_sql(f"INSERT INTO prices ({_COLUMNS}) VALUES ({marks})", list(rows))


def _engine(url: str) -> Any:
    """An engine on ``url`` with the schema brought up to date (``forecasting init-db``)."""
    from forecasting.data.db import init_db, make_engine

    engine = make_engine(url)
    init_db(engine)
    return engine


def _settings(url: str, **model: Any) -> Any:
    from forecasting.settings import ModelSettings, Settings

    return Settings(database_url=url, model=ModelSettings(**model))


def step_model(url: str, sizes: list[int]) -> dict[str, Any]:
    """A champion for the daily run of each size: one short fit on that size's tickers (in
    the lineage a run restricted to them uses)."""
    from forecasting.pipeline.refit import train

    t0 = time.perf_counter()
    s = _settings(url, max_epochs=1, windows_per_epoch=5000)
    for n in sizes:
        train(_engine(url), s, tickers=market_tickers(n))
    return {"seconds": time.perf_counter() - t0, "peak_mib": peak_mib()}


def step_ingest(url: str, n: int, stub_url: str) -> dict[str, Any]:
    """The increment day for all ``n`` tickers, through the by-date path."""
    from forecasting.data.ingest import ingest
    from forecasting.data.sources.tushare_market import TushareMarketSource

    engine = _engine(url)
    source = TushareMarketSource(TOKEN, http_url=stub_url, calls_per_minute=500)
    t0, c0 = time.perf_counter(), cpu_seconds()
    report = ingest(engine, source, tickers=market_tickers(n), end=INCREMENT_DAY, progress=False)
    seconds = time.perf_counter() - t0
    assert report.status == "success", report.summary()
    return {
        "seconds": seconds,
        "inserted": report.inserted,
        "rejected": report.rejected,
        "cpu_seconds": cpu_seconds() - c0,
        "peak_mib": peak_mib(),
    }


def step_daily(url: str, n: int) -> dict[str, Any]:
    """The day's run over the first ``n`` tickers, the champion kept (no refit)."""
    from forecasting.pipeline.daily import run_pipeline

    engine = _engine(url)
    s = _settings(url)
    t0, c0 = time.perf_counter(), cpu_seconds()
    summary = run_pipeline(engine, s, INCREMENT_DAY, rerun=True, tickers=market_tickers(n))
    seconds = time.perf_counter() - t0
    assert summary.status == "success", summary.message
    decisions = sorted({o.action for o in summary.outcomes})
    assert decisions == ["keep"], decisions
    return {
        "seconds": seconds,
        "forecast": len(summary.tickers_forecast),
        "skipped": len(summary.skipped),
        "cpu_seconds": cpu_seconds() - c0,
        "peak_mib": peak_mib(),
    }


def step_retrain(url: str, n: int, budget: int, epochs: int) -> dict[str, Any]:
    """A full retrain over the first ``n`` tickers with ``budget`` windows per epoch."""
    import torch
    from sqlalchemy import select

    from forecasting.data.db import make_engine
    from forecasting.data.schema import model_versions
    from forecasting.pipeline.refit import train

    s = _settings(url, max_epochs=epochs, windows_per_epoch=budget)
    t0, c0 = time.perf_counter(), cpu_seconds()
    outcomes = train(_engine(url), s, tickers=market_tickers(n))
    seconds = time.perf_counter() - t0
    (o,) = outcomes
    v = model_versions.c
    with make_engine(url).connect() as conn:
        history, n_windows = conn.execute(
            select(v.history, v.n_train_samples).where(v.id == o.new_version_id)
        ).one()
    epochs = json.loads(history)[1:]
    return {
        "seconds": seconds,
        "train_seconds": o.train_seconds,
        "epochs": len(epochs),
        "windows_per_epoch": [e.get("windows") for e in epochs][:1],
        "tickers": n,
        "epoch_seconds": [round(e.get("seconds", 0.0), 1) for e in epochs],
        "val_ratio": o.candidate_ratio,
        "n_windows": n_windows,
        "threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cpu_seconds": cpu_seconds() - c0,
        "peak_mib": peak_mib(),
    }


STEPS = {
    "generate": step_generate,
    "model": step_model,
    "ingest": step_ingest,
    "daily": step_daily,
    "retrain": step_retrain,
}


# ----------------------------------------------------------------------------- orchestration


def run_step(name: str, **kw: Any) -> dict[str, Any]:
    """Run one step in a fresh process (its own peak memory); its result is its last line."""
    args = [sys.executable, __file__, "--step", name, "--step-args", json.dumps(kw, default=str)]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"step {name} failed:\n{done.stderr[-4000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def pg_database() -> tuple[str, str]:
    from sqlalchemy import text

    from forecasting.data.db import make_engine

    name = f"forecasting_market_{uuid.uuid4().hex[:8]}"
    admin = make_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}", name


def drop_pg(name: str) -> None:
    from sqlalchemy import text

    from forecasting.data.db import make_engine

    admin = make_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def bench_backend(backend: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from tushare_stub import StubListing, TushareStub

    sizes = [int(x) for x in args.sizes.split(",")]
    n = max(sizes)
    pg_name = None
    if backend == "sqlite":
        url = f"sqlite:///{work / 'market.db'}"
    else:
        url, pg_name = pg_database()
    out: dict[str, Any] = {"backend": backend}
    try:
        day_file = work / f"{backend}-increment.json"
        done_file = work / f"{backend}-generated.json"
        pristine = work / "market-generated.db"  # the market before the increment
        if backend == "sqlite" and done_file.exists():  # --work: reuse the generated market
            out["generate"] = json.loads(done_file.read_text(encoding="utf-8"))
            shutil.copyfile(pristine, work / "market.db")
        else:
            out["generate"] = run_step(
                "generate", url=url, n=n, years=args.years, out=str(day_file)
            )
            out["model"] = run_step("model", url=url, sizes=sizes)
            print(f"  [{backend}] champions for {sizes}: {out['model']}", flush=True)
            if backend == "sqlite":
                shutil.copyfile(work / "market.db", pristine)
            done_file.write_text(json.dumps(out["generate"]), encoding="utf-8")
        print(f"  [{backend}] generated {out['generate']}", flush=True)
        rows = json.loads(day_file.read_text(encoding="utf-8"))
        stub = TushareStub(
            TOKEN,
            row_limit=10_000,
            first=INCREMENT_DAY - dt.timedelta(days=7),
            last=INCREMENT_DAY + dt.timedelta(days=45),
        )
        stub.list_stocks(
            *(
                StubListing(t, f"DEMO {t[:6]}", "主板", "demo", list_date=dt.date(2016, 1, 4))
                for t in market_tickers(n)
            )
        )
        stub.market.day_rows = lambda day: rows if day == INCREMENT_DAY else []
        with stub:
            out["ingest"] = run_step("ingest", url=url, n=n, stub_url=stub.url)
            out["calls"] = dict(stub.call_counts())
        print(f"  [{backend}] ingest {out['ingest']} calls {out['calls']}", flush=True)
        out["daily"] = {}
        for size in sizes:
            out["daily"][size] = run_step("daily", url=url, n=size)
            print(f"  [{backend}] daily at {size}: {out['daily'][size]}", flush=True)
        if backend in args.retrain_backends.split(","):
            out["retrain"] = run_step(
                "retrain", url=url, n=args.retrain_size or n, budget=args.budget, epochs=args.epochs
            )
            print(f"  [{backend}] retrain {out['retrain']}", flush=True)
    finally:
        if pg_name is not None:
            drop_pg(pg_name)
    return out


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    sizes = [int(x) for x in args.sizes.split(",")]
    n = max(sizes)
    print()
    print(f"Whole market: {n} tickers x {args.years} years, increment day {INCREMENT_DAY}")
    print(
        f"Run: backends {args.backends}; daily runs at {args.sizes} tickers; retrain on "
        f"{args.retrain_backends or 'none'}"
        + (
            f" at {args.retrain_size or n} tickers, {args.epochs} epochs of {args.budget} windows"
            if args.retrain_backends not in ("", "none")
            else ""
        )
        + "; the ingest re-reads no day (reread_days 0: each re-read day costs 2 calls more)"
    )
    for r in results:
        b = r["backend"]
        g, ing, calls = r["generate"], r["ingest"], r["calls"]
        print(
            f"\n[{b}] generated {g['rows']:,} rows in {g['seconds']:.0f} s with a bulk load "
            f"(not a target), peak {g['peak_mib']:.0f} MiB"
        )
        by_day = calls.get("daily", 0) + calls.get("adj_factor", 0)
        print(
            f"  ingest of the day, {n} tickers: {ing['seconds']:.2f} s wall, "
            f"{ing['cpu_seconds']:.2f} s CPU (target <= 10 s on SQLite: "
            f"{ing['seconds'] / 10:.2f}x wall, {ing['cpu_seconds'] / 10:.2f}x CPU), "
            f"{ing['inserted']} rows, {ing['rejected']} rejected, peak {ing['peak_mib']:.0f} MiB"
        )
        print(
            f"  tushare calls: {by_day} for the day (daily + adj_factor; target <= 3: "
            f"{by_day / 3:.2f}x), all calls {calls}"
        )
        print(
            f"  daily run without refit: {'tickers':>8} {'wall s':>8} {'ms/ticker':>10} "
            f"{'CPU s':>8} {'CPU ms/ticker':>14} {'peak MiB':>9}"
        )
        per, cpu = {}, {}
        for size in sizes:
            d = r["daily"][size]
            per[size] = d["seconds"] / size * 1000
            cpu[size] = d["cpu_seconds"] / size * 1000
            print(
                f"  {'':25}{size:>8} {d['seconds']:>8.2f} {per[size]:>10.2f} "
                f"{d['cpu_seconds']:>8.2f} {cpu[size]:>14.2f} {d['peak_mib']:>9.0f}"
            )
        top, top_cpu = per[max(sizes)], cpu[max(sizes)]
        print(
            f"  at {n}: {top:.2f} ms/ticker wall, {top_cpu:.2f} CPU (target <= 5: {top / 5:.2f}x "
            f"wall, {top_cpu / 5:.2f}x CPU); ms/ticker at {n} vs {min(sizes)}: "
            f"{top / per[min(sizes)]:.2f}x wall, {top_cpu / cpu[min(sizes)]:.2f}x CPU "
            "(linear: <= ~1); peak "
            f"{r['daily'][n]['peak_mib'] / 1024:.2f} GiB (target <= 2 GiB: "
            f"{r['daily'][n]['peak_mib'] / 2048:.2f}x)"
        )
        if "retrain" in r:
            t = r["retrain"]
            print(
                f"  full retrain at {t['tickers']}: {t['seconds']:.0f} s = {t['seconds'] / 60:.1f} min wall, "
                f"{t['cpu_seconds'] / 60:.1f} min CPU (target <= 15 min: "
                f"{t['seconds'] / 900:.2f}x wall) on {t['device']} with "
                f"{t['threads']} threads; {t['epochs']} epochs of {args.budget} windows (of "
                f"{t['n_windows']:,}); validation ratio {t['val_ratio']:.4f} (model / persistence "
                f"RMSE); peak {t['peak_mib'] / 1024:.2f} GiB; seconds per epoch {t['epoch_seconds']}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="500,1500,5000")
    ap.add_argument("--years", type=int, default=10)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--retrain-backends", default="sqlite,postgres")
    ap.add_argument("--budget", type=int, default=20_000, help="training windows per epoch")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument(
        "--retrain-size", type=int, help="tickers of the retrain (default: the largest size)"
    )
    ap.add_argument("--work", help="keep the generated market here and reuse it (SQLite)")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--step-args", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        import torch

        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
        kw = json.loads(args.step_args)
        if "out" in kw:
            kw["out"] = Path(kw["out"])
        print(json.dumps(STEPS[args.step](**kw)))
        return
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        results = [bench_backend(b, args, Path(args.work)) for b in args.backends.split(",")]
    else:
        with tempfile.TemporaryDirectory(prefix="forecasting-market-") as tmp:
            results = [bench_backend(b, args, Path(tmp)) for b in args.backends.split(",")]
    report(results, args)


if __name__ == "__main__":
    main()
