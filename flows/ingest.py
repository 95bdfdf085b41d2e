"""Flow ``ingest``: incremental, idempotent price ingest from tushare, CSV files or the demo market."""

from __future__ import annotations

import datetime as dt

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import engine_for, parse_date, settings
from forecasting.ingest import ingest as ingest_prices
from forecasting.settings import Settings
from forecasting.sources import make_source


@task(retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE, persist_result=False)
def ingest_task(
    s: Settings,
    source: str | None = None,
    tickers: list[str] | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
    path: str | None = None,
) -> dict:
    """I/O task (retried): fetch and upsert. Reruns are idempotent, so a retry is safe."""
    src = make_source(
        source or s.source,
        token=s.tushare_token.value,
        path=path or s.source_path,
    )
    engine = engine_for(s.database_url)
    report = ingest_prices(
        engine,
        src,
        tickers=tickers or list(s.tickers) or None,
        start=start,
        end=end,
        history_start=dt.date.fromisoformat(s.history_start),
        progress=False,
    )
    get_run_logger().info(report.summary())
    return {
        "run_id": report.run_id,
        "status": report.status,
        "summary": report.summary(),
    }


def ingest_sharded(
    s: Settings,
    source: str | None = None,
    tickers: list[str] | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
    path: str | None = None,
    shard_size: int = 50,
) -> dict:
    """Fetch per-ticker work in shards, one retried task each, on the flow's task runner (a
    thread pool, or Dask workers). Each shard is its own ingest run and commits per ticker."""
    names = tickers or list(s.tickers)
    if not names:
        names = make_source(
            source or s.source, token=s.tushare_token.value, path=path or s.source_path
        ).tickers()
    chunks = [names[i : i + shard_size] for i in range(0, len(names), shard_size)] or [[]]
    if len(chunks) == 1:
        results = [ingest_task(s, source, chunks[0] or None, start, end, path)]
    else:
        futures = [ingest_task.submit(s, source, chunk, start, end, path) for chunk in chunks]
        results = [f.result() for f in futures]
    statuses = {r["status"] for r in results}
    status = (
        "success"
        if statuses == {"success"}
        else ("failed" if statuses == {"failed"} else "partial")
    )
    return {
        "run_ids": [r["run_id"] for r in results],
        "status": status,
        "summary": "\n".join(r["summary"] for r in results),
    }


@flow(name="ingest", log_prints=True)
def ingest(
    source: str | None = None,
    tickers: list[str] | None = None,
    start: str | None = None,
    end: str | None = None,
    path: str | None = None,
    shard_size: int = 50,
) -> dict:
    """Load prices into the database: each ticker from its last stored date + 1 to ``end``
    (a ``start`` before the stored history backfills new tickers without touching stored rows)."""
    s = settings()
    return ingest_sharded(s, source, tickers, parse_date(start), parse_date(end), path, shard_size)
