"""What the commands print: rows as a table, CSV or JSON, and a run's summary."""

from __future__ import annotations

import datetime as dt
import json
import math

import pytest

from forecasting.pipeline.summary import RunSummary, SummaryStatus
from forecasting.settings import Settings
from forecasting_flows.output import emit, print_summary

ROWS = [
    {"ticker": "600519.SH", "day": dt.date(2021, 1, 4), "ratio": 1.0, "note": None},
    {"ticker": "000001.SZ", "day": dt.date(2021, 1, 5), "ratio": math.nan, "note": "x,y"},
]
COLUMNS = ["ticker", "day", "ratio", "note"]


def test_a_table_in_a_pipe_is_plain_columns(capsys: pytest.CaptureFixture[str]) -> None:
    """Not a terminal: fixed-width columns, nothing where a value is missing, never NaN."""
    emit(ROWS, COLUMNS, "table")
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == COLUMNS
    assert "600519.SH  2021-01-04  1.0000" in out
    assert "nan" not in out.lower() and "None" not in out


def test_csv_and_json_are_for_programs(capsys: pytest.CaptureFixture[str]) -> None:
    """CSV quotes what needs quoting; JSON has ISO dates and null for a missing number."""
    emit(ROWS, COLUMNS, "csv")
    assert capsys.readouterr().out.splitlines() == [
        "ticker,day,ratio,note",
        "600519.SH,2021-01-04,1.0,",
        '000001.SZ,2021-01-05,,"x,y"',
    ]
    emit(ROWS, COLUMNS, "json")
    assert json.loads(capsys.readouterr().out) == [
        {"ticker": "600519.SH", "day": "2021-01-04", "ratio": 1.0, "note": None},
        {"ticker": "000001.SZ", "day": "2021-01-05", "ratio": None, "note": "x,y"},
    ]


def test_no_rows_says_what_to_do_in_a_table_only(capsys: pytest.CaptureFixture[str]) -> None:
    emit([], COLUMNS, "table", empty="nothing yet; run `forecasting ingest`")
    assert capsys.readouterr().out == "nothing yet; run `forecasting ingest`\n"
    emit([], COLUMNS, "json", empty="nothing yet")
    assert capsys.readouterr().out == "[]\n"


def _skipping() -> RunSummary:
    return RunSummary(
        "run-1",
        dt.date(2019, 1, 4),
        "live",
        SummaryStatus.SUCCESS,
        skipped={"002602.SZ": "002602.SZ: no prices on or before 2019-01-04"},
    )


def test_a_skipped_ticker_is_named_once(capsys: pytest.CaptureFixture[str]) -> None:
    """The reason names its ticker already; the summary does not repeat it
    (no "002602.SZ: 002602.SZ: ..."), on the terminal or in the run's markdown artifact."""
    print_summary(_skipping(), Settings())
    out = capsys.readouterr().out
    assert "  002602.SZ: no prices on or before 2019-01-04" in out
    assert "002602.SZ: 002602.SZ" not in out
    markdown = _skipping().markdown()
    assert "- **002602.SZ**: no prices on or before 2019-01-04" in markdown
