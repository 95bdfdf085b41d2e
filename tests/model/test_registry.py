"""The model registry on SQLite and Postgres: round-trips, integrity, lineage, activation."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import torch
from sqlalchemy.engine import Engine

from forecasting.data.schema import model_versions
from forecasting.model import registry
from forecasting.model.inference import predict
from forecasting.model.lstm import ModelConfig
from forecasting.model.registry import CheckpointError
from forecasting.model.trained_model import TrainedModel
from forecasting.model.training import fit

CFG = ModelConfig(
    input_len=15,
    horizon=3,
    hidden_size=8,
    num_layers=1,
    val_days=15,
    max_epochs=1,
    batch_size=64,
    finetune_days=60,
    finetune_epochs=1,
    device="cpu",
)


def _data() -> dict[str, pd.Series]:
    rng = np.random.default_rng(3)
    dates = [d.date() for d in pd.bdate_range("2021-01-01", periods=160)]
    return {
        t: pd.Series(10 * np.exp(np.cumsum(rng.normal(0, 0.02, 160))), index=dates)
        for t in ("600000.SH", "000001.SZ")
    }


@pytest.fixture(scope="module")
def model() -> TrainedModel:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fit(_data(), CFG, dt.date(2021, 7, 1))
    finally:
        torch.set_num_threads(threads)


def _assert_same(a: TrainedModel, b: TrainedModel) -> None:
    assert a.config == b.config and a.scalers == b.scalers and a.tickers == b.tickers
    assert a.calibration == b.calibration and a.trained_through == b.trained_through
    assert a.val_rmse == pytest.approx(b.val_rmse) and a.n_train_samples == b.n_train_samples
    assert a.state_dict.keys() == b.state_dict.keys()
    for k in a.state_dict:
        assert (
            torch.equal(a.state_dict[k], b.state_dict[k]) and b.state_dict[k].device.type == "cpu"
        )
    pa, pb = predict(a, _data()), predict(b, _data())
    for k in pa:
        np.testing.assert_array_equal(pa[k].yhat, pb[k].yhat)


def test_round_trip_in_the_database(engine: Engine, model: TrainedModel) -> None:
    """A version saved in the row loads back identical: weights, config, scalers, forecasts."""
    with engine.begin() as conn:
        vid = registry.save_version(conn, model, kind="full", parent_id=None)
    with engine.connect() as conn:
        loaded = registry.load_model(conn, vid)
        info = registry.get_version(conn, vid)
        sha = conn.execute(sa.select(model_versions.c.checkpoint_sha256)).scalar_one()
        blob = conn.execute(sa.select(model_versions.c.checkpoint)).scalar_one()
    _assert_same(model, loaded)
    assert loaded.history[0]["train_loss"] is None  # epoch 0 has no training loss (NaN -> null)
    assert sha == hashlib.sha256(bytes(blob)).hexdigest()
    assert (info.kind, info.status, info.scope, info.parent_id) == (
        "full",
        "candidate",
        "global",
        None,
    )
    assert info.tickers == model.tickers and info.config == model.config.to_dict()
    assert info.created_at.tzinfo is not None


def test_round_trip_as_a_file(engine: Engine, model: TrainedModel, tmp_path: Path) -> None:
    """store='files' writes the checkpoint under model_dir, records its path and sha256, and
    leaves the row's blob empty."""
    with engine.begin() as conn:
        vid = registry.save_version(
            conn, model, kind="full", parent_id=None, store="files", model_dir=tmp_path / "m"
        )
        row = conn.execute(sa.select(model_versions)).mappings().one()
    path = Path(row["checkpoint_path"])
    assert row["checkpoint"] is None and path.parent == (tmp_path / "m").resolve()
    assert row["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    with engine.connect() as conn:
        _assert_same(model, registry.load_model(conn, vid))


def test_a_corrupted_checkpoint_is_detected(engine: Engine, model: TrainedModel) -> None:
    """One flipped byte fails the sha256 check with an error naming the version and the fix."""
    with engine.begin() as conn:
        vid = registry.save_version(conn, model, kind="full", parent_id=None)
        blob = bytearray(conn.execute(sa.select(model_versions.c.checkpoint)).scalar_one())
        blob[len(blob) // 2] ^= 0xFF
        conn.execute(sa.update(model_versions).values(checkpoint=bytes(blob)))
    with engine.connect() as conn, pytest.raises(CheckpointError) as err:
        registry.load_model(conn, vid)
    assert f"model version {vid}" in str(err.value) and "corrupt" in str(err.value)
    assert "forecasting train --full" in str(err.value)


def test_a_missing_checkpoint_file_names_its_path(
    sqlite_engine: Engine, model: TrainedModel, tmp_path: Path
) -> None:
    """A deleted checkpoint file gives a CheckpointError with the path, not a bare OSError."""
    with sqlite_engine.begin() as conn:
        vid = registry.save_version(
            conn, model, kind="full", parent_id=None, store="files", model_dir=tmp_path
        )
        path = conn.execute(sa.select(model_versions.c.checkpoint_path)).scalar_one()
    Path(path).unlink()
    with sqlite_engine.connect() as conn, pytest.raises(CheckpointError, match=path):
        registry.load_model(conn, vid)


def test_fine_tune_records_its_parent(sqlite_engine: Engine, model: TrainedModel) -> None:
    """A fine-tuned model is saved as kind='finetune' with parent_id pointing at the version
    it was warm-started from."""
    with sqlite_engine.begin() as conn:
        parent = registry.save_version(conn, model, kind="full", parent_id=None)
    with sqlite_engine.connect() as conn:
        base = registry.load_model(conn, parent)
    tuned = fit(_data(), CFG, dt.date(2021, 8, 2), init=base)
    with sqlite_engine.begin() as conn:
        child = registry.save_version(conn, tuned, kind="finetune", parent_id=parent)
        info = registry.get_version(conn, child)
    assert (info.kind, info.parent_id, info.trained_through) == (
        "finetune",
        parent,
        dt.date(2021, 8, 2),
    )


def test_only_one_active_version_per_scope(engine: Engine, model: TrainedModel) -> None:
    """activate() retires the current active version of the same scope only; the database
    itself refuses a second active row in one scope."""
    with engine.begin() as conn:
        v1 = registry.save_version(conn, model, kind="full", parent_id=None)
        v2 = registry.save_version(conn, model, kind="full", parent_id=None)
        other = registry.save_version(conn, model, kind="full", parent_id=None, scope="600000.SH")
        registry.activate(conn, v1)
        registry.activate(conn, other)
        registry.activate(conn, v2)
        assert registry.active_version(conn).id == v2
        assert registry.get_version(conn, v1).status == "retired"
        assert registry.active_version(conn, "600000.SH").id == other
        assert [v.id for v in registry.list_versions(conn, "global")] == [v1, v2]
        assert len(registry.list_versions(conn)) == 3
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(
            sa.update(model_versions).where(model_versions.c.id == v1).values(status="active")
        )


def test_set_status_and_unknown_ids(sqlite_engine: Engine, model: TrainedModel) -> None:
    """A candidate can be rejected; an unknown id or status is refused by name."""
    with sqlite_engine.begin() as conn:
        vid = registry.save_version(conn, model, kind="full", parent_id=None)
        registry.set_status(conn, vid, "rejected")
        assert registry.get_version(conn, vid).status == "rejected"
        assert registry.active_version(conn) is None
        with pytest.raises(registry.RegistryError, match="999"):
            registry.get_version(conn, 999)
        with pytest.raises(ValueError, match="bogus"):
            registry.set_status(conn, vid, "bogus")


def test_per_ticker_scope_and_minmax_config_survive(sqlite_engine: Engine) -> None:
    """Config variants (GRU, minmax target, MSE loss) round-trip through the registry."""
    cfg = replace(CFG, cell="gru", target="minmax", loss="mse", per_ticker=True)
    data = {"600000.SH": _data()["600000.SH"]}
    m = fit(data, cfg, dt.date(2021, 7, 1))
    with sqlite_engine.begin() as conn:
        vid = registry.save_version(conn, m, kind="full", parent_id=None, scope="600000.SH")
        _assert_same(m, registry.load_model(conn, vid))
