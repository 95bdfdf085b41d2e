"""Daily bars from CSV or Parquet files, as users save them from tushare or elsewhere.

One file or a directory of ``*.csv`` / ``*.parquet`` files (not recursive). Each file is parsed
once, on first use, into normalized bars; the layouts accepted are

* tushare output (``daily``, ``index_daily``, ``pro_bar``): ``ts_code, trade_date, open, high,
  low, close, vol, amount, ...`` in any row order, with or without the leading unnamed pandas
  index column, dates as ``YYYYMMDD`` or ISO;
* a generic ``date, close[, open, high, low, volume, amount]`` layout (any letter case);
* the Chinese headers of vendor exports (``日期, 开盘, 最高, 最低, 收盘, 成交量, 成交额``,
  ``代码``/``股票代码``), in UTF-8 or GBK (detected, or named with ``encoding``).

Files load whole (the ingest compares all of a file every run) and are read in chunks of
:data:`CHUNK_ROWS` rows, so a file of millions of rows needs memory for its bars, not for its
text. One file that cannot be read does not stop the others: it is named in :meth:`failures`
(or, when its name gives its ticker, that ticker's :meth:`fetch_bars` raises its error). One
row that cannot be read does not stop its file: it is passed on with a ``problem`` (why) and its
``raw_text``, for the ingest to reject and record; dates saved as numbers (``20190107.0``) parse.

The ticker of a row comes from its ``ts_code`` column, else from the ``ticker`` argument (the
CLI's ``--ticker``), else from the file name (``000063.sz.daily.csv`` -> ``000063.SZ``).
Files hold adjusted prices as saved (the shared panel is qfq-adjusted), so ``adj_factor`` is NaN
unless the file has an ``adj_factor`` column.
"""

from __future__ import annotations

import codecs
import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from forecasting.data.sources.base import (
    BAR_COLUMNS,
    Security,
    SourceError,
    empty_bars,
    exchange_of,
)
from forecasting.data.sources.tushare import KNOWN_INDEX_TICKERS
from forecasting.data.validation import PROBLEM_COLUMN, RAW_TEXT_COLUMN

SUFFIXES = (".csv", ".parquet")
#: Rows parsed at a time; bounds the memory a big file's text needs.
CHUNK_ROWS = 50_000
#: Tried in turn when no encoding is given: UTF-8 (with or without BOM), then GB18030, the
#: superset of GBK and GB2312 that Chinese Windows tools save.
ENCODINGS = ("utf-8-sig", "gb18030")
_DATE_COLUMNS = ("trade_date", "date", "cal_date", "日期", "交易日期")
_CODE_COLUMNS = ("ts_code", "代码", "股票代码", "证券代码")
_VALUE_COLUMNS = {  # normalized bar column -> accepted file column names, first found wins
    "open": ("open", "开盘", "开盘价"),
    "high": ("high", "最高", "最高价"),
    "low": ("low", "最低", "最低价"),
    "close": ("close", "收盘", "收盘价"),
    "volume": ("vol", "volume", "成交量"),
    "amount": ("amount", "成交额", "成交金额"),
    "adj_factor": ("adj_factor", "复权因子"),
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
        encoding: the text encoding of CSV files; ``None`` detects UTF-8 or GBK.
    """

    name = "csv"
    #: Reading a file again is cheap: the ingest compares all of it, every run.
    reads_whole = True

    def __init__(
        self, path: str | Path, *, ticker: str | None = None, encoding: str | None = None
    ) -> None:
        self.path = Path(path).expanduser()
        self._ticker = ticker.strip().upper() if ticker else None
        if encoding is not None:
            try:
                codecs.lookup(encoding)
            except LookupError:
                raise SourceError(
                    f"unknown encoding {encoding!r} for {self.path}; try utf-8 or gbk"
                ) from None
        self._encoding = encoding
        self._bars: dict[str, pd.DataFrame] | None = None
        self._broken: dict[Path, str] = {}

    def __repr__(self) -> str:
        return f"FileSource({str(self.path)!r}, ticker={self._ticker!r})"

    # ----------------------------------------------------------------------------- protocol

    def tickers(self) -> list[str]:
        """Every ticker the files hold (and that of an unreadable file named after one), sorted."""
        named = {t for t in (self._named(p) for p in self._failed()) if t}
        return sorted(set(self._load()) | named)

    def failures(self) -> dict[str, str]:
        """Files that could not be read and whose name does not give their ticker: path -> why."""
        return {str(p): why for p, why in self._failed().items() if self._named(p) is None}

    def security(self, ticker: str) -> Security:
        ticker = ticker.strip().upper()
        kind = "index" if ticker in KNOWN_INDEX_TICKERS else "stock"
        return Security(ticker, None, kind, exchange_of(ticker))

    def fetch_bars(self, ticker: str, start: dt.date, end: dt.date) -> pd.DataFrame:
        """The file's bars for ``ticker`` with ``start <= trade_date <= end``, oldest first
        (rows whose date could not be read come last, with their ``problem``)."""
        ticker = ticker.strip().upper()
        bars = self._load()
        for path, why in self._failed().items():
            if self._named(path) == ticker:
                raise SourceError(why)
        if ticker not in bars:
            held = sorted(bars)
            shown = ", ".join(held[:10]) + (f" and {len(held) - 10} more" if len(held) > 10 else "")
            asked = "" if start <= dt.date(1900, 1, 1) else f" (asked for {start} to {end})"
            raise SourceError(
                f"{self.path} holds no bars for {ticker}{asked}; "
                f"it holds {shown or 'nothing'}. Check the ticker or pass --ticker for a file "
                "without a ts_code column"
            )
        frame = bars[ticker]
        days = frame["trade_date"].to_numpy()  # datetime64[ns], NaT where unreadable
        inside = (days >= np.datetime64(start)) & (days <= np.datetime64(end))
        if PROBLEM_COLUMN in frame.columns:
            inside |= np.isnat(days)  # a row without a readable date must still be seen
        return _as_dates(frame.loc[inside].reset_index(drop=True))

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

    def _named(self, path: Path) -> str | None:
        return self._ticker or ticker_from_filename(path)

    def _failed(self) -> dict[Path, str]:
        self._load()
        return self._broken

    def _load(self) -> dict[str, pd.DataFrame]:
        if self._bars is None:
            parts: dict[str, list[pd.DataFrame]] = {}
            for file in self._files():
                mine: dict[str, list[pd.DataFrame]] = {}
                try:
                    # Chunk by chunk, split by ticker at once: the text of a big file is never
                    # in memory whole, nor are its bars twice.
                    for chunk in read_chunks(file, ticker=self._ticker, encoding=self._encoding):
                        for ticker, group in _by_ticker(chunk):
                            mine.setdefault(ticker, []).append(group)
                except SourceError as exc:  # one broken file must not stop the others
                    self._broken[file] = str(exc)
                    continue
                for ticker, frames in mine.items():
                    parts.setdefault(ticker, []).extend(frames)
            self._bars = {}
            for ticker in list(parts):
                frames = parts.pop(ticker)  # freed as each ticker's frame is built
                self._bars[ticker] = _finish(frames)
        return self._bars


def read_bars(
    path: Path, *, ticker: str | None = None, encoding: str | None = None
) -> pd.DataFrame:
    """Bars from one file, oldest first (rows of several tickers possible), ``trade_date`` as
    ``datetime64`` (NaT where a row's date could not be read; its ``problem`` says why)."""
    chunks = list(read_chunks(path, ticker=ticker, encoding=encoding))
    return _finish(chunks) if chunks else _without_dates(empty_bars())


def read_chunks(
    path: Path, *, ticker: str | None = None, encoding: str | None = None
) -> Iterator[pd.DataFrame]:
    """The file's bars, :data:`CHUNK_ROWS` rows at a time, in file order."""
    for raw in _read_raw(path, encoding):
        bars = _normalize(raw, path, ticker)
        if not bars.empty:
            yield bars


def _finish(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """One ticker's (or file's) chunks as one frame, oldest first, the problem columns only
    where a row has a problem."""
    bars = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if PROBLEM_COLUMN in bars.columns and bars[PROBLEM_COLUMN].isna().all():
        bars = bars.drop(columns=[PROBLEM_COLUMN, RAW_TEXT_COLUMN])
    return _sorted(bars)


def _normalize(raw: pd.DataFrame, path: Path, ticker: str | None) -> pd.DataFrame:
    """One chunk of a file's rows as bars, with a problem and the raw text where a row fails."""
    columns = {_key(c): c for c in raw.columns}
    # A leading unnamed index column (pandas' ``to_csv`` default) carries nothing.
    dropped = [c for k, c in columns.items() if k == "" or k.startswith("unnamed:")]
    columns = {k: c for k, c in columns.items() if c not in dropped}
    date_column = next((columns[k] for k in _DATE_COLUMNS if k in columns), None)
    if date_column is None:
        raise SourceError(
            f"{path}: no date column (expected one of {list(_DATE_COLUMNS)}; found "
            f"{[c for c in raw.columns if c not in dropped]})"
        )
    close_column = next((columns[k] for k in _VALUE_COLUMNS["close"] if k in columns), None)
    if close_column is None:
        raise SourceError(
            f"{path}: no close column (found {[c for c in raw.columns if c not in dropped]}); "
            "a price file needs at least a date and a close column"
        )
    if raw.empty:
        return _without_dates(empty_bars())
    problems: list[pd.Series] = []  # per problem kind: text where the row has it, else NA
    code_column = next((columns[k] for k in _CODE_COLUMNS if k in columns), None)
    tickers, no_code = _tickers(raw, code_column, path, ticker)
    if no_code is not None:
        problems.append(no_code)
    dates, bad_date = _dates(raw[date_column], date_column)
    problems.append(bad_date)
    bars = pd.DataFrame({"ticker": tickers, "trade_date": dates}, index=raw.index)
    for target, names in _VALUE_COLUMNS.items():
        found = next((columns[n] for n in names if n in columns), None)
        if found is None:
            bars[target] = float("nan")
            continue
        values = raw[found]
        numbers = pd.to_numeric(values, errors="coerce").astype("float64")
        if not pd.api.types.is_numeric_dtype(values):  # a cell that is not a number: say which
            text = values.astype("string").str.strip()
            unreadable = numbers.isna() & text.fillna("").ne("")
            problems.append(
                (
                    ""
                    + found
                    + " "
                    + text.where(unreadable).map(repr, na_action="ignore")
                    + " is not a number"
                ).where(unreadable)
            )
        bars[target] = numbers
    bars = bars.loc[:, list(BAR_COLUMNS)]
    why = _join(problems)
    if why.notna().any():
        problem = why.to_numpy(dtype=object, copy=True)
        problem[why.isna().to_numpy()] = None
        bars[PROBLEM_COLUMN] = problem
        rows = raw.loc[why.notna(), [c for c in raw.columns if c not in dropped]]
        raw_text = np.full(len(raw), None, dtype=object)
        raw_text[why.notna().to_numpy()] = [
            ",".join("" if pd.isna(v) else str(v) for v in r) for r in rows.itertuples(index=False)
        ]
        bars[RAW_TEXT_COLUMN] = raw_text
    return bars


def _join(problems: list[pd.Series]) -> pd.Series:
    """The problems of each row joined with "; " (NA where it has none)."""
    out = problems[0].astype("object")
    for p in problems[1:]:
        both = out.notna() & p.notna()
        out = out.where(out.notna(), p.astype("object"))
        if both.any():
            out[both] = problems[0][both].astype(str) + "; " + p[both].astype(str)
    return out


def _read_raw(path: Path, encoding: str | None) -> Iterator[pd.DataFrame]:
    """The file's rows in chunks of :data:`CHUNK_ROWS`, codes and dates as text."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            raw = pd.read_parquet(path)
            if not isinstance(raw.index, pd.RangeIndex):  # a saved index may be the date
                raw = raw.reset_index()
            yield raw
            return
        enc = encoding or _detect_encoding(path)
        # Codes and dates as text: ``000063`` and ``20190107`` must keep their digits as written;
        # the value columns go through the C parser's fast float path.
        header = pd.read_csv(path, nrows=0, encoding=enc).columns
        text = {c: object for c in header if _key(c) in (*_CODE_COLUMNS, *_DATE_COLUMNS)}
        reader = pd.read_csv(
            path, dtype=text, encoding=enc, skipinitialspace=True, chunksize=CHUNK_ROWS
        )
        with reader:
            yield from reader
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"{path}: not readable as {encoding or 'UTF-8 or GBK'} ({exc.reason} at byte "
            f"{exc.start}); pass --encoding with the file's encoding"
        ) from None
    except (OSError, ValueError, ImportError) as exc:
        raise SourceError(f"{path}: could not be read as {suffix[1:]} ({exc})") from None


def _detect_encoding(path: Path) -> str:
    """The first of :data:`ENCODINGS` that decodes the whole file."""
    for enc in ENCODINGS:
        decoder = codecs.getincrementaldecoder(enc)()
        try:
            with path.open("rb") as fh:
                while block := fh.read(1 << 20):
                    decoder.decode(block)
                decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            continue
        return enc
    return ENCODINGS[0]  # the read then fails naming the byte, and suggests --encoding


def _key(column: object) -> str:
    return str(column).strip().lower().lstrip("\ufeff")


def _tickers(
    raw: pd.DataFrame, ts_code: object, path: Path, ticker: str | None
) -> tuple[pd.Series, pd.Series | None]:
    """The ticker of each row, and a problem where a row's ts_code is blank."""
    if ts_code is not None:
        codes = raw[ts_code].astype("string").str.strip().str.upper()
        blank = codes.fillna("").eq("")
        held = {str(c) for c in codes[~blank].unique()}
        if ticker is not None and held - {ticker}:
            raise SourceError(
                f"{path}: its ts_code column says {sorted(held)} but --ticker {ticker} was given; "
                "drop --ticker for files that name their ticker"
            )
        problem = None
        if blank.any():  # filed under the file's own ticker, refused by the ingest
            fallback = str(
                ticker
                or ticker_from_filename(path)
                or (codes[~blank].mode().iat[0] if len(held) else "")
            )
            codes = codes.where(~blank, fallback)
            problem = pd.Series("the row's ts_code is empty", index=raw.index).where(blank)
        if len(held) == 1 and not blank.any():  # the usual case; skips a slow per-row conversion
            return pd.Series(held.pop(), index=raw.index, dtype=object), problem
        # Categorical: a million rows of a few hundred codes hold a few hundred strings.
        return pd.Series(pd.Categorical(codes), index=raw.index), problem
    ticker = ticker or ticker_from_filename(path)
    if ticker is None:
        raise SourceError(
            f"{path}: cannot tell the ticker: no ts_code column, no --ticker, and the file name "
            "does not start with a code like 600519.SH; pass --ticker"
        )
    return pd.Series(ticker, index=raw.index, dtype=object), None


def _dates(values: pd.Series, column: object) -> tuple[pd.Series, pd.Series]:
    """``YYYYMMDD`` or ISO dates (strings, numbers -- also saved as ``20190107.0`` -- or
    timestamps) as ``datetime64``, and a problem where a row's date is neither."""
    if pd.api.types.is_datetime64_any_dtype(values):
        stamps = pd.to_datetime(values)
        if stamps.dt.tz is not None:  # keep the wall-clock date the file shows
            stamps = stamps.dt.tz_localize(None)
        parsed = pd.Series(stamps.to_numpy(), index=values.index)
    else:
        if pd.api.types.is_float_dtype(values):  # 20190107 saved as a float (parquet)
            values = values.round().astype("Int64")
        text = values.astype("string").str.strip()
        # A spreadsheet that saved the date as a number wrote 20190107.0
        text = text.str.replace(r"^(\d{8})\.0*$", r"\1", regex=True)
        compact = (text.str.len() == 8).fillna(False).astype(bool)
        if compact.all():  # the common case, one vectorized parse
            parsed = pd.to_datetime(text, format="%Y%m%d", errors="coerce")
        else:
            parsed = pd.to_datetime(text.where(~compact), format="ISO8601", errors="coerce")
            parsed[compact] = pd.to_datetime(text[compact], format="%Y%m%d", errors="coerce")
    bad = parsed.isna()
    shown = values.astype("string").map(repr, na_action="ignore").fillna("empty")
    problem = (f"{column} " + shown + " is neither YYYYMMDD nor YYYY-MM-DD").where(bad)
    return parsed, problem


def _by_ticker(bars: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    held = bars["ticker"].unique()
    if len(held) == 1:  # one ticker per file is the usual case; skip the groupby
        yield (
            str(held[0]),
            bars.assign(ticker=pd.Series(str(held[0]), index=bars.index, dtype=object)),
        )
        return
    for ticker, group in bars.groupby("ticker", sort=False, observed=True):
        yield (
            str(ticker),
            group.assign(ticker=pd.Series(str(ticker), index=group.index, dtype=object)),
        )


def _without_dates(bars: pd.DataFrame) -> pd.DataFrame:
    return bars.assign(trade_date=pd.Series(dtype="datetime64[ns]"))


def _as_dates(bars: pd.DataFrame) -> pd.DataFrame:
    """``trade_date`` from datetime64 to ``datetime.date`` (None where unreadable; numpy
    converts in C, fast)."""
    stamps = bars["trade_date"].to_numpy().astype("datetime64[D]")
    days = stamps.astype(object)
    if np.isnat(stamps).any():
        days[np.isnat(stamps)] = None
    return bars.assign(trade_date=pd.Series(days, index=bars.index, dtype=object))


def _sorted(bars: pd.DataFrame) -> pd.DataFrame:
    # Stable, so duplicates keep file order for the ingest to judge; unreadable dates last.
    return bars.sort_values("trade_date", kind="stable", na_position="last").reset_index(drop=True)
