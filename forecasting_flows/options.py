"""The command-line options more than one command takes, each defined once.

A command declares an option by naming one of these types in its signature
(``start: Start = None``); a new shared option (``--lineage``, a source's ``--timeout``) is one
``Annotated`` alias here. Dates are parsed by :func:`parse_date_option` into ``datetime.date``,
so every command takes ``YYYY-MM-DD`` and ``YYYYMMDD`` alike and says so in ``--help``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import typer

from forecasting.clock import parse_date
from forecasting.errors import InputError

#: The metavar of every date option: how to write one.
DATE_METAVAR = "YYYY-MM-DD"
#: The output formats of the commands that list rows.
OutputFormat = Literal["table", "csv", "json"]


def parse_date_option(value: Any) -> dt.date:
    """A date as people write it: ``YYYY-MM-DD`` or ``YYYYMMDD``."""
    if isinstance(value, dt.date):
        return value
    try:
        return parse_date(str(value))
    except InputError as exc:
        raise typer.BadParameter(str(exc)) from None


def date_option(help: str, **kwargs: Any) -> Any:
    """A date option: parsed into a ``datetime.date``, its format in its help and metavar."""
    return typer.Option(
        parser=parse_date_option,
        metavar=DATE_METAVAR,
        help=f"{help} (YYYY-MM-DD or YYYYMMDD)",
        **kwargs,
    )


def flag(name: str, help: str) -> Any:
    """An on/off switch, off unless given (``--rerun``; no ``--no-rerun`` twin)."""
    return typer.Option(name, help=help)


Start = Annotated[dt.date | None, date_option("first date")]
End = Annotated[dt.date | None, date_option("last date")]
Tickers = Annotated[
    list[str] | None,
    typer.Option(
        "--tickers",
        "--ticker",
        "-t",
        metavar="T[,T...]",
        help="tickers, e.g. 600519.SH,000300.SH (comma- or space-separated, or repeated)",
        show_default="all",
    ),
]
UniverseOption = Annotated[
    str | None,
    typer.Option(
        "--universe",
        "-u",
        metavar="all|index:CODE|T[,T...]",
        help="the universe: all (every listed A-share), index:000300.SH (its members on each "
        "day) or tickers",
        show_default="the universe setting",
    ),
]
Format = Annotated[
    OutputFormat,
    typer.Option("--format", "-f", help="table (plain columns in a pipe), csv or json"),
]

Lineage = Annotated[
    str,
    typer.Option(
        "--lineage",
        help="the lineage to read: live (the daily runs), a backfill's "
        "(backfill:START:END) or a restricted run's (live[600519.SH]); "
        "`forecasting models --lineage all` lists them",
    ),
]

#: The options that take a list of tickers: ``--tickers A B`` reads as ``--tickers A,B``.
TICKER_FLAGS = ("--tickers", "--ticker", "-t")


def tickers(values: Sequence[str] | None) -> list[str] | None:
    """``--tickers`` as a list: comma-separated and repeated values flattened, upper-cased."""
    if not values:
        return None
    out: list[str] = []
    for v in values:
        out.extend(t.strip().upper() for t in v.split(",") if t.strip())
    return out or None
