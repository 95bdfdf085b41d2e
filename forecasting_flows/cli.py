"""The ``forecasting`` command line: the edge where settings are read and flows are started.

Library modules never import Prefect; commands that run flows import them lazily. So does every
command here: at module level this imports only the standard library, the settings, the clock
and the error base class, so that ``forecasting --help`` answers at once (no torch, pandas,
SQLAlchemy or Prefect). A :class:`~forecasting.errors.ForecastingError` is caught once, in
:func:`main`, and printed as one line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import select
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, get_args

from forecasting.clock import Clock, parse_date, real_clock, trading_today
from forecasting.errors import ForecastingError, InputError
from forecasting.settings import Settings, SourceName, load_settings

if TYPE_CHECKING:
    from forecasting.data.calendar import TradingCalendar

#: The exit status of a process killed by SIGPIPE, which is what a reader that stops early
#: (``forecasting evaluate | head``) would see from a C program.
EXIT_BROKEN_PIPE = 128 + 13

SQL_HINT = """\
Read the forecasts with SQL, e.g. (sqlite3 {db} or psql):
  SELECT ticker, target_date, horizon, yhat, yhat_lower, yhat_upper
  FROM latest_forecasts WHERE as_of_date = '{as_of}' ORDER BY ticker, horizon;
More queries in sql/queries/ (latest per ticker, one ticker's path, retrain history)."""


def _date(value: str) -> dt.date:
    try:
        return parse_date(value)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _check_range(start: dt.date | None, end: dt.date | None, *, end_is_today: bool = False) -> None:
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


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain fixed-width table for terminal output."""

    def fmt(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 1000 else f"{v:.2f}"
        return str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _engine(s: Settings):
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


# ------------------------------------------------------------------------------------------
# Commands


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
    _check_range(args.start, end, end_is_today=args.end is None)
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


def _print_summary(summary: Any, s: Settings) -> None:
    print(summary.message or f"run {summary.run_id}: {summary.status}")
    for o in summary.outcomes:
        print(f"  {o.scope}: {o.action} — {o.reason}")
    if summary.next_day:
        print(f"\nNext-day forecasts as of {summary.as_of}:")
        print(
            table(
                summary.next_day,
                [
                    "ticker",
                    "target_date",
                    "base_close",
                    "yhat",
                    "yhat_lower",
                    "yhat_upper",
                    "calendar_source",
                ],
            )
        )
    if summary.skipped:
        print(f"\nSkipped {len(summary.skipped)}:")
        for t, why in sorted(summary.skipped.items()):
            print(f"  {t}: {why}")
    if summary.as_of:
        db = (
            s.database_url.removeprefix("sqlite:///")
            if s.database_url.startswith("sqlite")
            else "$DATABASE"
        )
        print("\n" + SQL_HINT.format(db=db, as_of=summary.as_of))


def _run_daily(s: Settings, **params: Any) -> Any:
    from forecasting_flows.daily import daily

    return daily(**params)  # its task runner comes from the settings, at each run


def cmd_run(args: argparse.Namespace, s: Settings) -> int:
    from forecasting.pipeline.daily import run_pipeline
    from forecasting.pipeline.summary import RunSummary

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
            # (it resolves that to the latest day with prices), so the same check it would
            # make on a closed day is made here, with this command's clock.
            from forecasting.data.calendar import TradingCalendar

            with _engine(s).connect() as conn:
                cal = TradingCalendar.load(conn, exchange=s.exchange)
            if not cal.is_trading_day(today):
                message = f"{today} is not a trading day; nothing to do"
                _print_summary(
                    RunSummary(None, None, "live", "not-a-trading-day", message=message), s
                )
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
    _print_summary(summary, s)
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
    _print_summary(summary, s)
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


# ------------------------------------------------------------------------------------------
# Parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="forecasting",
        description="Scheduled daily close-price forecasting: ingest prices, check the model for "
        "drift, fine-tune or retrain an LSTM, and write multi-day forecasts to SQL.",
        epilog="Configuration: FORECASTING_DATABASE_URL (default sqlite:///forecasting.data.db), "
        "TUSHARE_TOKEN, and an optional forecasting.toml (see README).",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Any, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=fn)
        return sp

    add("init-db", cmd_init_db, "Create the schema (idempotent).")

    sp = add("ingest", cmd_ingest, "Ingest daily bars incrementally and idempotently.")
    sp.add_argument(
        "--source", choices=get_args(SourceName), help="price source (default: settings)"
    )
    sp.add_argument(
        "--tickers",
        nargs="*",
        help="tickers, e.g. 600519.SH 000300.SH (default: the source's universe)",
    )
    sp.add_argument(
        "--start", type=_date, help="first date for tickers without history, or a backfill start"
    )
    sp.add_argument("--end", type=_date, help="last date (default: today)")
    sp.add_argument("--path", help="file or folder for --source csv")
    sp.add_argument("--ticker", help="ticker for a CSV file that has no ts_code column")

    add("prices", cmd_prices, "List tickers with their date ranges and row counts.")

    sp = add("calendar", cmd_calendar, "Show which calendar source covers which dates.")
    sp.add_argument(
        "--date", type=_date, help="show the trading days after this date (default: today)"
    )
    sp.add_argument("-n", type=int, default=10, help="how many trading days to show")

    sp = add(
        "train",
        cmd_train,
        "Train a model version now (full by default, or fine-tune the active one).",
    )
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--full", action="store_true", help="train from scratch (default)")
    g.add_argument("--finetune", action="store_true", help="warm-start from the active version")
    sp.add_argument("--through", type=_date, help="training cutoff (default: latest price date)")

    add("models", cmd_models, "List model versions with their validation metrics.")

    sp = add("run", cmd_run, "Run the daily pipeline (as a Prefect flow).")
    sp.add_argument(
        "--as-of", type=_date, help="as-of date (default: latest trading day with prices)"
    )
    sp.add_argument(
        "--force-retrain", action="store_true", help="retrain from scratch whatever the check says"
    )
    sp.add_argument(
        "--rerun", action="store_true", help="recompute even if this as-of is already complete"
    )
    sp.add_argument("--tickers", nargs="*", help="restrict to these tickers")
    sp.add_argument("--no-ingest", action="store_true", help="skip the incremental ingest step")
    sp.add_argument(
        "--no-prefect", action="store_true", help="run the library pipeline without Prefect"
    )

    add(
        "demo",
        cmd_demo,
        "Ingest the demo market, train, run the daily pipeline and print forecasts.",
    )

    sp = add(
        "backfill", cmd_backfill, "Replay the daily pipeline over a date range, point-in-time."
    )
    sp.add_argument("--start", type=_date, required=True)
    sp.add_argument("--end", type=_date, required=True)
    sp.add_argument("--tickers", nargs="*")

    sp = add("evaluate", cmd_evaluate, "Accuracy of stored forecasts against realized closes.")
    sp.add_argument("--start", type=_date)
    sp.add_argument("--end", type=_date)
    sp.add_argument("--tickers", nargs="*")

    sp = add("report", cmd_report, "Write an HTML report with plots.")
    sp.add_argument("--out", default="reports", help="output folder")
    sp.add_argument("--tickers", nargs="*", help="tickers to plot (default: a few)")

    add(
        "serve",
        cmd_serve,
        "Serve the deployments on their schedules in one process (Prefect serve).",
    )
    return p


def main(argv: Sequence[str] | None = None, clock: Clock = real_clock) -> int:
    """Run one command; ``clock`` tells the commands that default to today what time it is."""
    args = build_parser().parse_args(argv)
    args.clock = clock
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Our own progress at INFO; third-party chatter (httpx, the Prefect server) stays quiet.
    logging.getLogger("forecasting").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    # Quiet Prefect in the terminal; but served runs are read in the UI, and they inherit this
    # process's environment, so `serve` keeps Prefect's INFO lines.
    for name, value in (
        ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
        ("PREFECT_LOGGING_LEVEL", "INFO" if args.command == "serve" else "WARNING"),
        ("PREFECT_LOGGING_LOG_PRINTS", "true"),
    ):
        os.environ.setdefault(name, value)
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        settings = load_settings()
        _check_range(getattr(args, "start", None), getattr(args, "end", None))
        code = _dispatch(args, settings)
        # A reader that left early (`| head`) shows here, where it is caught, rather than in
        # the interpreter's flush at exit, which would print a warning about it.
        sys.stdout.flush()
        return code
    except ForecastingError as exc:
        # Its message already names the ticker, the date, the setting or the option, and the fix.
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        if not _stdout_is_broken():
            raise
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("interrupted; a rerun resumes where this stopped", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command in ("demo", "backfill") or (args.command == "run" and not args.no_prefect):
        # A temporary Prefect server for the flows, that dies with this process however it ends.
        from forecasting_flows.local_server import local_prefect_server

        with local_prefect_server():
            return int(args.func(args, settings) or 0)
    return int(args.func(args, settings) or 0)


def _stdout_is_broken() -> bool:
    """Whether stdout's reader has gone (``forecasting evaluate | head``); if so, point stdout
    at /dev/null so that the interpreter's own flush at exit does not complain about it.
    A broken pipe anywhere else (a socket) is not ours to swallow."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # a replaced stdout without a file descriptor
        return False
    # The failed write dropped its buffer, so a second flush would succeed and prove nothing;
    # the pipe itself says whether its reader has gone.
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    if not any(events & select.POLLERR for _, events in poller.poll(0)):
        return False
    os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    return True


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
