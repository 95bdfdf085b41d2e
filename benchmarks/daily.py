"""Daily pipeline benchmark: Prefect overhead vs the bare forecast step, and scaling per ticker.

1. Pipeline overhead: a daily run (real Prefect flow, no retraining, no ingest) over the
   150-ticker panel, timed after the Prefect API server has started, against the bare forecast
   step (load the model, forward pass, write the rows in one transaction) for the same tickers,
   in the same process. Target: at most 2x the bare step. Also timed with Prefect's flow-run
   heartbeat off, which otherwise adds an idle wait of up to 1 s to every flow run.
2. Scaling: the same daily run over 150 .. 1,500 tickers (the panel tiled with shifted copies).
   Target: linear, and <= 20 ms per ticker on 2 cores.

    python benchmarks/daily.py [--sizes 150,500,1000,1500] [--repeat 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "ashare_qfq_panel"

_tmp = Path(tempfile.mkdtemp(prefix="forecasting-bench-daily-"))
os.environ.setdefault("PREFECT_HOME", str(_tmp / "prefect"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("TQDM_DISABLE", "1")

import pandas as pd  # noqa: E402
from sqlalchemy import delete, select  # noqa: E402

from forecasting.data.db import init_db, make_engine  # noqa: E402
from forecasting.data.ingest import ingest  # noqa: E402
from forecasting.data.schema import forecasts, pipeline_runs, prices  # noqa: E402
from forecasting.data.sources import make_source  # noqa: E402
from forecasting.data.sources.base import BAR_COLUMNS, Security  # noqa: E402
from forecasting.pipeline.daily import run_pipeline  # noqa: E402
from forecasting.pipeline.forecast import forecast  # noqa: E402
from forecasting.pipeline.forecast_store import write_forecasts  # noqa: E402
from forecasting.pipeline.refit import train  # noqa: E402
from forecasting.pipeline.scopes import scope_units  # noqa: E402
from forecasting.settings import ModelSettings, Settings  # noqa: E402

AS_OF = dt.date(2018, 12, 28)


class TiledPanel:
    """The panel tiled with shifted copies: copy k of a ticker has its closes shifted by k*7
    trading days (dates unchanged), so no two series are identical. A real PriceSource."""

    name = "tiled"

    def __init__(self, base: dict[str, pd.DataFrame], copies: int) -> None:
        self.base = base
        self.copies = copies

    def tickers(self) -> list[str]:
        out = []
        for k in range(self.copies):
            out += [self._name(t, k) for t in sorted(self.base)]
        return out

    @staticmethod
    def _name(ticker: str, k: int) -> str:
        return ticker if k == 0 else f"{ticker[:6]}K{k:02d}.{ticker[-2:]}"

    def security(self, ticker: str) -> Security:
        return Security(ticker, None, "stock", None)

    def fetch_bars(self, ticker: str, start: dt.date, end: dt.date) -> pd.DataFrame:
        k = 0 if "K" not in ticker else int(ticker[7:9])
        orig = ticker if k == 0 else f"{ticker[:6]}.{ticker[-2:]}"
        df = self.base[orig].copy()
        if k:
            cols = ["open", "high", "low", "close", "volume", "amount"]
            df[cols] = df[cols].shift(k * 7).bfill()
        df["ticker"] = ticker
        df = df[(df.trade_date >= start) & (df.trade_date <= end)]
        return df[list(BAR_COLUMNS)].reset_index(drop=True)

    def trading_calendar(self, start: dt.date, end: dt.date) -> None:
        return None


def timed(fn, repeat: int) -> float:
    best = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best.append(time.perf_counter() - t0)
    return statistics.median(best)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="150,500,1000,1500")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument(
        "--history-days", type=int, default=300, help="trading days of prices per ticker"
    )
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]

    import torch

    torch.set_num_threads(2)
    url = f"sqlite:///{_tmp / 'bench.db'}"
    os.environ["FORECASTING_DATABASE_URL"] = url
    engine = make_engine(url)
    init_db(engine)
    model = ModelSettings(max_epochs=1, history_days=250, val_days=40)
    settings = Settings(database_url=url, model=model)

    print(f"loading the panel from {DATA} ...", flush=True)
    files = make_source("csv", path=DATA)
    start = AS_OF - dt.timedelta(days=int(args.history_days * 1.5))
    base = {t: files.fetch_bars(t, start, AS_OF) for t in files.tickers()}
    base = {t: b for t, b in base.items() if len(b) > 100}
    copies = -(-max(sizes) // len(base))
    source = TiledPanel(base, copies)
    t0 = time.perf_counter()
    ingest(engine, source, end=AS_OF, history_start=start, progress=False)
    print(
        f"ingested {len(source.tickers())} tickers in {time.perf_counter() - t0:.1f}s", flush=True
    )
    all_tickers = source.tickers()
    panel = sorted(base)

    print("training one global model on the panel (not timed) ...", flush=True)
    train(engine, settings.with_overrides(tickers=tuple(panel)), through=AS_OF)

    from forecasting_flows.daily import daily

    def clear() -> None:
        with engine.begin() as conn:
            conn.execute(delete(forecasts))
            conn.execute(delete(pipeline_runs))

    def flow_run(tickers: list[str]) -> None:
        clear()
        summary = daily(as_of=AS_OF.isoformat(), ingest=False, rerun=True, tickers=tickers)
        assert summary.status == "success", summary.message

    def bare(tickers: list[str]) -> None:
        clear()
        units = scope_units(settings, tickers)
        run_id = "bench-bare"
        with engine.begin() as conn:
            conn.execute(
                pipeline_runs.insert().values(
                    run_id=run_id,
                    as_of_date=AS_OF,
                    started_at=dt.datetime.now(dt.UTC),
                    status="running",
                )
            )
        batch = forecast(engine, settings, AS_OF, units)
        with engine.begin() as conn:
            write_forecasts(conn, run_id, batch.rows)

    print("starting the Prefect API server (not timed) ...", flush=True)
    flow_run(panel[:5])

    from prefect import flow

    @flow(name="empty")
    def empty() -> None:
        return None

    def library_run(tickers: list[str]) -> None:
        clear()
        summary = run_pipeline(engine, settings, AS_OF, rerun=True, tickers=tickers)
        assert summary.status == "success", summary.message

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    empty()
    t_empty = timed(empty, args.repeat)
    t_flow = timed(lambda: flow_run(panel), args.repeat)
    # Prefect's flow-run heartbeat thread sleeps in 1 s steps and is joined when the run ends,
    # so every flow run waits up to 1 s after its work is done (idle, no CPU). The same flow
    # with heartbeats off shows what the pipeline itself costs on top of the bare step.
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        t_empty_nohb = timed(empty, args.repeat)
        t_flow_nohb = timed(lambda: flow_run(panel), args.repeat)
    t_lib = timed(lambda: library_run(panel), args.repeat)
    t_bare = timed(lambda: bare(panel), args.repeat)
    with engine.connect() as conn:
        n_rows = len(conn.execute(select(forecasts.c.id)).all())
    print()
    print(f"Pipeline overhead, {len(panel)} tickers, as of {AS_OF} (median of {args.repeat})")
    print(f"  daily flow (check + keep + forecast + write, Prefect): {t_flow * 1000:8.1f} ms")
    print(
        f"  bare forecast step (model forward + write):            {t_bare * 1000:8.1f} ms  ({n_rows} rows)"
    )
    print(f"  same pipeline without Prefect (library run_pipeline):  {t_lib * 1000:8.1f} ms")
    print(f"  an empty Prefect flow run (fixed cost per flow run):   {t_empty * 1000:8.1f} ms")
    print(f"  daily flow, Prefect heartbeats off:                    {t_flow_nohb * 1000:8.1f} ms")
    print(f"  an empty Prefect flow run, heartbeats off:             {t_empty_nohb * 1000:8.1f} ms")
    print(f"  ratio flow / bare: {t_flow / t_bare:.2f}x   (target <= 2.0x)")
    print(
        f"  ratio flow with heartbeats off / bare: {t_flow_nohb / t_bare:.2f}x   (target <= 2.0x)"
    )
    print(f"  ratio (flow - empty flow) / bare: {(t_flow - t_empty) / t_bare:.2f}x")
    print(f"  ratio library pipeline / bare: {t_lib / t_bare:.2f}x")

    print()
    print("Scaling: daily flow time per ticker")
    print(f"  {'tickers':>8} {'seconds':>9} {'ms/ticker':>10}")
    per = []
    for n in sizes:
        tickers = all_tickers[:n]
        t = timed(lambda tickers=tickers: flow_run(tickers), args.repeat)
        per.append(t / n * 1000)
        print(f"  {n:>8} {t:>9.2f} {t / n * 1000:>10.2f}", flush=True)
    big = all_tickers[: sizes[-1]]
    t_big_bare = timed(lambda: bare(big), args.repeat)
    print(
        f"  at {sizes[-1]} tickers: flow {t:.2f}s vs bare step {t_big_bare:.2f}s "
        f"-> {t / t_big_bare:.2f}x"
    )
    print(
        f"  ms/ticker at {sizes[-1]} vs {sizes[0]}: {per[-1] / per[0]:.2f}x (linear scaling keeps this <= ~1)"
    )
    print(
        f"  target <= 20 ms/ticker: {'met' if max(per) <= 20 else 'NOT met'} (max {max(per):.2f})"
    )
    with engine.connect() as conn:
        total = conn.execute(select(prices.c.ticker).distinct()).all()
    print(f"  ({len(total)} tickers in the database)")


if __name__ == "__main__":
    main()
