"""What the commands print: rows as a table, CSV or JSON, and a run's summary with where to
read it.

Rows are the dicts the library already returns. A table is drawn with rich on a terminal and
as plain fixed-width columns in a pipe (what ``grep`` and ``awk`` read best); ``--format csv``
and ``--format json`` are for programs. Nothing here imports more than the standard library at
module level, so that the command line stays quick to start.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forecasting.settings import Settings

SQL_HINT = """\
Read the forecasts with SQL, e.g. (sqlite3 {db} or psql):
  SELECT ticker, target_date, horizon, yhat, yhat_lower, yhat_upper
  FROM latest_forecasts WHERE as_of_date = '{as_of}' ORDER BY ticker, horizon;
More queries: `forecasting sql list` (latest per ticker, one ticker's path, retrain history)."""


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):  # None and NaN: nothing to show
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.2f}"
    return str(v)


def _plain(v: Any) -> Any:
    """A value as JSON has it: dates as ISO strings, NaN as null."""
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, float) and v != v:
        return None
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if hasattr(v, "item"):  # a numpy scalar from a DataFrame
        return _plain(v.item())
    return str(v)


def emit(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], fmt: str, *, empty: str = ""
) -> None:
    """Print ``rows`` in ``fmt`` (``table``, ``csv`` or ``json``). With no rows, a table says
    ``empty`` (what to do next); CSV prints its header and JSON ``[]``."""
    if fmt == "json":
        import json

        json.dump([{c: _plain(r.get(c)) for c in columns} for r in rows], sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_plain(r.get(c)) for c in columns] for r in rows)
    elif not rows and empty:
        print(empty)
    elif sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        grid = Table(*columns, box=None, header_style="bold", pad_edge=False)
        for r in rows:
            grid.add_row(*(_cell(r.get(c)) for c in columns))
        Console().print(grid)
    else:
        print(table(rows, columns))


def emit_tables(tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    """Several named tables as one JSON object of row lists."""
    import json

    plain = {
        name: [{k: _plain(v) for k, v in r.items()} for r in rows] for name, rows in tables.items()
    }
    json.dump(plain, sys.stdout, indent=1)
    sys.stdout.write("\n")


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A plain fixed-width table for terminal output."""
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def progress(text: str) -> None:
    """A milestone of a long command, logged at once (before its heavy imports), so that a
    person sees within a second that it started and what it does."""
    import logging

    logging.getLogger("forecasting.cli").info(text)


def result(text: str) -> None:
    """Print a command's result on stdout, unless the terminal has just shown it as a log line
    (both streams on one terminal): said once, and always there for a pipe or a file."""
    from forecasting_flows.logs import already_shown

    if not already_shown(text):
        print(text)


def print_summary(summary: Any, s: Settings) -> None:
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
            # Each reason names its ticker already ("600519.SH: no prices on or before ...").
            print(f"  {t}: {why.removeprefix(f'{t}: ')}")
    if summary.as_of:
        db = (
            s.database_url.removeprefix("sqlite:///")
            if s.database_url.startswith("sqlite")
            else "$DATABASE"
        )
        print("\n" + SQL_HINT.format(db=db, as_of=summary.as_of))
