"""Model versions changed by hand, through the command line: `models promote`, `models
rollback` and `train --force`, each recorded in model_checks; and a run told which day it
forecasts from when that is not the day asked for."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from flow_support import TINY_MODEL, price_folder
from sqlalchemy import select

from forecasting.data.db import make_engine
from forecasting.data.schema import model_checks
from forecasting.model import registry
from forecasting_flows.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[str]:
    """Five tickers' prices through 2019-01-07 and two trained versions (1 retired, 2 active
    or a rejected 2), with tiny model settings, as the environment gives them to the CLI."""
    tmp = tmp_path_factory.mktemp("promotion")
    url = f"sqlite:///{tmp / 'p.db'}"
    with pytest.MonkeyPatch.context() as mp:
        for key in ("FORECASTING_CONFIG", "FORECASTING_TICKERS", "TUSHARE_TOKEN"):
            mp.delenv(key, raising=False)
        for key, value in TINY_MODEL.items():
            mp.setenv(key, value)
        mp.setenv("FORECASTING_DATABASE_URL", url)
        mp.setenv("FORECASTING_MODEL_DIR", str(tmp / "models"))
        mp.chdir(tmp)
        folder = price_folder(shared_data, tmp)
        assert main(["ingest", "--source", "csv", "--path", str(folder)]) == 0
        assert main(["train", "--through", "2018-11-30"]) == 0
        assert main(["train", "--full"]) == 0
        yield url


def _checks(url: str) -> list[dict[str, object]]:
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(model_checks).order_by(model_checks.c.id)).mappings().all()
    engine.dispose()
    return [dict(r) for r in rows]


def _status(url: str) -> dict[int, str]:
    engine = make_engine(url)
    with engine.connect() as conn:
        out = {v.id: v.status.value for v in registry.list_versions(conn)}
    engine.dispose()
    return out


def test_promote_and_roll_back_by_hand(
    database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`models promote V` makes the other version active with the reason recorded; `models
    rollback` returns to the champion before it and marks V rejected; each change is one
    model_checks row (decision, manual trigger, versions before and after, the reason)."""
    monkeypatch.setenv("FORECASTING_DATABASE_URL", database)
    before = _status(database)
    champion = next(v for v, s in before.items() if s == "active")
    other = 1 if champion == 2 else 2  # retired, or rejected by the champion/challenger rule
    assert main(["models", "promote", str(other), "--reason", "it was steadier"]) == 0
    assert f"version {other} is active" in capsys.readouterr().out
    assert _status(database)[other] == "active" and _status(database)[champion] == "retired"
    promote = _checks(database)[-1]
    assert (promote["decision"], promote["triggered_by"], promote["reason"]) == (
        "promote",
        "manual",
        "manual promote: it was steadier",
    )
    assert (promote["model_version_id"], promote["new_version_id"]) == (champion, other)

    assert main(["models", "rollback", "--reason", "it misbehaves"]) == 0
    out = capsys.readouterr().out
    assert f"version {champion} is active again, version {other} rejected" in out
    assert _status(database)[champion] == "active" and _status(database)[other] == "rejected"
    rollback = _checks(database)[-1]
    assert (rollback["decision"], rollback["reason"]) == (
        "rollback",
        "manual rollback: it misbehaves",
    )
    assert (rollback["model_version_id"], rollback["new_version_id"]) == (other, champion)

    # Promoting the active version changes nothing, and records nothing.
    n = len(_checks(database))
    assert main(["models", "promote", str(champion), "--reason", "again"]) == 0
    assert "already active" in capsys.readouterr().out
    assert len(_checks(database)) == n


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["models", "promote", "999", "--reason", "x"], "999"),
        (["models", "promote", "1", "--reason", " "], "--reason is empty"),
        (["models", "rollback", "--scope", "nope", "--reason", "x"], "scope nope has no active"),
    ],
)
def test_a_promotion_that_cannot_be_is_one_line(
    database: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.setenv("FORECASTING_DATABASE_URL", database)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_train_force_makes_the_new_version_active(
    database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`train --finetune --force`: the fine-tuned version is active whatever its validation
    said; when it lost, a promote row says it was forced."""
    monkeypatch.setenv("FORECASTING_DATABASE_URL", database)
    for key, value in TINY_MODEL.items():
        monkeypatch.setenv(key, value)
    assert main(["train", "--finetune", "--force"]) == 0
    out = capsys.readouterr().out
    newest = max(_status(database))
    assert _status(database)[newest] == "active"
    if "(rejected)" in out:
        forced = _checks(database)[-1]
        assert forced["decision"] == "promote" and forced["new_version_id"] == newest
        assert "--force" in str(forced["reason"]) and "(--force)" in out


def test_a_run_says_which_day_it_forecasts_from(
    database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--as-of a Saturday forecasts from the Friday before, and says so."""
    monkeypatch.setenv("FORECASTING_DATABASE_URL", database)
    for key, value in TINY_MODEL.items():
        monkeypatch.setenv(key, value)
    saturday = dt.date(2019, 1, 5)
    assert main(["run", "--no-prefect", "--as-of", saturday.isoformat()]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "note: forecasting as of Friday 2019-01-04, the latest trading day with prices on or "
        "before --as-of 2019-01-05 (Saturday)"
    ), out
