"""Shared data loading for the benchmarks: the real closes under ``../shared/data``.

The benchmarks read the shared data in place (never copied into the repository), resolved
relative to the repository root so they run from any working directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

# The same override as the tests' ``shared_data`` fixture, for a checkout laid out differently.
DATA_DIR = Path(
    os.environ.get(
        "FORECASTING_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"
    )
)
INDEX_TICKERS = ("000300.SH", "000905.SH", "000852.SH", "000016.SH")
# On the SSE, 000xxx codes are indices (stocks start with 6); on the SZSE, 399xxx are indices.
_INDEX_CODE = re.compile(r"^(000\d{3}\.SH|399\d{3}\.SZ)$")


def data_dir() -> Path:
    """The shared data folder; a clear error when it is missing (a clone outside the team)."""
    if not DATA_DIR.is_dir():
        raise FileNotFoundError(
            f"shared data not found at {DATA_DIR}; the benchmarks need the team's ../shared/data "
            "next to the repository"
        )
    return DATA_DIR


def _closes(df: pd.DataFrame, date_format: str, name: str) -> pd.Series:
    """Closes indexed by ``Timestamp`` trade date, ascending, NaN/non-positive rows dropped."""
    dates = pd.to_datetime(df["trade_date"].astype(str), format=date_format)
    s = pd.Series(pd.to_numeric(df["close"], errors="coerce").to_numpy(), index=dates, name=name)
    s = s[s.notna() & (s > 0)]
    s = s[~s.index.duplicated(keep="last")].sort_index()
    s.index.name = "trade_date"
    return s


def load_index(ticker: str, root: Path | None = None) -> pd.Series:
    """Closes of one index from ``indices/<ticker>.csv`` (ISO dates, oldest first)."""
    path = (root or data_dir()) / "indices" / f"{ticker}.csv"
    df = pd.read_csv(path, dtype={"trade_date": str})
    return _closes(df, "%Y-%m-%d", ticker)


def load_indices(root: Path | None = None) -> dict[str, pd.Series]:
    """The four indices (CSI 300, CSI 500, CSI 1000, SSE 50), in :data:`INDEX_TICKERS` order."""
    return {t: load_index(t, root) for t in INDEX_TICKERS}


def panel_path(ticker: str, root: Path | None = None) -> Path:
    """``600000.SH`` -> ``ashare_qfq_panel/600000.sh.daily.csv``."""
    code, exch = ticker.split(".")
    return (root or data_dir()) / "ashare_qfq_panel" / f"{code}.{exch.lower()}.daily.csv"


def load_panel_ticker(ticker: str, root: Path | None = None) -> pd.Series:
    """Closes of one panel ticker (tushare ``pro_bar`` file: leading index column, YYYYMMDD,
    newest first), returned oldest first."""
    df = pd.read_csv(panel_path(ticker, root), index_col=0, dtype={"trade_date": str})
    return _closes(df, "%Y%m%d", ticker)


def panel_stock_tickers(root: Path | None = None) -> list[str]:
    """Every stock of the panel (its few index files are left out: the indices come from
    ``indices/``, with longer and newer history)."""
    out = []
    for path in sorted(((root or data_dir()) / "ashare_qfq_panel").glob("*.csv")):
        code, exch = path.name.split(".")[:2]
        ticker = f"{code}.{exch.upper()}"
        if not _INDEX_CODE.match(ticker):
            out.append(ticker)
    return out


def choose_panel_tickers(n: int, root: Path | None = None) -> dict[str, pd.Series]:
    """The ``n`` panel stocks with the longest history that end at the panel's last date.

    Deterministic: ranked by number of closes (descending), ties by ticker code. Series that
    stop before the panel's last date (a delisting or the 2018-12-24 files) are left out, so all
    chosen series share one test window.
    """
    series = {t: load_panel_ticker(t, root) for t in panel_stock_tickers(root)}
    series = {t: s for t, s in series.items() if len(s)}
    last = max(s.index[-1] for s in series.values())
    ranked = sorted(
        (t for t, s in series.items() if s.index[-1] == last),
        key=lambda t: (-len(series[t]), t),
    )
    return {t: series[t] for t in ranked[:n]}
