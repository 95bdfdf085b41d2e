"""Daily bars from CSV or Parquet files, as users save them from tushare or elsewhere.

One file or a directory of ``*.csv`` / ``*.parquet`` files (not recursive). Each file is parsed
once, on first use, into normalized bars; the layouts accepted are

* tushare output (``daily``, ``index_daily``, ``pro_bar``): ``ts_code, trade_date, open, high,
  low, close, vol, amount, ...`` in any row order, with or without the leading unnamed pandas
  index column, dates as ``YYYYMMDD`` or ISO;
* a generic ``date, close[, open, high, low, volume, amount]`` layout (any letter case).

The ticker of a row comes from its ``ts_code`` column, else from the ``ticker`` argument (the
CLI's ``--ticker``), else from the file name (``000063.sz.daily.csv`` -> ``000063.SZ``).
Files hold adjusted prices as saved (the shared panel is qfq-adjusted), so ``adj_factor`` is NaN
unless the file has an ``adj_factor`` column.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pandas as pd

from forecasting.data.sources.base import (
    BAR_COLUMNS,
    Security,
    SourceError,
    empty_bars,
    exchange_of,
)
from forecasting.data.sources.tushare import KNOWN_INDEX_TICKERS

SUFFIXES = (".csv", ".parquet")
_DATE_COLUMNS = ("trade_date", "date", "cal_date")
_VALUE_COLUMNS = {  # normalized bar column -> accepted file column names, first found wins
    "open": ("open",),
    "high": ("high",),
    "low": ("low",),
    "close": ("close",),
    "volume": ("vol", "volume"),
    "amount": ("amount",),
    "adj_factor": ("adj_factor",),
}
_TICKER_IN_NAME = re.compile(r"^(\d{6})\.(sh|sz|bj)(?:\.|$)", re.IGNORECASE)


def ticker_from_filename(path: Path) -> str | None:
    """``000063.sz.daily.csv`` -> ``000063.SZ``; ``600519.SH.csv`` -> ``600519.SH``; else None."""
    match = _TICKER_IN_NAME.match(path.name)
    return f"{match.group(1)}.{match.group(2).upper()}" if match else None


class FileSource:
    """Bars read from one CSV/Parquet file or every such file in a directory.

    Args:
        path: a ``.csv`` / ``.parquet`` file or a directory holding them.
        ticker: the ticker for files without a ``ts_code`` column (overrides the file name).
    """

    name = "csv"

    def __init__(self, path: str | Path, *, ticker: str | None = None) -> None:
        self.path = Path(path).expanduser()
        self._ticker = ticker.strip().upper() if ticker else None
        self._bars: dict[str, pd.DataFrame] | None = None

    def __repr__(self) -> str:
        return f"FileSource({str(self.path)!r}, ticker={self._ticker!r})"

    # ----------------------------------------------------------------------------- protocol

    def tickers(self) -> list[str]:
        """Every ticker the files hold, sorted."""
        return sorted(self._load())

    def security(self, ticker: str) -> Security:
        ticker = ticker.strip().upper()
        kind = "index" if ticker in KNOWN_INDEX_TICKERS else "stock"
        return Security(ticker, None, kind, exchange_of(ticker))

    def fetch_bars(self, ticker: str, start: dt.date, end: dt.date) -> pd.DataFrame:
        """The file's bars for ``ticker`` with ``start <= trade_date <= end``, oldest first."""
        ticker = ticker.strip().upper()
        bars = self._load()
        if ticker not in bars:
            held = sorted(bars)
            shown = ", ".join(held[:10]) + (f" and {len(held) - 10} more" if len(held) > 10 else "")
            raise SourceError(
                f"{self.path} holds no bars for {ticker} (asked for {start} to {end}); "
                f"it holds {shown or 'nothing'}. Check the ticker or pass --ticker for a file "
                "without a ts_code column"
            )
        frame = bars[ticker]
        inside = (frame["trade_date"] >= start) & (frame["trade_date"] <= end)
        return frame.loc[inside].reset_index(drop=True)

    def trading_calendar(self, start: dt.date, end: dt.date) -> pd.DataFrame | None:
        """Files carry no calendar; the ingest uses the exchange calendar instead."""
        return None

    # ------------------------------------------------------------------------------ reading

    def _files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        if self.path.is_dir():
            files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in SUFFIXES)
            if not files:
                raise SourceError(f"{self.path} holds no *.csv or *.parquet files")
            return files
        raise SourceError(f"price file or directory {self.path} does not exist; check --path")

    def _load(self) -> dict[str, pd.DataFrame]:
        if self._bars is None:
            parts: dict[str, list[pd.DataFrame]] = {}
            for file in self._files():
                bars = read_bars(file, ticker=self._ticker)
                held = bars["ticker"].unique()
                if len(held) == 1:  # one ticker per file is the usual case; skip the groupby
                    parts.setdefault(str(held[0]), []).append(bars)
                    continue
                for ticker, group in bars.groupby("ticker", sort=False):
                    parts.setdefault(str(ticker), []).append(group.reset_index(drop=True))
            self._bars = {
                ticker: _sorted(
                    pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
                )
                for ticker, frames in parts.items()
            }
        return self._bars


def read_bars(path: Path, *, ticker: str | None = None) -> pd.DataFrame:
    """Normalized bars from one file, oldest first (rows of several tickers possible)."""
    raw = _read_raw(path)
    columns = {_key(c): c for c in raw.columns}
    # A leading unnamed index column (pandas' ``to_csv`` default) carries nothing.
    raw = raw.drop(columns=[c for k, c in columns.items() if k == "" or k.startswith("unnamed:")])
    columns = {k: c for k, c in columns.items() if c in raw.columns}

    date_column = next((columns[k] for k in _DATE_COLUMNS if k in columns), None)
    if date_column is None:
        raise SourceError(
            f"{path}: no date column (expected one of {list(_DATE_COLUMNS)}; found "
            f"{list(raw.columns)})"
        )
    if "close" not in columns:
        raise SourceError(
            f"{path}: no close column (found {list(raw.columns)}); a price file needs at least "
            "a date and a close column"
        )
    if raw.empty:
        return empty_bars()

    bars = pd.DataFrame(
        {
            "ticker": _tickers(raw, columns.get("ts_code"), path, ticker),
            "trade_date": _dates(raw[date_column], path),
        },
        index=raw.index,
    )
    for target, names in _VALUE_COLUMNS.items():
        found = next((columns[n] for n in names if n in columns), None)
        if found is None:
            bars[target] = float("nan")
        else:
            # Unparseable numbers become NaN and are rejected (and recorded) by the ingest.
            bars[target] = pd.to_numeric(raw[found], errors="coerce").astype("float64")
    return _as_dates(_sorted(bars.loc[:, list(BAR_COLUMNS)]))


def _read_raw(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".parquet":
            raw = pd.read_parquet(path)
            if not isinstance(raw.index, pd.RangeIndex):  # a saved index may be the date
                raw = raw.reset_index()
            return raw
        # Codes and dates as text: ``000063`` and ``20190107`` must keep their digits as written;
        # the value columns go through the C parser's fast float path.
        header = pd.read_csv(path, nrows=0, encoding="utf-8-sig").columns
        text = {c: str for c in header if _key(c) in ("ts_code", *_DATE_COLUMNS)}
        return pd.read_csv(path, dtype=text, encoding="utf-8-sig", skipinitialspace=True)
    except (OSError, ValueError, ImportError) as exc:
        raise SourceError(f"{path}: could not be read as {path.suffix[1:]} ({exc})") from exc


def _key(column: object) -> str:
    return str(column).strip().lower().lstrip("\ufeff")


def _tickers(raw: pd.DataFrame, ts_code: object, path: Path, ticker: str | None) -> pd.Series:
    if ts_code is not None:
        codes = raw[ts_code].astype("string").str.strip().str.upper()
        blank = codes.fillna("").eq("")
        if blank.any():
            row = int(blank.to_numpy().argmax())
            raise SourceError(f"{path}: data row {row + 1} has an empty ts_code; fill it in")
        held = {str(c) for c in codes.unique()}
        if ticker is not None and held != {ticker}:
            raise SourceError(
                f"{path}: its ts_code column says {sorted(held)} but --ticker {ticker} was given; "
                "drop --ticker for files that name their ticker"
            )
        if len(held) == 1:  # the usual case; skips a slow per-row conversion
            return pd.Series(held.pop(), index=raw.index, dtype=object)
        return pd.Series(codes.to_numpy(dtype=object), index=raw.index, dtype=object)
    ticker = ticker or ticker_from_filename(path)
    if ticker is None:
        raise SourceError(
            f"{path}: cannot tell the ticker: no ts_code column, no --ticker, and the file name "
            "does not start with a code like 600519.SH; pass --ticker"
        )
    return pd.Series(ticker, index=raw.index, dtype=object)


def _dates(values: pd.Series, path: Path) -> pd.Series:
    """``YYYYMMDD`` or ISO dates (strings, numbers or timestamps) -> ``datetime64``."""
    if pd.api.types.is_datetime64_any_dtype(values):
        stamps = pd.to_datetime(values)
        if stamps.dt.tz is not None:  # keep the wall-clock date the file shows
            stamps = stamps.dt.tz_localize(None)
        parsed = pd.Series(stamps.to_numpy(), index=values.index)
    else:
        if pd.api.types.is_numeric_dtype(values):  # 20190107 saved as a number
            values = values.astype("Int64")
        text = values.astype("string").str.strip()
        compact = (text.str.len() == 8).fillna(False).astype(bool)
        if compact.all():  # the common case, one vectorized parse
            parsed = pd.to_datetime(text, format="%Y%m%d", errors="coerce")
        else:
            parsed = pd.to_datetime(text.where(~compact), format="ISO8601", errors="coerce")
            parsed[compact] = pd.to_datetime(text[compact], format="%Y%m%d", errors="coerce")
    if parsed.isna().any():
        row = int(parsed.isna().to_numpy().argmax())
        raise SourceError(
            f"{path}: data row {row + 1} has date {values.iloc[row]!r}, which is neither "
            "YYYYMMDD nor YYYY-MM-DD; fix or remove that row"
        )
    return parsed


def _as_dates(bars: pd.DataFrame) -> pd.DataFrame:
    """``trade_date`` from datetime64 to ``datetime.date`` (numpy converts in C, fast)."""
    days = bars["trade_date"].to_numpy().astype("datetime64[D]").astype(object)
    return bars.assign(trade_date=pd.Series(days, index=bars.index, dtype=object))


def _sorted(bars: pd.DataFrame) -> pd.DataFrame:
    # Stable, so duplicates keep file order for the ingest to judge.
    return bars.sort_values("trade_date", kind="stable").reset_index(drop=True)
