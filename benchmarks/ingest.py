"""Ingest throughput against a raw bulk load of the same rows, on SQLite and Postgres.

    python benchmarks/ingest.py [--postgres-url URL] [--limit N] [--no-postgres]

Reads ``../shared/data/ashare_qfq_panel`` (150 real tushare CSVs) once through the file source,
then, per backend:

* **raw**: the same rows, straight from the parsed frames into a table of the same shape as
  ``prices`` (same columns, same primary key), with no validation and no comparison: plain
  ``sqlite3`` ``executemany`` in one transaction on SQLite, psycopg ``COPY`` (text rows) on
  Postgres, the reference; a binary ``COPY``, which the ingest itself sends, is printed beside
  it so that the ratio to it is on record too;
* **ingest**: :func:`forecasting.data.ingest.ingest` into an empty database (validation, comparison
  with stored rows, per-ticker transactions, rejected rows, run bookkeeping);
* **no-change, incremental**: the same ingest again; a file is compared whole every run (the
  ingest's rule for files: a corrected file is never ignored), so every row is compared and
  nothing is written (the >= 5x target of an incremental run applies to network sources, which
  fetch only the days after the stored ones and the re-read window);
* **no-change, re-requested**: the same ingest with an explicit ``start`` at the beginning:
  every row is fetched, compared and found unchanged.

Both the raw load and the ingest start from bars already parsed into memory (the file source
caches them), so the CSV parse, timed separately, is not in either figure. The ingest runs with
every check on (range, today, finite and consistent values, price-limit plausibility against
the stored history, revisions, rejected-row fingerprints).

**memory**: a generated CSV of ``--memory-rows`` rows (default 1,000,000: 250 main-board tickers
x 4,000 days, one file with a ``ts_code`` column) ingested whole into SQLite in a fresh process;
its peak resident memory is printed beside that of a process that only imports the same modules.
Targets: ingest >= 0.5x raw rows/s; peak memory of the 1M-row file <= 300 MB.
The Postgres runs use a throwaway database that is dropped afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, where benchmarks/signal.py would stand
# in for the standard library's signal module (that subprocess and the ingest import).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import datetime as dt
import logging
import os
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pandas as pd
from sqlalchemy import text

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forecasting.data.db import init_db, make_engine  # noqa: E402
from forecasting.data.ingest import ingest  # noqa: E402
from forecasting.data.prices import price_summary  # noqa: E402
from forecasting.data.sources.base import BAR_COLUMNS  # noqa: E402
from forecasting.data.sources.files import FileSource  # noqa: E402

DATA = (
    Path(os.environ.get("FORECASTING_SHARED_DATA", ROOT.parent / "shared" / "data"))
    / "ashare_qfq_panel"
)
END = dt.date(2019, 1, 7)
EARLIEST = dt.date(1990, 1, 1)
COLUMNS = (*BAR_COLUMNS, "source", "ingested_at")


def _timed(fn: Callable[[], T]) -> tuple[float, T]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _all_rows(source: FileSource, tickers: list[str]) -> pd.DataFrame:
    frames = [source.fetch_bars(t, EARLIEST, END) for t in tickers]
    frame = pd.concat(frames, ignore_index=True)
    frame["source"] = "raw"
    frame["ingested_at"] = dt.datetime.now(dt.UTC)
    return frame.loc[:, list(COLUMNS)]


def _tuples(rows: pd.DataFrame, *, iso_dates: bool) -> list[tuple]:
    """Row tuples straight from the columns, NaN as None: the cheapest way to feed a driver."""
    cols: list[list] = []
    for name in COLUMNS:
        col = rows[name]
        if name == "trade_date":
            values = [d.isoformat() for d in col.tolist()] if iso_dates else col.tolist()
        elif name == "ingested_at":
            stamp = col.iloc[0].to_pydatetime()
            values = [stamp.isoformat(sep=" ") if iso_dates else stamp] * len(col)
        elif col.dtype == "float64":
            values = [None if v != v else v for v in col.tolist()]
        else:
            values = col.tolist()
        cols.append(values)
    return list(zip(*cols, strict=True))


def raw_sqlite(path: Path, rows: pd.DataFrame) -> float:
    """Plain sqlite3: executemany in one transaction into a table shaped like ``prices``."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute(
        "CREATE TABLE raw_prices (ticker TEXT, trade_date DATE, open FLOAT, high FLOAT, low FLOAT,"
        " close FLOAT NOT NULL, volume FLOAT, amount FLOAT, adj_factor FLOAT, source TEXT,"
        " ingested_at DATETIME, PRIMARY KEY (ticker, trade_date))"
    )
    t0 = time.perf_counter()
    with con:
        con.executemany(
            f"INSERT INTO raw_prices VALUES ({', '.join('?' * len(COLUMNS))})",
            _tuples(rows, iso_dates=True),
        )
    took = time.perf_counter() - t0
    (count,) = con.execute("SELECT count(*) FROM raw_prices").fetchone()
    con.close()
    assert count == len(rows), (count, len(rows))
    return took


def raw_postgres(url: str, rows: pd.DataFrame, *, binary: bool = False) -> float:
    """psycopg COPY (``write_row`` over tuples) into a table shaped like ``prices``; text
    rows (the reference), or ``binary`` (what the ingest itself sends, printed beside it)."""
    import psycopg

    table = "raw_prices_binary" if binary else "raw_prices"
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as con:
        con.execute(f"CREATE TABLE {table} (LIKE prices INCLUDING ALL)")
        con.commit()
        fmt = " (FORMAT BINARY)" if binary else ""
        t0 = time.perf_counter()
        with (
            con.cursor() as cur,
            cur.copy(f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN{fmt}") as cp,
        ):
            if binary:
                cp.set_types(["varchar", "date", *["float8"] * 7, "varchar", "timestamptz"])
            for row in _tuples(rows, iso_dates=False):
                cp.write_row(row)
        con.commit()
        took = time.perf_counter() - t0
        count = con.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert count is not None and count[0] == len(rows), (count, len(rows))
    return took


def bench(
    label: str, url: str, source: FileSource, tickers: list[str], raw: float
) -> dict[str, Any]:
    engine = make_engine(url)
    init_db(engine)
    try:
        first_s, first = _timed(
            lambda: ingest(
                engine, source, tickers=tickers, end=END, history_start=EARLIEST, progress=False
            )
        )
        inc_s, inc = _timed(
            lambda: ingest(
                engine, source, tickers=tickers, end=END, history_start=EARLIEST, progress=False
            )
        )
        # Re-request every stored row: an explicit start at each ticker's first stored date
        # (a start before it would only backfill), tickers sharing a first date in one run.
        with engine.connect() as conn:
            firsts: dict[dt.date, list[str]] = {}
            for row in price_summary(conn):
                firsts.setdefault(row.first_date, []).append(row.ticker)
        full_s, fulls = _timed(
            lambda: [
                ingest(engine, source, tickers=group, start=first, end=END, progress=False)
                for first, group in firsts.items()
            ]
        )
    finally:
        engine.dispose()
    assert first.status == inc.status == "success", first.summary()
    assert inc.inserted == inc.updated == 0
    assert all(r.status == "success" and r.inserted == r.updated == 0 for r in fulls)
    n = first.inserted
    return {
        "backend": label,
        "rows": n,
        "rejected": first.rejected,
        "raw_s": raw,
        "ingest_s": first_s,
        "incremental_s": inc_s,
        "rerequest_s": full_s,
        "rerequest_unchanged": sum(r.unchanged for r in fulls),
        "rerequest_runs": len(fulls),
    }


def report(r: dict[str, Any], n_raw: int, binary_s: float | None = None) -> None:
    raw_rate = n_raw / r["raw_s"]
    rate = r["rows"] / r["ingest_s"]
    print(f"\n{r['backend']}: {r['rows']:,} rows ingested ({r['rejected']} rejected)")
    print(f"  raw bulk load          {r['raw_s']:7.2f} s  {raw_rate:10,.0f} rows/s")
    if binary_s is not None:
        # The ingest itself sends binary COPY: this shows what that part alone costs.
        print(
            f"  raw binary COPY        {binary_s:7.2f} s  {n_raw / binary_s:10,.0f} rows/s"
            "  (not the reference; the ingest writes its rows this way)"
        )
    print(
        f"  validating ingest      {r['ingest_s']:7.2f} s  {rate:10,.0f} rows/s"
        f"  = {rate / raw_rate:.2f}x raw (target >= 0.5x)"
        + (f", {rate / (n_raw / binary_s):.2f}x raw binary COPY" if binary_s else "")
    )
    print(
        f"  no-change incremental  {r['incremental_s']:7.2f} s  "
        f"{r['ingest_s'] / r['incremental_s']:6.1f}x faster than the first ingest (a file is "
        "compared whole every run, so this is a full compare, written nowhere)"
    )
    print(
        f"  no-change re-request   {r['rerequest_s']:7.2f} s  "
        f"{r['ingest_s'] / r['rerequest_s']:6.1f}x faster ({r['rerequest_unchanged']:,} rows "
        f"fetched and compared in {r['rerequest_runs']} runs, none written)"
    )


# VmHWM, not ru_maxrss: the latter carries the parent's size across fork and exec.
_MEMORY_PROBE = """
import re, sys, datetime as dt
from forecasting.data.db import init_db, make_engine
from forecasting.data.ingest import ingest
from forecasting.data.sources.files import FileSource
if sys.argv[1] != "-":
    engine = make_engine(f"sqlite:///{sys.argv[2]}")
    init_db(engine)
    report = ingest(engine, FileSource(sys.argv[1]), end=dt.date(2020, 12, 31),
                    today=dt.date(2020, 12, 31), progress=False)
    assert report.status == "success", report.summary()
    print(report.inserted, end=" ")
status = open("/proc/self/status").read()
print(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
"""


def big_file(path: Path, rows: int) -> int:
    """A CSV of ``rows`` plausible bars: 250 main-board tickers, random walks inside the 10%
    limit, written in chunks (so writing it needs little memory itself)."""
    import numpy as np

    n_tickers = 250
    days = pd.bdate_range("2005-01-04", periods=-(-rows // n_tickers)).strftime("%Y%m%d")
    rng = np.random.default_rng(0)
    written = 0
    with path.open("w", encoding="utf-8") as fh:
        fh.write("ts_code,trade_date,open,high,low,close,vol,amount\n")
        for i in range(n_tickers):
            n = min(len(days), rows - written)
            if n <= 0:
                break
            close = 10 * np.exp(np.cumsum(rng.normal(0, 0.02, n).clip(-0.09, 0.09)))
            frame = pd.DataFrame(
                {
                    "ts_code": f"{600000 + i}.SH",
                    "trade_date": days[:n],
                    "open": close.round(2),
                    "high": (close * 1.01).round(2),
                    "low": (close * 0.99).round(2),
                    "close": close.round(2),
                    "vol": rng.uniform(1e4, 1e6, n).round(2),
                    "amount": rng.uniform(1e4, 1e6, n).round(3),
                }
            )
            frame.to_csv(fh, header=False, index=False)
            written += n
    return written


def memory(tmp: Path, rows: int) -> None:
    """Peak RSS of a fresh process ingesting a ``rows``-row file, beside one that only imports."""
    path = tmp / "big.csv"
    t0 = time.perf_counter()
    n = big_file(path, rows)
    made = time.perf_counter() - t0

    def probe(*args: str) -> list[str]:
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE, *args],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        return out.stdout.split()

    (base_kb,) = probe("-")
    t0 = time.perf_counter()
    inserted, peak_kb = probe(str(path), str(tmp / "memory.db"))
    took = time.perf_counter() - t0
    peak, base = int(peak_kb) / 1024, int(base_kb) / 1024
    print(
        f"\nmemory: a {n:,}-row CSV ({path.stat().st_size / 2**20:.0f} MB, made in {made:.1f} s) "
        f"ingested whole into SQLite in {took:.1f} s ({int(inserted):,} rows)"
    )
    print(
        f"  peak resident memory   {peak:7.0f} MB  (imports alone {base:.0f} MB; "
        f"{peak - base:.0f} MB for the file)  = {peak / 300:.2f}x the 300 MB target"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--limit", type=int, default=None, help="only the first N files")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--memory-rows", type=int, default=1_000_000, help="0: skip")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    if not args.data.is_dir():
        print(f"{args.data} is absent; pass --data", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="forecasting-bench-") as tmp:
        src_dir = args.data
        if args.limit:
            src_dir = Path(tmp) / "files"
            src_dir.mkdir()
            for f in sorted(args.data.glob("*.csv"))[: args.limit]:
                (src_dir / f.name).symlink_to(f)
        source = FileSource(src_dir)
        parse_s, tickers = _timed(source.tickers)
        rows = _all_rows(source, tickers)
        print(
            f"{len(tickers)} tickers, {len(rows):,} rows; CSV parse {parse_s:.2f} s (in neither figure)"
        )

        results = []
        if not args.no_sqlite:
            raw = raw_sqlite(Path(tmp) / "raw.db", rows)
            results.append(bench("SQLite", f"sqlite:///{tmp}/bench.db", source, tickers, raw))
            report(results[-1], len(rows))
        if not args.no_postgres:
            admin = make_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
            name = f"forecasting_bench_{uuid.uuid4().hex[:8]}"
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            url = args.postgres_url.rsplit("/", 1)[0] + f"/{name}"
            try:
                engine = make_engine(url)
                init_db(engine)  # the raw table copies the shape of prices
                engine.dispose()
                raw = raw_postgres(url, rows)
                binary = raw_postgres(url, rows, binary=True)
                results.append(bench("Postgres", url, source, tickers, raw))
                report(results[-1], len(rows), binary)
            finally:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()
        if args.memory_rows:
            memory(Path(tmp), args.memory_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
