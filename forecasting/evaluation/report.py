"""An HTML report with plots: how the forecasts did, when the model was refit, how it trained.

``write_report`` writes ``<out_dir>/index.html`` and PNGs next to it:

- ``forecast_<ticker>.png``: actual closes against the horizon-1 forecasts with their interval
  band, and the newest ``as_of`` forecast path (every horizon) with its band;
- ``error_by_horizon.png``: RMSE per horizon against naive persistence;
- ``rolling_rmse.png``: the rolling RMSE ratio to persistence over ``check_window`` forecast
  days, with the retrain threshold and the refits from ``model_checks`` marked;
- ``training_loss.png``: train and validation loss per epoch of the newest model versions.

Plots use matplotlib's object API (``Figure``, Agg canvas) and never pyplot, so rendering
needs no display and holds no global state between reports.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sqlalchemy import Date, bindparam, text
from sqlalchemy.engine import Connection, Engine

from forecasting.evaluation.evaluation import EvaluationReport, evaluate, load_errors, load_refits
from forecasting.settings import Settings

INDEX = "index.html"
MAX_TICKERS = 4
MAX_VERSIONS = 4


def latest_report(out_dir: str | Path) -> Path | None:
    """The report's ``index.html`` under ``out_dir`` if one has been written, else ``None``."""
    path = Path(out_dir) / INDEX
    return path if path.is_file() else None


def busiest_tickers(
    conn: Connection,
    n: int = MAX_TICKERS,
    *,
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> list[str]:
    """The ``n`` tickers with the most stored forecasts (ties by ticker)."""
    where, params = _range(start, end)
    sql = (
        f"SELECT ticker, COUNT(*) AS n FROM forecasts {where} "
        "GROUP BY ticker ORDER BY n DESC, ticker LIMIT :n"
    )
    rows = conn.execute(_typed(sql, params), {**params, "n": n}).all()
    return [r[0] for r in rows]


def _range(start: dt.date | None, end: dt.date | None) -> tuple[str, dict[str, Any]]:
    conds, params = [], {}
    if start is not None:
        conds.append("as_of_date >= :start")
        params["start"] = start
    if end is not None:
        conds.append("as_of_date <= :end")
        params["end"] = end
    return ("WHERE " + " AND ".join(conds) if conds else ""), params


def _typed(sql: str, params: dict[str, Any]) -> Any:
    stmt = text(sql)
    for name in ("start", "end", "as_of", "lo", "hi"):
        if name in params:
            stmt = stmt.bindparams(bindparam(name, type_=Date))
    return stmt


def _closes(conn: Connection, ticker: str, lo: dt.date, hi: dt.date) -> pd.Series:
    # Raw stored closes, the same numbers forecast_errors compares against.
    sql = (
        "SELECT trade_date, close FROM prices WHERE ticker = :t AND trade_date >= :lo "
        "AND trade_date <= :hi ORDER BY trade_date"
    )
    params = {"t": ticker, "lo": lo, "hi": hi}
    rows = conn.execute(_typed(sql, params).columns(trade_date=Date), params).all()
    return pd.Series([float(r[1]) for r in rows], index=[r[0] for r in rows], dtype="float64")


def _latest_path(conn: Connection, ticker: str, end: dt.date | None) -> pd.DataFrame:
    """The newest as_of forecast path of ``ticker`` (every horizon) from ``latest_forecasts``."""
    params: dict[str, Any] = {"t": ticker}
    cond = ""
    if end is not None:
        cond = " AND as_of_date <= :end"
        params["end"] = end
    sql = (
        "SELECT as_of_date, target_date, horizon, yhat, yhat_lower, yhat_upper, base_close "
        "FROM latest_forecasts WHERE ticker = :t AND as_of_date = ("
        f"SELECT MAX(as_of_date) FROM latest_forecasts WHERE ticker = :t{cond}) ORDER BY horizon"
    )
    stmt = _typed(sql, params).columns(as_of_date=Date, target_date=Date)
    rows = conn.execute(stmt, params).mappings().all()
    return pd.DataFrame(
        [dict(r) for r in rows],
        columns=[
            "as_of_date",
            "target_date",
            "horizon",
            "yhat",
            "yhat_lower",
            "yhat_upper",
            "base_close",
        ],
    )


def _no_data(fig: Figure, message: str) -> None:
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def plot_ticker(
    conn: Connection, ticker: str, errors: pd.DataFrame, end: dt.date | None, path: Path
) -> Path:
    """Actual closes, horizon-1 forecasts with their band, and the newest forecast path."""
    fig = Figure(figsize=(9, 4))
    h1 = errors[(errors["ticker"] == ticker) & (errors["horizon"] == 1)].sort_values("target_date")
    latest = _latest_path(conn, ticker, end)
    dates = list(h1["target_date"]) + list(latest["as_of_date"]) + list(latest["target_date"])
    if not dates:
        _no_data(fig, f"{ticker}: no forecasts yet")
        return _save(fig, path)
    lo, hi = min(dates), max(dates)
    # A little context before the first forecast: the closes the model started from.
    actual = _closes(conn, ticker, lo - dt.timedelta(days=30), hi)
    ax = fig.add_subplot()
    ax.plot(list(actual.index), actual.to_numpy(), color="black", lw=1.2, label="actual close")
    if not h1.empty:
        x = list(h1["target_date"])
        ax.plot(x, h1["yhat"].to_numpy(), color="tab:blue", lw=1, label="forecast, horizon 1")
        ax.fill_between(
            x,
            h1["yhat_lower"].to_numpy(),
            h1["yhat_upper"].to_numpy(),
            color="tab:blue",
            alpha=0.2,
            label="interval, horizon 1",
        )
    if not latest.empty:
        as_of = latest["as_of_date"].iloc[0]
        x = [as_of, *latest["target_date"]]
        base = float(latest["base_close"].iloc[0])
        ax.plot(
            x,
            [base, *latest["yhat"].to_numpy()],
            color="tab:orange",
            ls="--",
            lw=1.2,
            label=f"path as of {as_of}",
        )
        ax.fill_between(
            x,
            [base, *latest["yhat_lower"].to_numpy()],
            [base, *latest["yhat_upper"].to_numpy()],
            color="tab:orange",
            alpha=0.2,
        )
    ax.set_title(f"{ticker}: actual vs forecast")
    ax.set_ylabel("close")
    ax.legend(loc="best", fontsize=8)
    fig.autofmt_xdate()
    return _save(fig, path)


def plot_error_by_horizon(report: EvaluationReport, path: Path) -> Path:
    """Model RMSE next to naive persistence's, per horizon, with the ratio on top."""
    fig = Figure(figsize=(7, 4))
    by_h = report.by_horizon
    if by_h.empty:
        _no_data(fig, "no forecasts with a realized close yet")
        return _save(fig, path)
    ax = fig.add_subplot()
    x = by_h["horizon"].to_numpy()  # [H]
    ax.bar(x - 0.2, by_h["rmse"].to_numpy(), width=0.4, label="model RMSE")
    ax.bar(x + 0.2, by_h["naive_rmse"].to_numpy(), width=0.4, label="naive RMSE", color="grey")
    for xi, r, top in zip(
        x, by_h["rmse_ratio"], np.maximum(by_h["rmse"], by_h["naive_rmse"]), strict=True
    ):
        if not math.isnan(r):
            ax.annotate(f"{r:.2f}", (xi, top), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x)
    ax.set_xlabel("horizon (trading days)")
    ax.set_ylabel("RMSE (price units)")
    ax.set_title("Error by horizon (labels: ratio to naive)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def rolling_ratio(errors: pd.DataFrame, window: int) -> pd.Series:
    """RMSE over naive RMSE on the forecasts of the last ``window`` as_of days (all tickers
    and horizons), indexed by as_of date."""
    if errors.empty:
        return pd.Series(dtype="float64")
    sq = errors.assign(se=errors["error"] ** 2, sn=errors["naive_error"] ** 2)
    daily = sq.groupby("as_of_date")[["se", "sn"]].sum().sort_index()  # [D, 2]
    rolled = daily.rolling(window, min_periods=1).sum()
    ratio = np.sqrt(rolled["se"]) / np.sqrt(rolled["sn"].where(rolled["sn"] > 0))
    out: pd.Series = ratio.astype("float64")
    return out


def plot_rolling(
    errors: pd.DataFrame, refits: pd.DataFrame, window: int, threshold: float, path: Path
) -> Path:
    """The rolling ratio with the threshold line and the refit days marked."""
    fig = Figure(figsize=(9, 4))
    ratio = rolling_ratio(errors, window)
    if ratio.empty:
        _no_data(fig, "no forecasts with a realized close yet")
        return _save(fig, path)
    ax = fig.add_subplot()
    ax.plot(list(ratio.index), ratio.to_numpy(), color="tab:blue", label=f"rolling {window}-day")
    if math.isfinite(threshold):
        ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.axhline(1.0, color="grey", lw=0.8, label="naive persistence")
    styles = {"retrain": ("tab:red", "retrain"), "finetune": ("tab:orange", "fine-tune")}
    for decision, (color, label) in styles.items():
        days = sorted(set(refits.loc[refits["decision"] == decision, "as_of_date"]))
        for i, d in enumerate(days):
            ax.axvline(d, color=color, alpha=0.5, lw=1, label=label if i == 0 else None)
    ax.set_ylabel("RMSE / naive RMSE")
    ax.set_title("Rolling error ratio, threshold and refits")
    ax.legend(fontsize=8, loc="best")
    fig.autofmt_xdate()
    return _save(fig, path)


def latest_histories(
    conn: Connection, n: int = MAX_VERSIONS
) -> list[tuple[int, str, str, list[dict[str, float]]]]:
    """``(id, scope, trained_through, history)`` of the ``n`` newest versions with a history."""
    rows = conn.execute(
        text(
            "SELECT id, scope, trained_through, history FROM model_versions "
            "WHERE history IS NOT NULL ORDER BY id DESC LIMIT :n"
        ),
        {"n": n},
    ).all()
    out = []
    for vid, scope, through, hist in rows:
        try:
            parsed = json.loads(hist)
        except (TypeError, ValueError):
            continue  # a version without a readable history is simply not plotted
        if parsed:
            out.append((int(vid), str(scope), str(through), parsed))
    return out


def plot_training(
    histories: Sequence[tuple[int, str, str, list[dict[str, Any]]]], path: Path
) -> Path:
    """Train (solid) and validation (dashed) loss per epoch, one colour per version."""
    fig = Figure(figsize=(8, 4))
    if not histories:
        _no_data(fig, "no model versions with a training history")
        return _save(fig, path)
    ax = fig.add_subplot()
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink"]
    for (vid, scope, through, hist), color in zip(histories, colors, strict=False):
        epochs = [float(h.get("epoch", i)) for i, h in enumerate(hist, start=1)]
        for key, ls, what in (("train_loss", "-", "train"), ("val_loss", "--", "val")):
            ys = [h.get(key) for h in hist]
            ys_f = [math.nan if y is None else float(y) for y in ys]
            if any(not math.isnan(y) for y in ys_f):
                ax.plot(
                    epochs,
                    ys_f,
                    ls=ls,
                    color=color,
                    marker="o",
                    ms=3,
                    label=f"v{vid} {scope} ({through}) {what}",
                )
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("Training loss of the newest versions")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def _safe_name(ticker: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in ticker)


def _html(frame: pd.DataFrame) -> str:
    return frame.to_html(float_format=lambda v: f"{v:.4f}", index=False, border=0)


def _page(
    title: str,
    report: EvaluationReport,
    plots: list[tuple[str, Path]],
    generated: dt.datetime,
) -> str:
    frames = report.to_frames()
    sections = []
    for caption, path in plots:
        sections.append(
            f'<figure><img src="{html.escape(path.name)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    refit_line = (
        f"{report.n_retrains} retrains, {report.n_finetunes} fine-tunes, "
        f"{report.train_seconds:.1f}s training"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin-bottom: 1.5em; }}
th, td {{ padding: 2px 8px; text-align: right; border-bottom: 1px solid #ddd; }}
img {{ max-width: 100%; }} figure {{ margin: 1em 0; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Generated {generated:%Y-%m-%d %H:%M} UTC. Forecasts with as_of from {report.start or "the first"}
to {report.end or "the last"} day; refits in range: {html.escape(refit_line)}.</p>
<h2>Accuracy</h2>
<h3>Overall</h3>{_html(frames["overall"])}
<h3>By horizon</h3>{_html(frames["by_horizon"])}
<h3>By ticker</h3>{_html(frames["by_ticker"])}
<h2>Plots</h2>
{"".join(sections)}
</body></html>
"""


def write_report(
    engine: Engine,
    out_dir: str | Path,
    *,
    tickers: Sequence[str] | None = None,
    settings: Settings | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
    lineage: str | None = None,
) -> Path:
    """Write ``out_dir/index.html`` and its PNG plots; returns the path of ``index.html``.

    ``tickers``: the tickers to plot (default: up to four with the most forecasts). ``settings``
    gives the rolling window (``policy.check_window``) and the threshold line
    (``policy.rel_threshold``). ``start``/``end`` bound the forecasts' ``as_of_date``;
    ``lineage`` restricts everything to one lineage (default: what ``latest_forecasts`` shows).
    """
    settings = settings or Settings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with engine.connect() as conn:
        report = evaluate(conn, start=start, end=end, lineage=lineage)
        errors = load_errors(conn, start=start, end=end, lineage=lineage)
        refits = load_refits(conn, start=start, end=end, lineage=lineage)
        names = (
            [t.upper() for t in tickers] if tickers else busiest_tickers(conn, start=start, end=end)
        )
        plots: list[tuple[str, Path]] = []
        for t in names:
            path = plot_ticker(conn, t, errors, end, out / f"forecast_{_safe_name(t)}.png")
            plots.append((f"{t}: actual vs forecast (horizon 1 and the newest path)", path))
        histories = latest_histories(conn)
    plots.append(
        (
            "Error by horizon against naive persistence",
            plot_error_by_horizon(report, out / "error_by_horizon.png"),
        )
    )
    policy = settings.policy
    plots.append(
        (
            f"Rolling RMSE ratio ({policy.check_window} days) with threshold and refits",
            plot_rolling(
                errors, refits, policy.check_window, policy.rel_threshold, out / "rolling_rmse.png"
            ),
        )
    )
    plots.append(
        (
            "Training loss of the newest versions",
            plot_training(histories, out / "training_loss.png"),
        )
    )
    index = out / INDEX
    page = _page("Forecast report", report, plots, dt.datetime.now(dt.UTC))
    # Written last and atomically: a linked index.html never points at half-written plots.
    tmp = index.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(index)
    return index
