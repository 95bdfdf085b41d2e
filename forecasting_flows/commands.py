"""The commands behind ``forecasting COMMAND``, one ``cmd_*`` function each.

Each takes the parsed arguments and the settings, reads its options, calls the library or starts
a flow, prints what happened and returns the exit status. What it needs beyond the standard
library, the settings, the clock and the errors (pandas, SQLAlchemy, torch, Prefect) it imports
when it runs, so that building the parser in :mod:`forecasting_flows.cli` loads none of them.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from forecasting.clock import Clock, trading_today
from forecasting.errors import InputError
from forecasting.settings import Settings
from forecasting_flows.output import print_summary, table

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from forecasting.data.calendar import TradingCalendar


def check_range(start: dt.date | None, end: dt.date | None, *, end_is_today: bool = False) -> None:
    """Refuse ``--start`` after the end before any work starts (for ``backfill``, before a
    Prefect server starts)."""
    if start is None or end is None or start <= end:
        return
    if end_is_today:
        raise InputError(
            f"--start {start} is after today ({end} in Shanghai), the default --end; "
            "pass an earlier --start"
        )
    raise InputError(f"--start {start} is after --end {end}; swap them")


def _tickers(values: Sequence[str] | None) -> list[str] | None:
    if not values:
        return None
    out: list[str] = []
    for v in values:
        out.extend(t.strip().upper() for t in v.split(",") if t.strip())
    return out or None


def _engine(s: Settings) -> Engine:
    from forecasting.data.db import init_db, make_engine

    engine = make_engine(s.database_url)
    init_db(engine)
    return engine


def _today(args: argparse.Namespace) -> dt.date:
    """Today's date at the exchange by the clock ``main`` was given."""
    clock: Clock = args.clock
    return trading_today(clock())


def last_trading_day(cal: TradingCalendar, today: dt.date) -> tuple[dt.date, str | None]:
    """``today`` if the exchange trades on it, else the trading day before it, and a line for
    people saying which it took; the line also owns up when the calendar for ``today`` is the
    weekday-only fallback, which knows no holidays."""
    as_of, note = today, None
    if not cal.is_trading_day(today):
        as_of = cal.previous_trading_day(today)
        note = (
            f"{today:%A} {today} is not a trading day; "
            f"forecasting as of {as_of:%A} {as_of}, the last trading day"
        )
    if cal.source_for(today) == "weekdays":
        past = next(
            (
                r.start - dt.timedelta(days=1)
                for r in cal.coverage()
                if r.source == "weekdays" and r.start is not None and r.start <= today
                if r.end is None or today <= r.end
            ),
            None,
        )
        where = f"past {past}" if past else f"on {today}"
        note = (note or f"forecasting as of {as_of:%A} {as_of}") + (
            f" (the {cal.exchange} calendar {where} is weekdays only: holidays there are unknown)"
        )
    return as_of, note


def cmd_init_db(args: argparse.Namespace, s: Settings) -> int:
    from forecasting.data.db import redacted_url

    _engine(s)
    print(f"schema ready at {redacted_url(s.database_url)}")
    return 0


def cmd_ingest(args: argparse.Namespace, s: Settings) -> int:
    from forecasting.data.ingest import ingest
    from forecasting.data.sources import make_source

    source = make_source(
        args.source or s.source,
        token=s.tushare_token.value,
        path=args.path or s.source_path,
        ticker=args.ticker,
    )
    end = args.end or _today(args)
    check_range(args.start, end, end_is_today=args.end is None)
    report = ingest(
        _engine(s),
        source,
        tickers=_tickers(args.tickers) or (list(s.tickers) or None),
        start=args.start,
        end=end,
        history_start=s.history_start,
        progress=None,
    )
    print(report.summary())
    return 0 if report.status in ("success", "partial") else 1


def cmd_prices(args: argparse.Namespace, s: Settings) -> int:
    from forecasting.data.prices import price_summary

    with _engine(s).connect() as conn:
        rows = price_summary(conn)
    if not rows:
        print("no prices yet; run `forecasting ingest`")
        return 0
    dicts = [
        dict(zip(("ticker", "kind", "first_date", "last_date", "rows"), r, strict=False))
        for r in rows
    ]
    print(table(dicts, ["ticker", "kind", "first_date", "last_date", "rows"]))
    return 0


def cmd_calendar(args: argparse.Namespace, s: Settings) -> int:
    from forecasting.data.calendar import TradingCalendar
    from forecasting.pipeline.forecast import target_dates

    with _engine(s).connect() as conn:
        cal = TradingCalendar.load(conn, exchange=s.exchange)
    print(f"exchange {s.exchange}; where dates come from:")
    print(cal.coverage())
    start = args.date or _today(args)
    print(f"\nnext {args.n} trading days after {start}:")
    for d, src in target_dates(cal, start, args.n):
        print(f"  {d}  ({src})")
    return 0


def cmd_train(args: argparse.Namespace, s: Settings) -> int:
    from forecasting.pipeline.refit import train

    engine = _engine(s)
    outcomes = train(engine, s, through=args.through, finetune=args.finetune)
    for o in outcomes:
        print(
            f"{o.scope}: {o.action} -> version {o.new_version_id} "
            f"({'active' if o.promoted else 'rejected'}); validation RMSE/naive "
            f"{o.candidate_ratio:.3f}; {o.train_seconds:.1f}s. {o.reason}"
        )
    return 0


def cmd_models(args: argparse.Namespace, s: Settings) -> int:
    from forecasting.model.registry import list_versions

    with _engine(s).connect() as conn:
        versions = list_versions(conn)
    if not versions:
        print("no model versions yet; run `forecasting train --full`")
        return 0
    rows = [
        {
            "id": v.id,
            "scope": v.scope,
            "kind": v.kind,
            "parent": v.parent_id,
            "trained_through": v.trained_through,
            "status": v.status,
            "val_rmse": v.val_rmse,
            "naive_rmse": v.val_naive_rmse,
            "ratio": (v.val_rmse / v.val_naive_rmse) if v.val_rmse and v.val_naive_rmse else None,
            "train_s": v.train_seconds,
            "created_at": str(v.created_at)[:19],
        }
        for v in versions
    ]
    print(table(rows, list(rows[0])))
    return 0


def _run_daily(s: Settings, **params: Any) -> Any:
    from forecasting_flows.daily import daily

    return daily(**params)  # its task runner comes from the settings, at each run


def cmd_run(args: argparse.Namespace, s: Settings) -> int:
    from forecasting.pipeline.daily import closed_day, run_pipeline

    today = _today(args)
    tickers = _tickers(args.tickers)
    if args.no_prefect:
        summary = run_pipeline(
            _engine(s),
            s,
            args.as_of,
            today=today,
            force_retrain=args.force_retrain,
            rerun=args.rerun,
            tickers=tickers,
        )
    else:
        as_of = args.as_of
        if as_of is None:
            # Given no as_of the flow would read the wall clock; it is given today instead
            # (it resolves that to the latest day with prices), so the closed-day check it
            # would make is made here, by the same function, with this command's clock.
            closed = closed_day(_engine(s), s, today, "live")
            if closed is not None:
                print_summary(closed, s)
                return 0
            as_of = today
        summary = _run_daily(
            s,
            as_of=as_of.isoformat(),
            force_retrain=args.force_retrain,
            rerun=args.rerun,
            tickers=tickers,
            ingest=not args.no_ingest,
        )
    print_summary(summary, s)
    return 0 if summary.status in ("success", "already-complete", "not-a-trading-day") else 1


def cmd_demo(args: argparse.Namespace, s: Settings) -> int:
    from forecasting.data.calendar import TradingCalendar
    from forecasting.data.ingest import ingest
    from forecasting.data.sources import make_source

    s = s.with_overrides(source="demo")
    engine = _engine(s)
    today = _today(args)
    print(f"[1/3] ingesting the demo market into {s.database_url} ...", flush=True)
    report = ingest(
        engine,
        make_source("demo"),
        end=today,
        history_start=s.history_start,
    )
    print("      " + report.summary().replace("\n", "\n      "))
    # The demo runs every day: on a closed day it forecasts as of the last trading day, where
    # the daily flow (which runs on trading days) would have nothing to do.
    with engine.connect() as conn:
        cal = TradingCalendar.load(conn, exchange=s.exchange)
    as_of, note = last_trading_day(cal, today)
    if note:
        print("      " + note)
    print(
        "[2/3] running the daily flow (Prefect): check -> train -> forecast -> write ...",
        flush=True,
    )
    summary = _run_daily(s, as_of=as_of.isoformat(), ingest=False)
    print("[3/3] done.\n")
    print_summary(summary, s)
    return 0 if summary.status in ("success", "already-complete") else 1


def cmd_backfill(args: argparse.Namespace, s: Settings) -> int:
    from forecasting_flows.backfill import backfill

    # The flow shows a progress bar itself when stderr is a terminal.
    result = backfill(start=args.start, end=args.end, tickers=_tickers(args.tickers))
    print(result if isinstance(result, str) else getattr(result, "message", result))
    return 0


def cmd_evaluate(args: argparse.Namespace, s: Settings) -> int:
    from forecasting.evaluation.evaluation import evaluate

    with _engine(s).connect() as conn:
        report = evaluate(conn, start=args.start, end=args.end, tickers=_tickers(args.tickers))
    print(report.to_text())
    return 0


def cmd_report(args: argparse.Namespace, s: Settings) -> int:
    from forecasting.evaluation.report import write_report

    path = write_report(_engine(s), args.out, tickers=_tickers(args.tickers), settings=s)
    print(f"report written to {path}")
    return 0


def cmd_serve(args: argparse.Namespace, s: Settings) -> int:
    from forecasting_flows.serve import serve

    serve()
    return 0
