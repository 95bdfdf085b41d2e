"""The commands behind ``forecasting COMMAND``, one function each, options in its signature.

Each function is a Typer command: its parameters are its options (the shared ones come from
:mod:`forecasting_flows.options`), its docstring is its ``--help``, and its first parameter is
the click context whose ``obj`` is the :class:`Session` (settings, read once when first asked
for, and the clock). :mod:`forecasting_flows.cli` registers them; **adding an option** is adding a
parameter here, **adding a command** a function here and one line in ``cli.COMMANDS``. What a
command needs beyond the standard library, the settings, the clock and the errors (pandas,
SQLAlchemy, torch, Prefect) it imports when it runs, so that ``forecasting --help`` loads none of
them. Commands that only read (``prices``, ``calendar``, ``models``, ``evaluate``, ``report``)
open an existing database and never create one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from forecasting.choices import SourceName
from forecasting.clock import Clock, real_clock, trading_today
from forecasting.errors import InputError
from forecasting_flows.logs import already_shown
from forecasting_flows.options import (
    End,
    Format,
    Lineage,
    Start,
    Tickers,
    UniverseOption,
    date_option,
    flag,
)
from forecasting_flows.options import (
    tickers as _tickers,
)
from forecasting_flows.output import emit, emit_tables, print_summary, progress, result

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from forecasting.data.calendar import TradingCalendar
    from forecasting.settings import Settings


@dataclass
class Session:
    """What every command of one invocation shares: the clock, and the settings read once."""

    clock: Clock = real_clock
    verbose: bool = False
    _settings: Settings | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from forecasting.settings import load_settings

            self._settings = load_settings()
        return self._settings

    def today(self) -> dt.date:
        """Today's date at the exchange by this invocation's clock."""
        return trading_today(self.clock())


def _session(ctx: typer.Context) -> Session:
    obj = ctx.find_object(Session)
    if obj is None:  # a command invoked outside main(): a session on the wall clock
        obj = ctx.ensure_object(Session)
    return obj


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


def _engine(s: Settings) -> Engine:
    """The database, its schema created (or brought up to date) if need be."""
    from forecasting.data.db import init_db, make_engine

    engine = make_engine(s.database_url)
    init_db(engine)
    return engine


def _existing(s: Settings) -> Engine:
    """The database for a command that only reads: never created, here or on the server."""
    from forecasting.data.db import open_existing

    return open_existing(s.database_url)


def _known_lineage(engine: Engine, lineage: str) -> None:
    """Refuse a ``--lineage`` no run has used (a typo would read as "no forecasts")."""
    from sqlalchemy import select

    from forecasting.data.schema import pipeline_runs

    with engine.connect() as conn:
        names = sorted(conn.execute(select(pipeline_runs.c.lineage).distinct()).scalars())
    if names and lineage not in names:
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        raise InputError(f"--lineage {lineage!r}: no run has used it; the lineages are {shown}")


def _working(s: Settings) -> Engine:
    """The database for a command that computes on what is there (``run``, ``train``,
    ``backfill``): it must exist (only ``init-db``, ``ingest`` and ``demo`` create one: a run
    on a missing file would start over from nothing and say success); its schema is brought
    up to date."""
    from forecasting.data.db import init_db

    engine = _existing(s)
    init_db(engine)
    return engine


@contextmanager
def _prefect() -> Iterator[None]:
    """A temporary Prefect server for the flows, that dies with this process however it ends."""
    from forecasting_flows.local_server import local_prefect_server

    with local_prefect_server():
        yield


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


def init_db(ctx: typer.Context) -> None:
    """Create the schema (idempotent)."""
    from forecasting.data.db import redacted_url

    s = _session(ctx).settings
    _engine(s)
    print(f"schema ready at {redacted_url(s.database_url)}")


Source = Annotated[
    SourceName | None,
    typer.Option(help="price source", show_default="the source setting"),
]


def ingest(
    ctx: typer.Context,
    source: Source = None,
    tickers: Tickers = None,
    universe: UniverseOption = None,
    start: Annotated[
        dt.date | None,
        date_option(
            "first date for tickers without history, or a backfill start before stored history",
            show_default="the history_start setting",
        ),
    ] = None,
    end: Annotated[
        dt.date | None,
        date_option(
            "last date",
            show_default="today in Shanghai",
        ),
    ] = None,
    path: Annotated[
        str | None,
        typer.Option(
            help="file or folder for --source csv", show_default="the source_path setting"
        ),
    ] = None,
    encoding: Annotated[
        str | None,
        typer.Option(
            help="text encoding of CSV files, e.g. gbk", show_default="UTF-8 or GBK, detected"
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            help="tushare: seconds per HTTP request", show_default="ingest.tushare_timeout"
        ),
    ] = None,
    retries: Annotated[
        int | None,
        typer.Option(help="tushare: retries per request", show_default="ingest.tushare_retries"),
    ] = None,
    backoff: Annotated[
        float | None,
        typer.Option(
            help="tushare: first retry delay in seconds, doubling",
            show_default="ingest.tushare_backoff",
        ),
    ] = None,
    deadline: Annotated[
        float | None,
        typer.Option(
            help="seconds the whole ingest may take; then it stops and fails",
            show_default="ingest.deadline_s",
        ),
    ] = None,
    reread_days: Annotated[
        int | None,
        typer.Option(
            help="days before the last stored bar fetched again (vendors revise them)",
            show_default="ingest.reread_days",
        ),
    ] = None,
) -> int:
    """Ingest daily bars incrementally and idempotently.

    Exits 0 only when every ticker landed; partial and failed runs exit 1 and say so last.
    With --source csv, a file without a ts_code column holds the one ticker --tickers names.
    """
    from dataclasses import replace
    from pathlib import Path

    session = _session(ctx)
    s = session.settings
    given: dict[str, Any] = {
        "tushare_timeout": timeout,
        "tushare_retries": retries,
        "tushare_backoff": backoff,
        "deadline_s": deadline,
        "reread_days": reread_days,
    }
    for name, value in given.items():
        if value is not None and value < 0:
            raise InputError(
                f"--{name.removeprefix('tushare_').replace('_', '-')} {value} is below 0"
            )
    knobs = replace(s.ingest, **{k: v for k, v in given.items() if v is not None})
    chosen = _tickers(tickers)
    from forecasting.data.source_choice import chosen_source

    source_name = chosen_source(source or s.source)
    last = end or session.today()
    check_range(start, last, end_is_today=end is None)
    progress(f"ingest from {source_name} into the database: loading ...")
    from forecasting.data.ingest import ingest as run_ingest
    from forecasting.data.ingest import ingest_options, source_options
    from forecasting.data.sources import make_source
    from forecasting.data.universe import ingest_tickers

    where = path or s.source_path
    # --tickers names the ticker of one file without a ts_code; a folder's files name their own.
    one_file = where is not None and not Path(where).expanduser().is_dir()
    source_obj = make_source(
        source_name,
        token=s.tushare_token.value,
        path=where,
        ticker=chosen[0]
        if source_name == "csv" and one_file and chosen and len(chosen) == 1
        else None,
        **source_options(source_name, knobs, encoding=encoding),
    )
    engine = _engine(s)
    spec = chosen or universe or s.universe or s.tickers
    report = run_ingest(
        engine,
        source_obj,
        tickers=ingest_tickers(engine, source_obj, spec, start=start, end=last),
        start=start,
        end=last,
        history_start=s.history_start,
        progress=None,
        today=session.today(),
        **ingest_options(knobs),
    )
    result(report.summary())
    return 0 if report.status == "success" else 1


def prices(ctx: typer.Context, format: Format = "table") -> None:
    """List tickers with their date ranges and row counts, and their reference data."""
    from forecasting.data.inventory import INVENTORY_COLUMNS, inventory

    emit(
        inventory(_session(ctx).settings.database_url),
        INVENTORY_COLUMNS,
        format,
        empty="no prices yet; run `forecasting ingest`",
    )


def calendar(
    ctx: typer.Context,
    date: Annotated[
        dt.date | None,
        date_option(
            "show the trading days after this date",
            show_default="today in Shanghai",
        ),
    ] = None,
    n: Annotated[int, typer.Option("-n", "--count", min=1, help="how many trading days")] = 10,
    format: Format = "table",
) -> None:
    """Show which calendar source covers which dates, and the next trading days."""
    from forecasting.data.calendar import TradingCalendar
    from forecasting.pipeline.forecast import target_dates

    session = _session(ctx)
    s = session.settings
    with _existing(s).connect() as conn:
        cal = TradingCalendar.load(conn, exchange=s.exchange)
    start = date or session.today()
    days = [{"date": d, "source": src} for d, src in target_dates(cal, start, n)]
    if format != "table":
        emit(days, ["date", "source"], format)
        return
    print(f"exchange {s.exchange}; where dates come from:")
    print(cal.coverage())
    print(f"\nnext {n} trading days after {start}:")
    for day in days:
        print(f"  {day['date']}  ({day['source']})")


def train(
    ctx: typer.Context,
    full: Annotated[bool, flag("--full", "train from scratch (the default)")] = False,
    finetune: Annotated[bool, flag("--finetune", "warm-start from the active version")] = False,
    through: Annotated[
        dt.date | None,
        date_option("training cutoff", show_default="the latest price date"),
    ] = None,
    force: Annotated[
        bool,
        flag(
            "--force",
            "make the new version active even if it does not beat the active one on validation",
        ),
    ] = False,
) -> None:
    """Train a model version now (from scratch by default, or fine-tune the active one).

    The new version replaces the active one only if it beats it on the same validation
    windows, unless --force; either way the decision is recorded in model_checks.
    """
    if full and finetune:
        raise InputError("--full and --finetune exclude each other; pass one")
    s = _session(ctx).settings
    progress(f"train ({'fine-tune' if finetune else 'from scratch'}): loading ...")
    from forecasting.pipeline.promotion import promote
    from forecasting.pipeline.refit import train as run_train

    engine = _working(s)
    for o in run_train(engine, s, through=through, finetune=finetune):
        print(
            f"{o.scope}: {o.action} -> version {o.new_version_id} "
            f"({'active' if o.promoted else 'rejected'}); validation RMSE/naive "
            f"{o.candidate_ratio:.3f}; {o.train_seconds:.1f}s. {o.reason}"
        )
        if force and not o.promoted and o.new_version_id is not None:
            change = promote(
                engine, o.new_version_id, reason="forecasting train --force: made active anyway"
            )
            print(f"{change.message} (--force)")


def models(ctx: typer.Context, format: Format = "table", lineage: Lineage = "all") -> None:
    """List model versions with their lineage and validation metrics (and why one was
    retired); promote or roll back by hand.

    `forecasting models promote VERSION --reason TEXT` makes a retired or rejected version
    active; `forecasting models rollback --reason TEXT` brings back the previous champion.
    Both are recorded in model_checks.
    """
    if ctx.invoked_subcommand is not None:
        return
    from forecasting.model.registry import list_versions
    from forecasting.pipeline.scopes import lineage_of

    engine = _existing(_session(ctx).settings)
    if lineage != "all":
        _known_lineage(engine, lineage)
    with engine.connect() as conn:
        versions = list_versions(conn)
    rows = [
        {
            "id": v.id,
            "lineage": lineage_of(v.scope),
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
            "retired_reason": v.retired_reason,
        }
        for v in versions
        if lineage in ("all", lineage_of(v.scope))
    ]
    columns = [
        "id",
        "lineage",
        "scope",
        "kind",
        "parent",
        "trained_through",
        "status",
        "val_rmse",
        "naive_rmse",
        "ratio",
        "train_s",
        "created_at",
        "retired_reason",
    ]
    emit(rows, columns, format, empty="no model versions yet; run `forecasting train --full`")


Reason = Annotated[
    str,
    typer.Option(metavar="TEXT", help="why, in words; recorded in model_checks.reason"),
]


def promote(
    ctx: typer.Context,
    version: Annotated[
        int, typer.Argument(metavar="VERSION", help="the version id (`forecasting models`)")
    ],
    reason: Reason,
) -> None:
    """Make a retired or rejected version the active one of its scope."""
    from forecasting.pipeline.promotion import promote as run_promote

    print(run_promote(_existing(_session(ctx).settings), version, reason=reason).message)


def rollback(
    ctx: typer.Context,
    reason: Reason,
    scope: Annotated[str, typer.Option(help="the model scope")] = "global",
) -> None:
    """Bring back the scope's previous champion; the current one is marked rejected."""
    from forecasting.pipeline.promotion import rollback as run_rollback

    print(run_rollback(_existing(_session(ctx).settings), scope=scope, reason=reason).message)


def _run_daily(**params: Any) -> Any:
    from forecasting_flows.daily import daily

    return daily(**params)  # its task runner comes from the settings, at each run


def run(
    ctx: typer.Context,
    as_of: Annotated[
        dt.date | None,
        date_option(
            "as-of date",
            show_default="the latest trading day with prices",
        ),
    ] = None,
    force_retrain: Annotated[
        bool, flag("--force-retrain", "retrain from scratch whatever the check says")
    ] = False,
    rerun: Annotated[
        bool, flag("--rerun", "recompute even if this as-of is already complete")
    ] = False,
    tickers: Tickers = None,
    universe: UniverseOption = None,
    no_ingest: Annotated[bool, flag("--no-ingest", "skip the incremental ingest step")] = False,
    no_prefect: Annotated[
        bool, flag("--no-prefect", "run the library pipeline without Prefect")
    ] = False,
) -> int:
    """Run the daily pipeline (as a Prefect flow)."""
    session = _session(ctx)
    s = session.settings
    if universe:
        s = s.with_overrides(universe=universe)
    progress(f"daily run as of {as_of or 'the latest trading day'}: starting ...")
    from forecasting.pipeline.daily import closed_day, run_pipeline

    today = session.today()
    chosen = _tickers(tickers)
    engine = _working(s)
    if no_prefect:
        summary = run_pipeline(
            engine,
            s,
            as_of,
            today=today,
            force_retrain=force_retrain,
            rerun=rerun,
            tickers=chosen,
        )
    else:
        day = as_of
        if day is None:
            # Given no as_of the flow would read the wall clock; it is given today instead
            # (it resolves that to the latest day with prices), so the closed-day check it
            # would make is made here, by the same function, with this command's clock.
            closed = closed_day(engine, s, today, "live")
            if closed is not None:
                print_summary(closed, s)
                return 0
            day = today
        with _prefect():
            summary = _run_daily(
                as_of=day.isoformat(),
                force_retrain=force_retrain,
                rerun=rerun,
                tickers=chosen,
                ingest=not no_ingest,
                universe=universe,
            )
    if as_of is not None and summary.as_of is not None and summary.as_of != as_of:
        print(as_of_note(as_of, summary.as_of))
    print_summary(summary, s)
    return 0 if summary.status in ("success", "already-complete", "not-a-trading-day") else 1


def as_of_note(asked: dt.date, used: dt.date) -> str:
    """Says that the run's day is not the one asked for, and why."""
    return (
        f"note: forecasting as of {used:%A} {used}, the latest trading day with prices on or "
        f"before --as-of {asked} ({asked:%A}); ingest that day's prices to forecast from it"
    )


def demo(
    ctx: typer.Context,
    rerun: Annotated[
        bool, flag("--rerun", "recompute the day's forecasts if the demo already made them")
    ] = False,
) -> int:
    """Ingest the demo market, train, run the daily pipeline and print forecasts."""
    from forecasting.data.calendar import TradingCalendar
    from forecasting.data.ingest import ingest as run_ingest
    from forecasting.data.sources import make_source

    session = _session(ctx)
    s = session.settings.with_overrides(source="demo")
    engine = _engine(s)
    today = session.today()
    print(f"[1/3] ingesting the demo market into {s.database_url} ...", flush=True)
    report = run_ingest(
        engine,
        make_source("demo"),
        end=today,
        history_start=s.history_start,
        today=today,  # bars up to this command's clock's day are not "from the future"
    )
    if not already_shown(report.summary()):
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
    with _prefect():
        summary = _run_daily(as_of=as_of.isoformat(), ingest=False, rerun=rerun)
    print("[3/3] done.\n")
    print_summary(summary, s)
    return 0 if summary.status in ("success", "already-complete") else 1


def backfill(
    ctx: typer.Context,
    start: Annotated[
        dt.date,
        date_option(
            "first as-of date",
        ),
    ],
    end: Annotated[
        dt.date,
        date_option(
            "last as-of date, on or after --start",
        ),
    ],
    tickers: Tickers = None,
) -> None:
    """Replay the daily pipeline over a date range, point-in-time, in a lineage of its own.

    Days already complete are skipped, so a rerun resumes a stopped backfill.
    """
    check_range(start, end)
    _working(_session(ctx).settings)  # a bad setting or no database fails here, before Prefect
    progress(f"backfill {start} to {end}: starting a local Prefect server ...")
    from forecasting_flows.backfill import backfill as run_backfill

    with _prefect():
        # The flow shows a progress bar itself when stderr is a terminal.
        result = run_backfill(start=start, end=end, tickers=_tickers(tickers))
    print(result if isinstance(result, str) else getattr(result, "message", result))


EvaluationTable = Literal["overall", "by_horizon", "by_ticker", "refits"]


def evaluate(
    ctx: typer.Context,
    start: Annotated[
        dt.date | None,
        date_option(
            "first as-of date scored",
            show_default="the first forecast",
        ),
    ] = None,
    end: Annotated[
        dt.date | None,
        date_option(
            "last as-of date scored",
            show_default="the last forecast",
        ),
    ] = None,
    tickers: Tickers = None,
    lineage: Lineage = "live",
    format: Format = "table",
    table: Annotated[
        EvaluationTable,
        typer.Option(help="the table --format csv prints (json prints all four)"),
    ] = "by_horizon",
) -> None:
    """Accuracy of stored forecasts against realized closes.

    RMSE, MAE, MAPE, ratio to naive, direction, coverage, and the retrain cost, of one
    lineage's forecasts and refits.
    """
    check_range(start, end)
    engine = _existing(_session(ctx).settings)
    _known_lineage(engine, lineage)
    progress("evaluate: reading forecasts and realized closes ...")
    from forecasting.evaluation.evaluation import evaluate as run_evaluate

    with engine.connect() as conn:
        report = run_evaluate(
            conn, start=start, end=end, tickers=_tickers(tickers), lineage=lineage
        )
    if format == "table":
        print(report.to_text())
        return
    frames = report.to_frames()
    rows = {
        name: [{str(k): v for k, v in r.items()} for r in frame.to_dict("records")]
        for name, frame in frames.items()
    }
    if format == "json":
        emit_tables(rows)
    else:
        emit(rows[table], [str(c) for c in frames[table].columns], "csv")


def report(
    ctx: typer.Context,
    out: Annotated[
        str | None, typer.Option(help="output folder", show_default="the report_dir setting")
    ] = None,
    tickers: Tickers = None,
    start: Start = None,
    end: End = None,
    lineage: Lineage = "live",
) -> None:
    """Write an HTML report with plots, of one lineage's forecasts."""
    check_range(start, end)
    s = _session(ctx).settings
    engine = _existing(s)
    _known_lineage(engine, lineage)
    progress("report: reading forecasts and drawing plots ...")
    from forecasting.evaluation.report import write_report

    path = write_report(
        engine,
        out or s.report_dir,
        tickers=_tickers(tickers),
        settings=s,
        start=start,
        end=end,
        lineage=lineage,
    )
    print(f"report written to {path}")


def serve(ctx: typer.Context) -> None:
    """Serve the deployments on their schedules in one process (Prefect serve)."""
    from forecasting_flows.serve import serve as run_serve

    _ = _session(ctx).settings  # a bad setting fails here, before anything is served
    run_serve()


def config(ctx: typer.Context, format: Format = "table") -> None:
    """Print the effective settings and where each came from (default, the config file, or an
    environment variable); the tushare token masked."""
    from forecasting.settings import config_file, load_settings_and_origins

    loaded = load_settings_and_origins()
    if format == "table":
        path = config_file()
        print(f"config file: {path} ({'read' if path.exists() else 'not found: defaults'})")
    emit(loaded.rows(), ["setting", "value", "origin", "variable"], format)


def sql(ctx: typer.Context, format: Format = "table") -> None:
    """The SQL queries users run (latest forecasts, one ticker's path, retrain history,
    accuracy): `forecasting sql` lists them, `forecasting sql show NAME` prints one."""
    if ctx.invoked_subcommand is None:
        sql_list(format)


def sql_list(format: Format = "table") -> None:
    """List the queries, each with what it answers."""
    from forecasting_flows.queries import all_queries

    emit([{"name": q.name, "what": q.summary} for q in all_queries()], ["name", "what"], format)


def sql_show(
    name: Annotated[str, typer.Argument(metavar="NAME", help="a name from `forecasting sql list`")],
) -> None:
    """Print one query, to read or to pipe into sqlite3 or psql."""
    from forecasting_flows.queries import query

    print(query(name).text, end="")
