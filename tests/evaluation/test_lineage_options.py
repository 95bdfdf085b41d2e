"""`forecasting evaluate`, `report` and `models` read one lineage: live unless --lineage says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_evaluation import BACKFILL, populate

from forecasting.data.db import init_db, make_engine
from forecasting_flows.cli import main


def test_evaluate_report_and_models_take_a_lineage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """By default evaluate scores the live lineage's forecasts only; --lineage scores a
    backfill's; report writes the same; models lists every lineage's versions with the lineage
    named, or one lineage's; a lineage no run used is refused in one line."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    engine = make_engine(url)
    init_db(engine)
    populate(engine)
    engine.dispose()
    monkeypatch.setenv("FORECASTING_DATABASE_URL", url)
    monkeypatch.chdir(tmp_path)

    assert main(["evaluate", "--start", "2024-01-02"]) == 0
    live = capsys.readouterr().out
    assert main(["evaluate", "--lineage", BACKFILL]) == 0
    backfill = capsys.readouterr().out
    assert "lineage live" in live and "1 retrains, 1 fine-tunes, 15.5s" in live
    assert f"lineage {BACKFILL}" in backfill and "1 retrains, 0 fine-tunes, 7.0s" in backfill

    assert main(["models", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["lineage"] for r in rows} == {"live", BACKFILL}
    assert main(["models", "--format", "json", "--lineage", BACKFILL]) == 0
    assert [r["scope"] for r in json.loads(capsys.readouterr().out)] == [f"{BACKFILL}/global"]

    assert main(["report", "--out", str(tmp_path / "r"), "--lineage", BACKFILL]) == 0
    assert "report written" in capsys.readouterr().out

    assert main(["evaluate", "--lineage", "backfill:typo"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --lineage 'backfill:typo': no run has used it")
    assert len(err.splitlines()) == 1
