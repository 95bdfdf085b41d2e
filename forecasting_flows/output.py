"""What the commands print: a fixed-width table, and a run's summary with where to read it.

Plain text for a terminal, built from rows the library already returns; nothing here imports
more than the standard library and the settings, so that the command line stays quick to start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from forecasting.settings import Settings

SQL_HINT = """\
Read the forecasts with SQL, e.g. (sqlite3 {db} or psql):
  SELECT ticker, target_date, horizon, yhat, yhat_lower, yhat_upper
  FROM latest_forecasts WHERE as_of_date = '{as_of}' ORDER BY ticker, horizon;
More queries in sql/queries/ (latest per ticker, one ticker's path, retrain history)."""


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
            print(f"  {t}: {why}")
    if summary.as_of:
        db = (
            s.database_url.removeprefix("sqlite:///")
            if s.database_url.startswith("sqlite")
            else "$DATABASE"
        )
        print("\n" + SQL_HINT.format(db=db, as_of=summary.as_of))
