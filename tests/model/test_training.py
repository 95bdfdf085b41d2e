"""Training, fine-tuning, prediction and out-of-sample scoring."""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from forecasting.model import training
from forecasting.model.inference import Score, predict, score
from forecasting.model.lstm import ModelConfig
from forecasting.model.trained_model import TrainedModel
from forecasting.model.training import fit, fit_per_ticker

SMALL = ModelConfig(
    input_len=20,
    horizon=5,
    hidden_size=8,
    num_layers=1,
    val_days=20,
    max_epochs=2,
    batch_size=64,
    history_days=200,
    finetune_days=80,
    finetune_epochs=1,
    device="cpu",
)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _series(n: int = 260, seed: int = 0, start: str = "2020-01-01", vol: float = 0.02) -> pd.Series:
    rng = np.random.default_rng(seed)
    dates = [d.date() for d in pd.bdate_range(start, periods=n)]
    return pd.Series(30 * np.exp(np.cumsum(rng.normal(0, vol, n))), index=dates)


def _panel(k: int = 3, n: int = 260) -> dict[str, pd.Series]:
    return {f"T{i}.SH": _series(n, seed=i, vol=0.01 + 0.01 * i) for i in range(k)}


def _read_ashare(path: Path) -> pd.Series:
    df = pd.read_csv(path, index_col=0, dtype={"trade_date": str})
    dates = [dt.date(int(s[:4]), int(s[4:6]), int(s[6:])) for s in df["trade_date"]]
    return pd.Series(df["close"].to_numpy(float), index=dates).sort_index()


def _same_weights(a: TrainedModel, b: TrainedModel) -> bool:
    return a.state_dict.keys() == b.state_dict.keys() and all(
        torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict
    )


def test_a_spike_after_the_cutoff_changes_nothing_before_it() -> None:
    """Leakage: planting a spike after `through` leaves scalers, weights, calibration, metrics
    and the forecast made at the cutoff bit-for-bit identical."""
    clean = _panel()
    through = list(clean["T0.SH"].index)[-30]
    spiked = {k: s.copy() for k, s in clean.items()}
    for s in spiked.values():
        s.iloc[-25:] *= 5.0
    a, b = fit(clean, SMALL, through), fit(spiked, SMALL, through)
    assert a.scalers == b.scalers and a.calibration == b.calibration
    assert _same_weights(a, b)
    assert (a.val_rmse, a.n_train_samples) == (b.val_rmse, b.n_train_samples)
    cut_a = {k: s[s.index <= through] for k, s in clean.items()}
    cut_b = {k: s[s.index <= through] for k, s in spiked.items()}
    pa, pb = predict(a, cut_a), predict(b, cut_b)
    for k in pa:
        np.testing.assert_array_equal(pa[k].yhat, pb[k].yhat)
        np.testing.assert_array_equal(pa[k].upper, pb[k].upper)


def test_same_seed_same_weights() -> None:
    """Training is deterministic on the CPU for a given seed, and the seed matters."""
    data = _panel(2)
    a, b = fit(data, SMALL, dt.date(2021, 1, 1)), fit(data, SMALL, dt.date(2021, 1, 1))
    assert _same_weights(a, b)
    c = fit(data, replace(SMALL, seed=1), dt.date(2021, 1, 1))
    assert not _same_weights(a, c)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_every_cell_type_trains_and_predicts(cell: str) -> None:
    """lstm, gru and rnn all fit and produce ordered intervals."""
    data = _panel(2)
    m = fit(data, replace(SMALL, cell=cell, max_epochs=1), dt.date(2021, 1, 1))
    assert m.history[-1]["epoch"] >= 1 and math.isfinite(m.val_rmse)
    f = predict(m, data)["T1.SH"]
    assert f.yhat.shape == (SMALL.horizon,)


@pytest.mark.parametrize("loss", ["quantile", "mse"])
@pytest.mark.parametrize("target", ["log_return", "minmax"])
def test_predict_gives_ordered_price_intervals_near_the_last_close(loss: str, target: str) -> None:
    """lower <= yhat <= upper, in price units, starting near the last close; horizon-1 interval
    is narrower than horizon-5's for log-returns (uncertainty accumulates)."""
    data = _panel(3)
    cfg = replace(SMALL, loss=loss, target=target)
    m = fit(data, cfg, dt.date(2021, 1, 1))
    cut = {k: s[s.index <= dt.date(2021, 1, 1)] for k, s in data.items()}
    out = predict(m, cut)
    assert set(out) == set(data)
    for k, f in out.items():
        assert f.base_close == cut[k].iloc[-1] and f.origin == cut[k].index[-1]
        assert np.all(f.lower <= f.yhat) and np.all(f.yhat <= f.upper)
        assert np.all(np.abs(f.yhat / f.base_close - 1) < (0.5 if target == "minmax" else 0.2))
        if target == "log_return":
            assert (f.upper - f.lower)[0] < (f.upper - f.lower)[-1]


def test_predict_omits_short_series_and_scales_unknown_tickers_on_their_own_past() -> None:
    """A ticker with fewer than input_len+1 closes is omitted; a ticker the model never saw is
    forecast with a scaler fitted on the closes it was given."""
    data = _panel(2)
    m = fit(data, SMALL, dt.date(2021, 1, 1))
    new = _series(100, seed=9, vol=0.05)
    out = predict(m, {"SHORT.SZ": data["T0.SH"].iloc[:20], "NEW.SZ": new})
    assert set(out) == {"NEW.SZ"}
    assert out["NEW.SZ"].base_close == new.iloc[-1]


def test_short_series_are_skipped_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    """A series too short to train on is left out and the log says which and why."""
    data = {**_panel(2), "NEW.SZ": _series(40, seed=5)}
    with caplog.at_level(logging.INFO, logger="forecasting.model.training"):
        m = fit(data, SMALL, dt.date(2021, 1, 1))
    assert "NEW.SZ" not in m.tickers and "T0.SH" in m.tickers
    assert any("skipping NEW.SZ" in r.getMessage() for r in caplog.records)


def test_calibration_is_persistence_on_a_random_walk_and_covers_validation() -> None:
    """On random walks the network has nothing to learn: every shrink factor is 0, so the point
    forecast is exactly persistence (validation RMSE equals naive's); the conformalized band
    has positive factors on both sides and covers at least about its nominal share of
    validation (each factor is the larger of the validation and training ones)."""
    m = fit(_panel(3), SMALL, dt.date(2021, 1, 1))
    shrink = np.asarray(m.calibration["shrink"])
    assert shrink.shape == (SMALL.horizon,) and np.all(shrink == 0.0)
    assert m.val_rmse == pytest.approx(m.val_naive_rmse, rel=1e-12)
    assert m.calibration["method"] == "cqr"
    assert 0.75 <= m.calibration["val_coverage"] <= 0.97
    assert np.all(np.asarray(m.calibration["f_lo"]) > 0)
    assert np.all(np.asarray(m.calibration["f_hi"]) > 0)


def test_fine_tune_warm_starts_on_recent_days_only() -> None:
    """A fine-tune keeps the parent's scalers, starts from its weights (epoch 0 scores them),
    and trains only on windows of the last finetune_days."""
    data = _panel(2, n=400)
    base = fit(data, SMALL, dt.date(2020, 12, 1))
    tuned = fit(data, SMALL, dt.date(2021, 3, 1), init=base)
    assert tuned.scalers == base.scalers
    cfg = SMALL
    per_series = cfg.finetune_days - cfg.val_days - cfg.horizon
    assert tuned.n_train_samples == 2 * per_series
    assert tuned.history[0]["epoch"] == 0 and not _same_weights(base, tuned)
    with pytest.raises(ValueError, match="forecasting train --full"):
        fit(data, replace(SMALL, hidden_size=4), dt.date(2021, 3, 1), init=base)


def test_per_ticker_models_are_fitted_one_by_one() -> None:
    """per_ticker=True fits one model per ticker; fit() itself refuses several series."""
    data = _panel(2)
    cfg = replace(SMALL, per_ticker=True, max_epochs=1)
    with pytest.raises(ValueError, match="fit_per_ticker"):
        fit(data, cfg, dt.date(2021, 1, 1))
    models = fit_per_ticker(data, cfg, dt.date(2021, 1, 1))
    assert {k: m.tickers for k, m in models.items()} == {"T0.SH": ["T0.SH"], "T1.SH": ["T1.SH"]}


def test_score_matches_a_slow_loop_over_origins() -> None:
    """score() equals per-origin predict() calls turned into normalized errors, counting only
    targets among the newest `window` trading days after the cutoff."""
    data = _panel(2, n=300)
    through = list(data["T0.SH"].index)[-40]
    m = fit(data, SMALL, through)
    end = list(data["T0.SH"].index)[-5]  # some targets beyond `end` must be ignored
    window, H = 25, SMALL.horizon
    err, nerr = [], []
    for k, s in data.items():
        s = s[s.index <= end]
        dates = list(s.index)
        newest = set(d for d in dates if d > through)
        newest = set(sorted(newest)[-window:])
        std = m.scalers[k]["std"]
        for i, o in enumerate(dates):
            if o < through:
                continue
            f = predict(m, {k: s.iloc[: i + 1]})[k]
            for h in range(1, H + 1):
                if i + h < len(dates) and dates[i + h] in newest:
                    actual = s.iloc[i + h]
                    # Normalized units, horizon-free: divided by the scaler std and sqrt(h).
                    err.append(np.log(f.yhat[h - 1] / actual) / std / np.sqrt(h))
                    nerr.append(np.log(f.base_close / actual) / std / np.sqrt(h))
    got = score(m, data, after=through, through=end, window=window)
    # 35 days follow the cutoff, so each of the newest 25 is reached from every horizon.
    assert got.n == len(err) == 2 * window * H
    assert got.rmse == pytest.approx(np.sqrt(np.mean(np.square(err))), rel=1e-6)
    assert got.naive_rmse == pytest.approx(np.sqrt(np.mean(np.square(nerr))), rel=1e-9)
    assert got.ratio == pytest.approx(got.rmse / got.naive_rmse)


def test_score_with_nothing_to_score_is_nan() -> None:
    """No targets after the cutoff: n == 0 and the ratio is nan, not a division error."""
    data = _panel(2)
    m = fit(data, SMALL, dt.date(2021, 1, 1))
    last = data["T0.SH"].index[-1]
    assert math.isnan(score(m, data, after=last, through=last, window=20).ratio)
    assert Score(1.0, 2.0, 3).ratio == 0.5


def test_training_on_real_prices_lowers_the_validation_loss(shared_data: Path) -> None:
    """On real A-share closes a short run ends with a validation loss below the untrained
    network's, and the calibrated point forecast is no worse than persistence there."""
    files = sorted((shared_data / "ashare_qfq_panel").glob("*.csv"))[:6]
    data = {f.name.split(".daily")[0].upper(): _read_ashare(f) for f in files}
    cfg = replace(
        SMALL,
        input_len=30,
        horizon=5,
        val_days=40,
        hidden_size=16,
        max_epochs=3,
        history_days=400,
        batch_size=128,
    )
    m = fit(data, cfg, dt.date(2018, 6, 29))
    assert len(m.tickers) >= 5
    assert min(h["val_loss"] for h in m.history[1:]) < m.history[0]["val_loss"]
    assert m.val_rmse <= m.val_naive_rmse
    assert all(v["std"] > 0.005 for v in m.scalers.values())


def test_a_gpu_trained_model_forecasts_on_the_cpu() -> None:
    """A model whose config asked for CUDA still predicts on a machine without a GPU."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the fallback is for machines without one")
    data = _panel(2)
    m = fit(data, SMALL, dt.date(2021, 1, 1))
    gpu = replace(m, config=replace(m.config, device="cuda"))
    np.testing.assert_array_equal(predict(gpu, data)["T0.SH"].yhat, predict(m, data)["T0.SH"].yhat)


def test_the_progress_bar_moves_batch_by_batch_within_an_epoch(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal the bar counts batches, so a long first epoch shows it is moving; it names
    the epoch it is in."""
    monkeypatch.setattr(training, "BAR_INTERVAL_S", 0.0)  # draw every update
    config = replace(SMALL, max_epochs=2, patience=5, batch_size=64)
    fit(_panel(2), config, dt.date(2021, 1, 1), progress=True)
    drawn = capsys.readouterr().err.replace("\r", "\n")
    bars = re.finditer(r"training epoch \d/2: +\d+%\|[^|]*\| (\d+)/(\d+) ", drawn)
    counts = {(int(m[1]), int(m[2])) for m in bars}
    assert counts, drawn
    total = max(t for _, t in counts)
    assert total >= 4 and total % 2 == 0, drawn  # two epochs of at least two batches
    within_first = {n for n, _ in counts if 0 < n < total // 2}
    assert within_first, drawn  # drawn between batches of epoch 1, not only at its end
    assert "training epoch 2/2" in drawn, drawn
