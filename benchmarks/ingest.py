"""Ingest throughput against a raw bulk load of the same rows, on SQLite and Postgres.

    python benchmarks/ingest.py [--postgres-url URL] [--limit N] [--no-postgres]

Reads ``../shared/data/ashare_qfq_panel`` (150 real tushare CSVs) once through the file source,
then, per backend:

* **raw**: the same rows, straight from the parsed frames into a table of the same shape as
  ``prices`` (same columns, same primary key), with no validation and no comparison: plain
  ``sqlite3`` ``executemany`` in one transaction on SQLite, psycopg ``COPY`` on Postgres;
* **ingest**: :func:`forecasting.data.ingest.ingest` into an empty database (validation, comparison
  with stored rows, per-ticker transactions, rejected rows, run bookkeeping);
* **no-change, incremental**: the same ingest again: the stored last dates say there is
  nothing new, so little is fetched and nothing is written;
* **no-change, re-requested**: the same ingest with an explicit ``start`` at the beginning:
  every row is fetched, compared and found unchanged.

Both the raw load and the ingest start from bars already parsed into memory (the file source
caches them), so the CSV parse, timed separately, is not in either figure.
Targets: ingest >= 0.5x raw rows/s; no-change re-ingest >= 5x faster than the first ingest.
The Postgres runs use a throwaway database that is dropped afterwards.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
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

DATA = ROOT.parent / "shared" / "data" / "ashare_qfq_panel"
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


def raw_postgres(url: str, rows: pd.DataFrame) -> float:
    """psycopg COPY (``write_row`` over tuples) into a table shaped like ``prices``."""
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as con:
        con.execute("CREATE TABLE raw_prices (LIKE prices INCLUDING ALL)")
        con.commit()
        t0 = time.perf_counter()
        with (
            con.cursor() as cur,
            cur.copy(f"COPY raw_prices ({', '.join(COLUMNS)}) FROM STDIN") as cp,
        ):
            for row in _tuples(rows, iso_dates=False):
                cp.write_row(row)
        con.commit()
        took = time.perf_counter() - t0
        count = con.execute("SELECT count(*) FROM raw_prices").fetchone()
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


def report(r: dict[str, Any], n_raw: int) -> None:
    raw_rate = n_raw / r["raw_s"]
    rate = r["rows"] / r["ingest_s"]
    print(f"\n{r['backend']}: {r['rows']:,} rows ingested ({r['rejected']} rejected)")
    print(f"  raw bulk load          {r['raw_s']:7.2f} s  {raw_rate:10,.0f} rows/s")
    print(
        f"  validating ingest      {r['ingest_s']:7.2f} s  {rate:10,.0f} rows/s"
        f"  = {rate / raw_rate:.2f}x raw (target >= 0.5x)"
    )
    print(
        f"  no-change incremental  {r['incremental_s']:7.2f} s  "
        f"{r['ingest_s'] / r['incremental_s']:6.1f}x faster than the first ingest (target >= 5x)"
    )
    print(
        f"  no-change re-request   {r['rerequest_s']:7.2f} s  "
        f"{r['ingest_s'] / r['rerequest_s']:6.1f}x faster ({r['rerequest_unchanged']:,} rows "
        f"fetched and compared in {r['rerequest_runs']} runs, none written)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--limit", type=int, default=None, help="only the first N files")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
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
                results.append(bench("Postgres", url, source, tickers, raw))
                report(results[-1], len(rows))
            finally:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
