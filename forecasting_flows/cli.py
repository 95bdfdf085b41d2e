"""The ``forecasting`` command line: the edge where settings are read and flows are started.

A Typer app: the commands are the functions of :mod:`forecasting_flows.commands` (their
parameters are their options), listed in :data:`COMMANDS`; the options every command takes
(``-v``, ``--log-file``, ``--log-json``, ``--version``) belong to :func:`_global` and work
anywhere on the line, before or after the command. :func:`main` runs one command and is the one
place errors are caught: a :class:`~forecasting.errors.ForecastingError` or a usage mistake
(an unknown option, a malformed date) is printed as one line ``error: ...`` with exit status 1,
its traceback only with ``-v``; anything else is a bug and keeps its traceback. A reader that
leaves early (``forecasting evaluate | head``) ends the command quietly.

Nothing heavy is imported before a command needs it: ``forecasting --help`` loads Typer, the
clock and the errors, not torch, pandas, SQLAlchemy or Prefect.
"""

from __future__ import annotations

import os
import select
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer

from forecasting.clock import Clock, real_clock
from forecasting.errors import ForecastingError
from forecasting_flows import commands, logs
from forecasting_flows.options import TICKER_FLAGS

#: The exit status of a process killed by SIGPIPE, which is what a reader that stops early
#: (``forecasting evaluate | head``) would see from a C program.
EXIT_BROKEN_PIPE = 128 + 13
EXIT_INTERRUPTED = 130

#: ``forecasting NAME`` runs the function; its docstring is the command's help.
COMMANDS: dict[str, Callable[..., Any]] = {
    "init-db": commands.init_db,
    "ingest": commands.ingest,
    "prices": commands.prices,
    "calendar": commands.calendar,
    "train": commands.train,
    "run": commands.run,
    "demo": commands.demo,
    "backfill": commands.backfill,
    "evaluate": commands.evaluate,
    "report": commands.report,
    "serve": commands.serve,
    "config": commands.config,
}

#: The global options, which :func:`main` moves in front of the command wherever they are;
#: the value is whether the option takes a value.
GLOBAL_OPTIONS = {"-v": False, "--verbose": False, "--log-json": False, "--log-file": True}

EPILOG = (
    "Global options (-v, --log-file, --log-json) work before or after the command. "
    "Settings: FORECASTING_DATABASE_URL (default sqlite:///forecasting.db), TUSHARE_TOKEN, "
    "FORECASTING_* and an optional forecasting.toml; `forecasting config` shows them all."
)

app = typer.Typer(
    name="forecasting",
    help="Scheduled daily close-price forecasting: ingest prices, check the model for drift, "
    "fine-tune or retrain an LSTM, and write multi-day forecasts to SQL.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"forecasting {version('forecasting-pipeline')}")
        raise typer.Exit()


@app.callback()
def _global(
    ctx: typer.Context,
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="debug logging, and tracebacks for errors")
    ] = False,
    log_file: Annotated[
        str | None,
        typer.Option(metavar="PATH", help="also append the log to this file"),
    ] = None,
    log_json: Annotated[
        bool, typer.Option("--log-json", help="log JSON lines (for log collectors) instead of text")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="print the version"),
    ] = False,
) -> None:
    session = ctx.ensure_object(commands.Session)
    session.verbose = verbose
    logs.configure(verbose=verbose, log_file=log_file, as_json=log_json)
    ctx.with_resource(logs.around_bars())
    # Quiet Prefect in the terminal; but served runs are read in the UI, and they inherit this
    # process's environment, so `serve` keeps Prefect's INFO lines.
    for name, value in (
        ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
        ("PREFECT_LOGGING_LEVEL", "INFO" if ctx.invoked_subcommand == "serve" else "WARNING"),
        ("PREFECT_LOGGING_LOG_PRINTS", "true"),
    ):
        os.environ.setdefault(name, value)
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")


#: ``forecasting NAME`` lists; ``forecasting NAME SUB`` runs one of its subcommands.
GROUPS: dict[str, tuple[Callable[..., Any], dict[str, Callable[..., Any]]]] = {
    "models": (commands.models, {"promote": commands.promote, "rollback": commands.rollback}),
    "sql": (commands.sql, {"list": commands.sql_list, "show": commands.sql_show}),
}

for _name, _fn in COMMANDS.items():
    app.command(_name, epilog=EPILOG)(_fn)
for _name, (_fn, _subcommands) in GROUPS.items():
    _group = typer.Typer(add_completion=False, rich_markup_mode=None)
    _group.callback(invoke_without_command=True, epilog=EPILOG)(_fn)
    for _sub, _subfn in _subcommands.items():
        _group.command(_sub, epilog=EPILOG)(_subfn)
    app.add_typer(_group, name=_name)


def _hoist(argv: Sequence[str]) -> list[str]:
    """``argv`` with the global options moved in front of the command, and the values after
    ``--tickers`` joined (``--tickers A B`` is ``--tickers A,B``), so both read as people
    write them. Nothing after ``--`` is touched."""
    front: list[str] = []
    rest: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        arg = items[i]
        if arg == "--":
            rest += items[i:]
            break
        name = arg.split("=", 1)[0]
        if name in GLOBAL_OPTIONS:
            takes_value = GLOBAL_OPTIONS[name] and "=" not in arg
            front += items[i : i + 1 + takes_value]
            i += 1 + takes_value
            continue
        rest.append(arg)
        i += 1
        if arg in TICKER_FLAGS:
            values = []
            while i < len(items) and not items[i].startswith("-"):
                values.append(items[i])
                i += 1
            if values:
                rest.append(",".join(values))
    return front + rest


def main(argv: Sequence[str] | None = None, clock: Clock = real_clock) -> int:
    """Run one command; ``clock`` tells the commands that default to today what time it is."""
    args = _hoist(sys.argv[1:] if argv is None else argv)
    session = commands.Session(clock=clock, verbose=any(a in ("-v", "--verbose") for a in args))
    command = typer.main.get_command(app)
    try:
        with command.make_context("forecasting", args, obj=session) as ctx:
            code = command.invoke(ctx)
        # A reader that left early (`| head`) shows here, where it is caught, rather than in
        # the interpreter's flush at exit, which would print a warning about it.
        sys.stdout.flush()
        return int(code or 0)
    except typer.Exit as exc:
        sys.stdout.flush()
        return exc.exit_code
    except typer.TyperException as exc:  # a usage mistake: an unknown option, a bad value
        failed = getattr(exc, "ctx", None)
        where = f"; see `{failed.command_path} --help`" if failed is not None else ""
        message = exc.format_message().replace("\n", " ").rstrip(".")
        _error(session, f"{message}{where}")
        return 1
    except ForecastingError as exc:
        # Its message already names the ticker, the date, the setting or the option, and the fix.
        _error(session, str(exc))
        return exc.exit_code
    except BrokenPipeError:
        if not _stdout_is_broken():
            raise
        return EXIT_BROKEN_PIPE
    except (KeyboardInterrupt, typer.Abort) as exc:
        # SIGTERM arrives as an Interrupted (a KeyboardInterrupt) carrying its exit status, 143.
        print(
            f"interrupted ({exc or 'SIGINT'}); a rerun resumes where this stopped", file=sys.stderr
        )
        return int(getattr(exc, "exit_code", EXIT_INTERRUPTED))


def _error(session: commands.Session, message: str) -> None:
    if session.verbose:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)


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
