"""How good were the stored forecasts? Accuracy against realized closes, and what it cost.

Reads the ``forecast_errors`` view (one row per forecast whose target day has a close; the
newest forecast per ticker, ``as_of_date`` and horizon), so it evaluates exactly what users
read. A ``lineage`` restricts both the forecasts and the refits to one lineage (``live`` or a
backfill's); the view itself keeps only the newest forecast across lineages, so for a lineage
the same "newest per key" rule is applied within that lineage instead.

Metrics, per horizon, per ticker and overall:

- RMSE, MAE, MAPE (percent of the actual close);
- ``rmse_ratio``: RMSE over the RMSE of naive persistence (forecast = the ``as_of`` close) on the
  same rows; below 1 beats persistence;
- ``directional_accuracy``: among the rows whose forecast calls a direction (``yhat`` off
  ``base_close`` by more than 1e-9 of it; their count is ``n_directional``), the share where
  ``sign(yhat - base_close)`` equals ``sign(actual - base_close)`` (a flat day is a miss). NaN
  when no forecast moved off persistence: there is no direction to score;
- ``coverage``: share of actuals inside ``[yhat_lower, yhat_upper]``; ``mean_width``: mean
  interval width in price units;
- proper scores, in percent of the ``as_of`` close so that tickers of any price level pool:
  ``interval_score`` (Winkler score of the band at its nominal coverage
  :data:`INTERVAL`, see :func:`forecasting.model.metrics.interval_score`), and the pinball loss
  of ``yhat_lower``, ``yhat`` and ``yhat_upper`` as the ``(1 - INTERVAL) / 2``, 0.5 and
  ``(1 + INTERVAL) / 2`` quantiles (``pinball_lower``, ``pinball_median``, ``pinball_upper``);
  ``mean_width_pct`` is the band's mean width in the same unit.

Refits: the ``model_checks`` rows in range whose decision is not ``keep``, with the training
seconds they cost (``model_checks.train_seconds``, wall time of the fine-tune and/or retrain).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Boolean, Date, bindparam, text
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import TextClause

from forecasting.data.schema import FORECAST_ERROR_COLUMNS
from forecasting.model.metrics import interval_score, pinball, ratio_to_naive

METRIC_COLUMNS = (
    "n",
    "rmse",
    "mae",
    "mape",
    "naive_rmse",
    "rmse_ratio",
    "directional_accuracy",
    "n_directional",
    "coverage",
    "mean_width",
    "mean_width_pct",
    "interval_score",
    "pinball_lower",
    "pinball_median",
    "pinball_upper",
)

# The nominal coverage of the stored bands (the default of the model setting `interval`; the
# forecasts table does not record it per row).
INTERVAL = 0.8

_ERROR_COLUMNS = (
    "ticker, as_of_date, target_date, horizon, model_version_id, run_id, yhat, yhat_lower, "
    "yhat_upper, base_close, actual, error, naive_error, covered"
)

# forecast_errors, restricted to one lineage before "newest per key" is applied.
_LINEAGE_ERRORS = f"""
{FORECAST_ERROR_COLUMNS}
FROM (
    SELECT f.*, ROW_NUMBER() OVER (
        PARTITION BY f.ticker, f.as_of_date, f.horizon
        ORDER BY f.created_at DESC, f.id DESC
    ) AS rn
    FROM forecasts f
    JOIN pipeline_runs r ON r.run_id = f.run_id
    WHERE r.lineage = :lineage
) f
JOIN prices p ON p.ticker = f.ticker AND p.trade_date = f.target_date
WHERE f.rn = 1
"""


def _dated(stmt: TextClause, params: dict[str, Any]) -> TextClause:
    # Typed binds: SQLite stores dates as ISO text, and the sqlite3 module's implicit date
    # adapter is deprecated; SQLAlchemy's Date type does the conversion on both backends.
    for name in ("start", "end"):
        if name in params:
            stmt = stmt.bindparams(bindparam(name, type_=Date))
    return stmt


def load_errors(
    conn: Connection,
    *,
    start: dt.date | None = None,
    end: dt.date | None = None,
    tickers: Sequence[str] | None = None,
    lineage: str | None = None,
) -> pd.DataFrame:
    """Rows of ``forecast_errors`` (or its per-lineage equivalent) with ``as_of_date`` in
    ``[start, end]``, sorted by ticker, ``as_of_date`` and horizon."""
    if lineage is None:
        base = f"SELECT {_ERROR_COLUMNS} FROM forecast_errors"
    else:
        base = f"SELECT {_ERROR_COLUMNS} FROM ({_LINEAGE_ERRORS}) le"
    where: list[str] = []
    params: dict[str, Any] = {}
    if lineage is not None:
        params["lineage"] = lineage
    if start is not None:
        where.append("as_of_date >= :start")
        params["start"] = start
    if end is not None:
        where.append("as_of_date <= :end")
        params["end"] = end
    if tickers:
        where.append("ticker IN :tickers")
        params["tickers"] = [t.upper() for t in tickers]
    sql = base + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY ticker, as_of_date, horizon"
    stmt = _dated(text(sql), params)
    if tickers:
        stmt = stmt.bindparams(bindparam("tickers", expanding=True))
    rows = conn.execute(stmt.columns(as_of_date=Date, target_date=Date), params).mappings().all()
    frame = pd.DataFrame(
        [dict(r) for r in rows], columns=[c.strip() for c in _ERROR_COLUMNS.split(",")]
    )
    for col in ("yhat", "yhat_lower", "yhat_upper", "base_close", "actual", "error", "naive_error"):
        frame[col] = frame[col].astype("float64")
    frame["horizon"] = frame["horizon"].astype("int64")
    frame["covered"] = frame["covered"].astype("int64")
    return frame


def metrics(frame: pd.DataFrame) -> dict[str, float]:
    """The metric row of a set of error rows (see the module docstring); NaN when empty."""
    n = len(frame)
    if n == 0:
        return {c: (0 if c in ("n", "n_directional") else math.nan) for c in METRIC_COLUMNS}
    err = frame["error"].to_numpy(dtype="float64")  # [N]
    naive = frame["naive_error"].to_numpy(dtype="float64")  # [N]
    actual = frame["actual"].to_numpy(dtype="float64")  # [N]
    base = frame["base_close"].to_numpy(dtype="float64")  # [N]
    yhat = frame["yhat"].to_numpy(dtype="float64")  # [N]
    calls = np.abs(yhat - base) > 1e-9 * np.abs(base)  # [N] forecasts that call a direction
    hits = np.sign(yhat - base) == np.sign(actual - base)  # [N]
    rmse = float(np.sqrt(np.mean(err**2)))
    naive_rmse = float(np.sqrt(np.mean(naive**2)))
    lower = frame["yhat_lower"].to_numpy(dtype="float64")  # [N]
    upper = frame["yhat_upper"].to_numpy(dtype="float64")  # [N]
    width = upper - lower
    pct = 100.0 / base  # [N] price units -> percent of the as_of close
    tail = (1.0 - INTERVAL) / 2.0
    return {
        "n": n,
        "rmse": rmse,
        "mae": float(np.mean(np.abs(err))),
        "mape": float(np.mean(np.abs(err) / np.abs(actual)) * 100.0),
        "naive_rmse": naive_rmse,
        "rmse_ratio": ratio_to_naive(rmse, naive_rmse),
        "directional_accuracy": float(np.mean(hits[calls])) if calls.any() else math.nan,
        "n_directional": int(calls.sum()),
        "coverage": float(frame["covered"].mean()),
        "mean_width": float(np.mean(width)),
        "mean_width_pct": float(np.mean(width * pct)),
        "interval_score": float(np.mean(interval_score(lower, upper, actual, 1 - INTERVAL) * pct)),
        "pinball_lower": float(np.mean(pinball(lower, actual, tail) * pct)),
        "pinball_median": float(np.mean(pinball(yhat, actual, 0.5) * pct)),
        "pinball_upper": float(np.mean(pinball(upper, actual, 1.0 - tail) * pct)),
    }


def _grouped(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    rows = [{key: k, **metrics(g)} for k, g in frame.groupby(key, sort=True)]
    return pd.DataFrame(rows, columns=[key, *METRIC_COLUMNS])


def load_refits(
    conn: Connection,
    *,
    start: dt.date | None = None,
    end: dt.date | None = None,
    lineage: str | None = None,
) -> pd.DataFrame:
    """``model_checks`` rows in ``[start, end]`` whose decision is not ``keep``: as_of_date,
    scope, decision, promoted, train_seconds, reason. A lineage keeps its own scopes only
    (``live``: unprefixed scopes; a backfill: ``<lineage>/...``)."""
    where = ["decision <> 'keep'"]
    params: dict[str, Any] = {}
    if start is not None:
        where.append("as_of_date >= :start")
        params["start"] = start
    if end is not None:
        where.append("as_of_date <= :end")
        params["end"] = end
    if lineage == "live":
        where.append("scope NOT LIKE '%/%'")
    elif lineage is not None:
        where.append("substr(scope, 1, :plen) = :prefix")
        params["prefix"] = f"{lineage}/"
        params["plen"] = len(lineage) + 1
    sql = (
        "SELECT as_of_date, scope, decision, promoted, train_seconds, reason FROM model_checks "
        f"WHERE {' AND '.join(where)} ORDER BY as_of_date, id"
    )
    stmt = _dated(text(sql), params).columns(as_of_date=Date, promoted=Boolean)
    rows = conn.execute(stmt, params).mappings().all()
    frame = pd.DataFrame(
        [dict(r) for r in rows],
        columns=["as_of_date", "scope", "decision", "promoted", "train_seconds", "reason"],
    )
    frame["train_seconds"] = frame["train_seconds"].astype("float64").fillna(0.0)
    return frame


@dataclass
class EvaluationReport:
    """Accuracy of stored forecasts and the training cost of the refits in the same range."""

    start: dt.date | None
    end: dt.date | None
    lineage: str | None
    overall: dict[str, float]
    by_horizon: pd.DataFrame
    by_ticker: pd.DataFrame
    refits: pd.DataFrame = field(repr=False)

    @property
    def n_retrains(self) -> int:
        return int((self.refits["decision"] == "retrain").sum())

    @property
    def n_finetunes(self) -> int:
        return int((self.refits["decision"] == "finetune").sum())

    @property
    def train_seconds(self) -> float:
        return float(self.refits["train_seconds"].sum())

    @property
    def rmse_ratio(self) -> float:
        return float(self.overall["rmse_ratio"])

    def to_frames(self) -> dict[str, pd.DataFrame]:
        """``overall`` (one row), ``by_horizon``, ``by_ticker`` and ``refits`` as DataFrames."""
        overall = pd.DataFrame([self.overall], columns=list(METRIC_COLUMNS))
        overall.insert(0, "scope", "all")
        overall["retrains"] = self.n_retrains
        overall["finetunes"] = self.n_finetunes
        overall["train_seconds"] = self.train_seconds
        return {
            "overall": overall,
            "by_horizon": self.by_horizon.copy(),
            "by_ticker": self.by_ticker.copy(),
            "refits": self.refits.copy(),
        }

    def to_text(self) -> str:
        """Plain-text tables for the terminal."""
        span = f"{self.start or 'first'} to {self.end or 'last'}"
        head = f"Forecast accuracy, as_of {span}" + (
            f", lineage {self.lineage}" if self.lineage else ""
        )
        if not self.overall["n"]:
            return (
                f"{head}\nno forecasts with a realized close in range; run `forecasting run` "
                "or `forecasting backfill`, and ingest the target days' prices"
            )
        frames = self.to_frames()
        parts = [
            head,
            "",
            "Overall",
            _table(frames["overall"].drop(columns=["scope"])),
            "",
            "By horizon",
            _table(frames["by_horizon"]),
            "",
            "By ticker",
            _table(frames["by_ticker"]),
            "",
            f"Refits: {self.n_retrains} retrains, {self.n_finetunes} fine-tunes, "
            f"{self.train_seconds:.1f}s training",
        ]
        return "\n".join(parts)


def _fmt(v: Any) -> str:
    if isinstance(v, float | np.floating):
        return "" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def _table(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    cells = [[_fmt(v) for v in row] for row in frame.itertuples(index=False)]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def evaluate(
    conn: Connection,
    *,
    start: dt.date | None = None,
    end: dt.date | None = None,
    tickers: Sequence[str] | None = None,
    lineage: str | None = None,
) -> EvaluationReport:
    """Evaluate the forecasts with ``as_of_date`` in ``[start, end]`` (both optional).

    ``tickers`` restricts the accuracy tables (refits are per scope and are not filtered by
    ticker); ``lineage`` restricts both to one lineage.
    """
    frame = load_errors(conn, start=start, end=end, tickers=tickers, lineage=lineage)
    return EvaluationReport(
        start=start,
        end=end,
        lineage=lineage,
        overall=metrics(frame),
        by_horizon=_grouped(frame, "horizon"),
        by_ticker=_grouped(frame, "ticker"),
        refits=load_refits(conn, start=start, end=end, lineage=lineage),
    )
