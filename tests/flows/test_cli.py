"""The command line: help everywhere, and the commands that need no model, on a real file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from forecasting_flows.cli import build_parser, main

COMMANDS = [
    "init-db",
    "ingest",
    "prices",
    "calendar",
    "train",
    "models",
    "run",
    "demo",
    "backfill",
    "evaluate",
    "report",
    "serve",
]


def test_console_script_help() -> None:
    """`forecasting --help` lists every command."""
    out = subprocess.run(
        [sys.executable, "-m", "forecasting_flows.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each command explains itself with --help."""
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([command, "--help"])
    assert exc.value.code == 0
    assert len(capsys.readouterr().out.splitlines()) >= 3


def test_init_ingest_prices_models(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    shared_data: Path,
) -> None:
    """init-db, a CSV ingest (twice: idempotent), prices and models on a real SQLite file."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FORECASTING_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    assert main(["init-db"]) == 0
    assert "schema ready" in capsys.readouterr().out
    csv = shared_data / "tushare_raw"
    assert main(["ingest", "--source", "csv", "--path", str(csv)]) == 0
    first = capsys.readouterr().out
    assert "128 inserted" in first
    assert main(["ingest", "--source", "csv", "--path", str(csv)]) == 0
    assert "0 inserted" in capsys.readouterr().out
    assert main(["prices"]) == 0
    out = capsys.readouterr().out
    assert "600519.SH  stock  2021-01-04  2021-04-09  64" in out
    assert main(["models"]) == 0
    assert "no model versions yet" in capsys.readouterr().out
    assert main(["calendar", "--date", "2026-12-30", "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "2027-01-01" in out and "weekdays" in out


def test_bad_dates_and_config_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed date is a usage error; a bad config file is reported, not a traceback."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--as-of", "yesterday"])
    assert "not a date" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("nonsense = 1\n", encoding="utf-8")
    monkeypatch.setenv("FORECASTING_CONFIG", str(bad))
    assert main(["prices"]) == 2
    assert "unknown keys" in capsys.readouterr().err


def test_tushare_without_a_token_says_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ingesting from tushare with no token fails before any network call, naming TUSHARE_TOKEN."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUSHARE_TOKEN", raising=False)
    monkeypatch.setenv("FORECASTING_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    assert main(["ingest", "--source", "tushare", "--tickers", "600519.SH"]) == 1
    assert "TUSHARE_TOKEN" in capsys.readouterr().err
