"""An HTML report people look at: plots first, on one screen; tables after, never ``NaN``.

``write_report`` writes ``<out_dir>/index.html`` and PNGs next to it, for one lineage whose name
heads the page:

- ``forecast_<ticker>.png``: actual closes with the horizon-1 forecasts and their interval, and
  the newest forecast path with its fan (every horizon);
- ``accuracy_over_time.png``: RMSE over naive persistence's, rolling over ``check_window``
  forecast days, per horizon, on errors scaled by each forecast's as-of close, so every ticker
  weighs the same whatever its price (pooled price units let an index at 3,000 drown a stock at
  10), with the retrain threshold;
- ``decisions.png``: every model check's ratio to naive and the threshold that fired, the refits
  told apart (retrain or fine-tune; promoted filled, rejected hollow), and changes made by hand;
- ``coverage.png``: the share of closes inside the forecast interval, rolling, per horizon,
  against the nominal level;
- ``error_by_horizon.png``: the same scale-free ratio per horizon, with each ticker's own;
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
from sqlalchemy import Boolean, Date, bindparam, text
from sqlalchemy.engine import Connection, Engine

from forecasting.evaluation.evaluation import EvaluationReport, evaluate, load_errors
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
    fig = Figure(figsize=(5, 2.8))
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


def scale_free(errors: pd.DataFrame) -> pd.DataFrame:
    """The error rows with ``error`` and ``naive_error`` divided by the forecast's as-of close:
    a fraction of the price, comparable across tickers."""
    base = errors["base_close"].where(errors["base_close"] != 0)
    return errors.assign(error=errors["error"] / base, naive_error=errors["naive_error"] / base)


def _shown_horizons(errors: pd.DataFrame) -> list[int]:
    """Horizon 1, the middle one and the last: enough lines to read, the whole range."""
    hs = sorted(int(h) for h in errors["horizon"].unique())
    return sorted({hs[0], hs[len(hs) // 2], hs[-1]}) if hs else []


def plot_error_by_horizon(errors: pd.DataFrame, path: Path) -> Path:
    """Per horizon: RMSE over naive RMSE on scale-free errors, all tickers pooled (bar), and
    each ticker's own ratio (dots)."""
    fig = Figure(figsize=(5, 2.8))
    if errors.empty:
        _no_data(fig, NO_SCORES)
        return _save(fig, path)
    rel = scale_free(errors)
    ax = fig.add_subplot()
    pooled = _ratios(rel, ["horizon"])  # [H]
    x = pooled.index.to_numpy()
    ax.bar(x, pooled.to_numpy(), width=0.6, color="tab:blue", alpha=0.6, label="all tickers")
    per_ticker = _ratios(rel, ["horizon", "ticker"])  # [H x tickers]
    ax.scatter(
        [h for h, _ in per_ticker.index],
        per_ticker.to_numpy(),
        s=10,
        color="black",
        alpha=0.5,
        label="one ticker",
    )
    ax.axhline(1.0, color="grey", lw=0.8, label="naive persistence")
    ax.set_xticks(x)
    ax.set_xlabel("horizon (trading days)")
    ax.set_ylabel("RMSE / naive RMSE")
    ax.set_title("Error by horizon, scale-free (below 1 beats naive)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _ratios(errors: pd.DataFrame, keys: list[str]) -> pd.Series:
    """RMSE over naive RMSE per group of ``keys``."""
    sq = errors.assign(se=errors["error"] ** 2, sn=errors["naive_error"] ** 2)
    means = sq.groupby(keys)[["se", "sn"]].mean()
    out: pd.Series = (np.sqrt(means["se"]) / np.sqrt(means["sn"].where(means["sn"] > 0))).astype(
        "float64"
    )
    return out


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


def plot_accuracy_over_time(
    errors: pd.DataFrame, window: int, threshold: float, path: Path
) -> Path:
    """The rolling scale-free ratio to naive of a few horizons, with the retrain threshold."""
    fig = Figure(figsize=(5, 2.8))
    if errors.empty:
        _no_data(fig, NO_SCORES)
        return _save(fig, path)
    rel = scale_free(errors)
    ax = fig.add_subplot()
    for h in _shown_horizons(rel):
        ratio = rolling_ratio(rel[rel["horizon"] == h], window)
        ax.plot(list(ratio.index), ratio.to_numpy(), lw=1.2, label=f"horizon {h}")
    if math.isfinite(threshold):
        ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.axhline(1.0, color="grey", lw=0.8, label="naive persistence")
    ax.set_ylabel("RMSE / naive RMSE")
    ax.set_title(f"Accuracy vs persistence, rolling {window} days, scale-free")
    ax.legend(fontsize=7, loc="best")
    fig.autofmt_xdate()
    return _save(fig, path)


def plot_coverage(errors: pd.DataFrame, window: int, nominal: float, path: Path) -> Path:
    """The rolling share of closes inside the interval, per shown horizon, and the nominal."""
    fig = Figure(figsize=(5, 2.8))
    if errors.empty:
        _no_data(fig, NO_SCORES)
        return _save(fig, path)
    ax = fig.add_subplot()
    for h in _shown_horizons(errors):
        daily = (
            errors[errors["horizon"] == h].groupby("as_of_date")["covered"].agg(["sum", "count"])
        )
        rolled = daily.sort_index().rolling(window, min_periods=1).sum()  # [D, 2]
        share = rolled["sum"] / rolled["count"]
        ax.plot(list(share.index), share.to_numpy(), lw=1.2, label=f"horizon {h}")
    ax.axhline(nominal, color="tab:red", ls="--", lw=1, label=f"nominal {nominal:.0%}")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share inside the interval")
    ax.set_title(f"Interval coverage, rolling {window} days")
    ax.legend(fontsize=7, loc="lower left")
    fig.autofmt_xdate()
    return _save(fig, path)


#: How each kind of decision is drawn on the timeline: colour and marker.
_DECISION_STYLE = {
    "retrain": ("tab:red", "^"),
    "finetune": ("tab:orange", "s"),
    "promote": ("tab:purple", "P"),
    "rollback": ("tab:brown", "X"),
}


def plot_decisions(checks: pd.DataFrame, threshold: float, path: Path) -> Path:
    """Each check's ratio to naive (grey: kept) against the ratio threshold, and the refits:
    filled when the new version was promoted, hollow when it was rejected, each labelled with
    the trigger that fired and its threshold (in that trigger's own units)."""
    fig = Figure(figsize=(5, 2.8))
    if checks.empty:
        _no_data(fig, "no model checks yet: run `forecasting run` or `forecasting backfill`")
        return _save(fig, path)
    ax = fig.add_subplot()
    scored = checks[checks["ratio"].notna()]
    ax.scatter(
        list(scored["as_of_date"]), scored["ratio"].to_numpy(), s=6, color="grey", label="check"
    )
    if math.isfinite(threshold):
        ax.axhline(
            threshold, color="tab:red", ls="--", lw=0.8, label=f"ratio threshold {threshold:g}"
        )
    # Refits and hand-made changes sit on the ratio of their check, else on 1 (no score).
    level = checks["ratio"].fillna(1.0)
    for decision, (color, marker) in _DECISION_STYLE.items():
        for promoted, face, word in ((True, color, "promoted"), (False, "none", "rejected")):
            rows = checks[(checks["decision"] == decision) & (checks["promoted"] == promoted)]
            if rows.empty:
                continue
            ax.scatter(
                list(rows["as_of_date"]),
                level[rows.index].to_numpy(),
                s=36,
                marker=marker,
                facecolors=face,
                edgecolors=color,
                label=f"{decision}, {word}",
                zorder=3,
            )
    refits = checks.assign(level=level)[checks["decision"] != "keep"]
    for row in refits.itertuples(index=False):
        trigger = str(row.triggered_by or "")
        if math.isfinite(float(row.threshold)) and trigger != "manual":  # type: ignore[arg-type]
            trigger += f" {row.threshold:g}"
        ax.annotate(
            trigger,
            (row.as_of_date, row.level),
            xytext=(0, 6),
            textcoords="offset points",
            fontsize=6,
            rotation=60,
        )
    first, last = min(checks["as_of_date"]), max(checks["as_of_date"])
    if last - first < dt.timedelta(days=14):
        # A few days of checks (as after `make demo`): matplotlib would pad one date by years.
        ax.set_xlim(first - dt.timedelta(days=7), last + dt.timedelta(days=7))
    ax.set_ylabel("RMSE / naive RMSE")
    ax.set_title("Decisions: checks and refits (label: trigger, threshold)")
    ax.legend(fontsize=6, loc="lower left")
    fig.autofmt_xdate()
    return _save(fig, path)


def load_checks(
    conn: Connection,
    *,
    start: dt.date | None = None,
    end: dt.date | None = None,
    lineage: str | None = None,
) -> pd.DataFrame:
    """Every ``model_checks`` row in range, of one lineage's scopes (``live``: unprefixed;
    a backfill: ``<lineage>/...``; none: all): the decision timeline."""
    where, params = _range(start, end)
    conds = [where.removeprefix("WHERE ")] if where else []
    if lineage == "live":
        conds.append("scope NOT LIKE '%/%'")
    elif lineage is not None:
        conds.append("substr(scope, 1, :plen) = :prefix")
        params.update(prefix=f"{lineage}/", plen=len(lineage) + 1)
    sql = (
        "SELECT as_of_date, scope, decision, triggered_by, threshold, ratio, promoted, "
        "new_version_id, reason FROM model_checks"
        + (f" WHERE {' AND '.join(conds)}" if conds else "")
        + " ORDER BY as_of_date, id"
    )
    stmt = _typed(sql, params).columns(as_of_date=Date, promoted=Boolean)
    columns = [
        "as_of_date",
        "scope",
        "decision",
        "triggered_by",
        "threshold",
        "ratio",
        "promoted",
        "new_version_id",
        "reason",
    ]
    frame = pd.DataFrame([dict(r) for r in conn.execute(stmt, params).mappings()], columns=columns)
    for col in ("threshold", "ratio"):
        frame[col] = frame[col].astype("float64")
    return frame


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
    fig = Figure(figsize=(5, 2.8))
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


#: What an empty accuracy plot says: why there is nothing, and what fills it.
NO_SCORES = (
    "no forecast has reached its target day yet:\nforecasts are scored once the closes of "
    "their target days are ingested;\n`forecasting backfill` scores past days now"
)


def _html(frame: pd.DataFrame) -> str:
    # A value that does not exist (no direction called, no scored rows) is a dash, never NaN.
    return frame.to_html(
        float_format=lambda v: f"{v:.4f}", index=False, border=0, na_rep="\u2014"
    ).replace(">nan<", ">\u2014<")


def lineage_label(lineage: str | None) -> str:
    if lineage is None:
        return "the newest forecast per ticker and day, whichever lineage wrote it"
    if lineage == "live":
        return "live (the scheduled daily runs)"
    return f"{lineage} (a backfill)"


def _page(
    title: str,
    lineage: str | None,
    report: EvaluationReport,
    plots: list[tuple[str, Path]],
    checks: pd.DataFrame,
    generated: dt.datetime,
) -> str:
    frames = report.to_frames()
    figures = "".join(
        f'<figure><img src="{html.escape(path.name)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for caption, path in plots
    )
    refit_line = (
        f"{report.n_retrains} retrains, {report.n_finetunes} fine-tunes, "
        f"{report.train_seconds:.1f}s training"
    )
    if report.overall["n"]:
        tables = (
            f"<h3>Overall</h3>{_html(frames['overall'])}"
            f"<h3>By horizon</h3>{_html(frames['by_horizon'])}"
            f"<h3>By ticker</h3>{_html(frames['by_ticker'])}"
        )
    else:
        tables = f"<p>{html.escape(NO_SCORES.replace(chr(10), ' '))}.</p>"
    refits = checks[checks["decision"] != "keep"].assign(
        promoted=lambda f: f["promoted"].map({True: "yes", False: "no"})
    )
    decisions = f"<h3>Refits and changes by hand</h3>{_html(refits)}" if not refits.empty else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 0.5em 1.5em; }} h1 {{ margin: 0.2em 0; }}
.plots {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(400px, 1fr));
  gap: 0.2em 1em; }}
figure {{ margin: 0; }} img {{ width: 100%; }} figcaption {{ font-size: 0.8em; color: #444; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin-bottom: 1.5em; }}
th, td {{ padding: 2px 8px; text-align: right; border-bottom: 1px solid #ddd; }}
.meta {{ margin: 0 0 0.8em 0; color: #333; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="meta">Lineage: <b class="lineage">{html.escape(lineage_label(lineage))}</b>.
Forecasts with as_of from {report.start or "the first"} to {report.end or "the last"} day;
refits in range: {html.escape(refit_line)}. Generated {generated:%Y-%m-%d %H:%M} UTC.</p>
<div class="plots">{figures}</div>
<h2>Accuracy</h2>
{tables}
{decisions}
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
    gives the rolling window (``policy.check_window``), the threshold line
    (``policy.rel_threshold``) and the nominal coverage (``model.interval``). ``start``/``end``
    bound the forecasts' ``as_of_date``; ``lineage`` restricts everything to one lineage
    (default: what ``latest_forecasts`` shows), and the page says which.
    """
    settings = settings or Settings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with engine.connect() as conn:
        report = evaluate(conn, start=start, end=end, lineage=lineage)
        errors = load_errors(conn, start=start, end=end, lineage=lineage)
        checks = load_checks(conn, start=start, end=end, lineage=lineage)
        names = (
            [t.upper() for t in tickers] if tickers else busiest_tickers(conn, start=start, end=end)
        )
        fans: list[tuple[str, Path]] = []
        for t in names:
            path = plot_ticker(conn, t, errors, end, out / f"forecast_{_safe_name(t)}.png")
            fans.append((f"{t}: actual closes, horizon-1 forecasts and the newest fan", path))
        histories = latest_histories(conn)
    policy = settings.policy
    window = policy.check_window
    plots = [
        (
            f"Accuracy vs persistence over time (rolling {window} days, scale-free)",
            plot_accuracy_over_time(
                errors, window, policy.rel_threshold, out / "accuracy_over_time.png"
            ),
        ),
        (
            "Decisions: promoted (filled) and rejected (hollow) refits, the trigger that fired",
            plot_decisions(checks, policy.rel_threshold, out / "decisions.png"),
        ),
        (
            f"Interval coverage over time against the nominal {settings.model.interval:.0%}",
            plot_coverage(errors, window, settings.model.interval, out / "coverage.png"),
        ),
        *fans,
        (
            "Error by horizon against naive persistence (scale-free)",
            plot_error_by_horizon(errors, out / "error_by_horizon.png"),
        ),
        (
            "Training loss of the newest versions",
            plot_training(histories, out / "training_loss.png"),
        ),
    ]
    index = out / INDEX
    page = _page("Forecast report", lineage, report, plots, checks, dt.datetime.now(dt.UTC))
    # Written last and atomically: a linked index.html never points at half-written plots.
    tmp = index.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(index)
    return index
