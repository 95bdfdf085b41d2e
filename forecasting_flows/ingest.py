"""Flow ``ingest``: incremental, idempotent price ingest from tushare, CSV files or the demo market."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from forecasting.clock import real_clock, trading_today
from forecasting.data.increment import MarketSource
from forecasting.data.ingest import ingest as ingest_prices
from forecasting.data.ingest import ingest_options, source_options
from forecasting.data.provenance import HOW_TO_SET, chosen_source, sources_of
from forecasting.data.sources import PriceSource, make_source
from forecasting.data.universe import ingest_tickers
from forecasting.settings import Settings
from forecasting_flows.common import (
    FlowDate,
    SettingsTaskRunner,
    engine_for,
    flush_run_logs,
    settings,
)


def _source(s: Settings, source: str | None, path: str | None) -> PriceSource:
    name = chosen_source(source or s.source)
    return make_source(
        name,
        token=s.tushare_token.value,
        path=path or s.source_path,
        **source_options(name, s.ingest),
    )


@task(
    name="ingest",
    task_run_name="ingest-{shard}",
    retries=2,
    retry_delay_seconds=10,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def ingest_task(
    s: Settings,
    source: str | None = None,
    tickers: list[str] | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
    path: str | None = None,
    shard: int = 1,
    today: dt.date | None = None,
) -> dict[str, Any]:
    """I/O task (retried): fetch and upsert. Reruns are idempotent, so a retry is safe.
    ``today`` (default: the wall clock's day in Shanghai) is the last day a bar may carry."""
    src = _source(s, source, path)
    engine = engine_for(s.database_url)
    report = ingest_prices(
        engine,
        src,
        tickers=tickers or list(s.tickers) or None,
        start=start,
        end=end,
        history_start=s.history_start,
        progress=False,
        today=today,
        **ingest_options(s.ingest),
    )
    get_run_logger().info(report.summary())
    return {
        "run_id": report.run_id,
        "status": report.status,
        "summary": report.summary(),
        "errors": {t: r.error for t, r in report.tickers.items() if r.error},
    }


def ingest_sharded(
    s: Settings,
    source: str | None = None,
    tickers: list[str] | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
    path: str | None = None,
    shard_size: int = 50,
    today: dt.date | None = None,
) -> dict[str, Any]:
    """Fetch per-ticker work in shards, one retried task each, on the flow's task runner (a
    thread pool, or Dask workers). Each shard is its own ingest run and commits per ticker."""
    src = _source(s, source, path)
    names = tickers or ingest_tickers(
        engine_for(s.database_url),
        src,
        s.universe or s.tickers,
        start=start,
        end=end or trading_today(real_clock()),
    )
    names = names or src.tickers()
    if isinstance(src, MarketSource):
        # One task: the day's increment is two calls for all its tickers, and one process
        # keeps one token bucket under the account's rate limit.
        shard_size = max(shard_size, len(names))
    chunks = [names[i : i + shard_size] for i in range(0, len(names), shard_size)] or [[]]
    if len(chunks) == 1:
        results = [ingest_task(s, source, chunks[0] or None, start, end, path, today=today)]
    else:
        futures = [
            ingest_task.submit(s, source, chunk, start, end, path, shard, today)
            for shard, chunk in enumerate(chunks, start=1)
        ]
        results = [f.result() for f in futures]
    statuses = {r["status"] for r in results}
    status = (
        "success"
        if statuses == {"success"}
        else ("failed" if statuses == {"failed"} else "partial")
    )
    out = {
        "run_ids": [r["run_id"] for r in results],
        "status": status,
        "summary": "\n".join(r["summary"] for r in results),
        # ticker -> why its ingest failed: the daily run skips those tickers with the reason
        "errors": {t: e for r in results for t, e in r.get("errors", {}).items()},
    }
    create_markdown_artifact(
        key="ingest-summary",
        markdown=_markdown(out),
        description=f"Price ingest: {status}",
    )
    return out


def ingest_own_sources(
    s: Settings, tickers: list[str] | None, end: dt.date | None
) -> dict[str, Any]:
    """The daily run's ingest: each ticker from its own recorded source
    (:func:`~forecasting.data.provenance.sources_of`); the configured source only for tickers
    that have none yet (an empty database: the configured source's universe). A ticker with no
    source at all is not ingested and its error says how to set one."""
    from sqlalchemy import select

    from forecasting.data.schema import prices

    with engine_for(s.database_url).connect() as conn:
        names = list(tickers or s.tickers) or sorted(
            conn.execute(select(prices.c.ticker).distinct()).scalars()
        )
        own = sources_of(conn, names)
    groups: dict[str, list[str]] = {}
    errors: dict[str, str] = {}
    for t in names:
        source = own.get(t) or s.source
        if source is None:
            errors[t] = f"no price source for it is configured; {HOW_TO_SET}"
        else:
            groups.setdefault(source, []).append(t)
    if not names and s.source:
        groups[s.source] = []  # nothing stored yet: the configured source's own universe
    results = [
        ingest_sharded(s, source, group or None, end=end, today=end)
        for source, group in groups.items()
    ]
    statuses = {r["status"] for r in results} | ({"failed"} if errors else set())
    status = (
        "success"
        if statuses <= {"success"}
        else ("failed" if statuses == {"failed"} else "partial")
    )
    if not results and not errors:
        status = "success"  # nothing to ingest
    summary = "\n".join(
        [r["summary"] for r in results] + [f"{t}: not ingested: {e}" for t, e in errors.items()]
    )
    if not names and not s.source:
        summary = f"nothing ingested: no price source is configured; {HOW_TO_SET}"
    get_run_logger().info(summary)
    for r in results:
        errors.update(r["errors"])
    return {"status": status, "errors": errors, "summary": summary}


def _markdown(result: dict[str, Any]) -> str:
    lines = ["# Price ingest", "", f"- status: **{result['status']}**"]
    lines.append("- ingest runs: " + ", ".join(f"`{r}`" for r in result["run_ids"]))
    lines += ["", "```", result["summary"], "```"]
    return "\n".join(lines) + "\n"


@flow(name="ingest", log_prints=True, task_runner=SettingsTaskRunner())
def ingest(
    source: Literal["tushare", "csv", "demo"] | None = None,
    tickers: list[str] | None = None,
    start: FlowDate | None = None,
    end: FlowDate | None = None,
    path: str | None = None,
    shard_size: int = 50,
) -> dict[str, Any]:
    """Load prices into the database, incrementally and idempotently: each ticker from its
    last stored date + 1 up to end.

    Args:
        source: Where prices come from (default: the configured source, FORECASTING_SOURCE).
        tickers: Tickers to load, e.g. ["600519.SH", "000300.SH"] (default: the configured
            universe, else the source's).
        start: First date for tickers without history, YYYY-MM-DD (or YYYYMMDD); a start before
            the stored history backfills new tickers without touching stored rows.
        end: Last date, YYYY-MM-DD (or YYYYMMDD); default today.
        path: File or folder of CSV/Parquet prices, for source csv (default:
            FORECASTING_SOURCE_PATH).
        shard_size: Tickers per ingest task.
    """
    s = settings()
    result = ingest_sharded(s, source, tickers, start, end, path, shard_size)
    flush_run_logs()
    return result
