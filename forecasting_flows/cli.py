"""The ``forecasting`` command line: the edge where settings are read and flows are started.

This module builds the parser and runs one command (:mod:`forecasting_flows.commands`, which
print through :mod:`forecasting_flows.output`). Library modules never import Prefect; commands
that run flows import them lazily, and so does every command here: at module level these three
modules import only the standard library, the settings, the clock and the error base class, so
that ``forecasting --help`` answers at once (no torch, pandas, SQLAlchemy or Prefect). A
:class:`~forecasting.errors.ForecastingError` is caught once, in :func:`main`, and printed as
one line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import select
import sys
from collections.abc import Sequence
from typing import Any, get_args

from forecasting.clock import Clock, parse_date, real_clock
from forecasting.errors import ForecastingError, InputError
from forecasting.settings import Settings, SourceName, load_settings
from forecasting_flows.commands import (
    check_range,
    cmd_backfill,
    cmd_calendar,
    cmd_demo,
    cmd_evaluate,
    cmd_ingest,
    cmd_init_db,
    cmd_models,
    cmd_prices,
    cmd_report,
    cmd_run,
    cmd_serve,
    cmd_train,
)

#: The exit status of a process killed by SIGPIPE, which is what a reader that stops early
#: (``forecasting evaluate | head``) would see from a C program.
EXIT_BROKEN_PIPE = 128 + 13


def _date(value: str) -> dt.date:
    try:
        return parse_date(value)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="forecasting",
        description="Scheduled daily close-price forecasting: ingest prices, check the model for "
        "drift, fine-tune or retrain an LSTM, and write multi-day forecasts to SQL.",
        epilog="Configuration: FORECASTING_DATABASE_URL (default sqlite:///forecasting.db), "
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
        check_range(getattr(args, "start", None), getattr(args, "end", None))
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
