"""FileSource: CSV and Parquet price files as users save them (real shared data and small files)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from forecasting.data.sources.base import BAR_COLUMNS, PriceSource, SourceError
from forecasting.data.sources.files import FileSource, ticker_from_filename

EVERYTHING = (dt.date(1990, 1, 1), dt.date(2100, 1, 1))


def data_rows(path: Path) -> int:
    """Lines after the header that hold data, counted on the raw text."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    return sum(1 for line in lines[1:] if line.strip())


@pytest.mark.slow
@pytest.mark.parametrize("folder", ["ashare_qfq_panel", "indices", "tushare_raw"])
def test_every_shared_file_imports_with_sane_content(shared_data: Path, folder: str) -> None:
    """Each real file: one bar per data row, dates ascending and unique, closes positive."""
    directory = shared_data / folder
    source = FileSource(directory)
    assert isinstance(source, PriceSource)
    files = sorted(directory.glob("*.csv"))
    assert files, f"no CSV files in {directory}"
    held = source.tickers()
    total = 0
    for ticker in held:
        bars = source.fetch_bars(ticker, *EVERYTHING)
        assert list(bars.columns) == list(BAR_COLUMNS)
        assert (bars["ticker"] == ticker).all()
        assert all(type(d) is dt.date for d in bars["trade_date"])
        assert bars["trade_date"].is_monotonic_increasing and bars["trade_date"].is_unique, ticker
        assert (bars["close"] > 0).all(), ticker
        assert (bars["low"] <= bars["high"]).all(), ticker
        assert bars["volume"].notna().all() and bars["amount"].notna().all(), ticker
        assert bars["adj_factor"].isna().all()
        total += len(bars)
    assert total == sum(data_rows(f) for f in files)
    if folder == "tushare_raw":
        assert held == ["600519.SH", "600759.SH"]
    else:
        assert len(held) == len(files)  # one ticker per file


def test_shared_panel_file_matches_its_raw_text(shared_data: Path) -> None:
    """000063.SZ: the newest row as written (YYYYMMDD, newest first) lands last and intact."""
    path = shared_data / "ashare_qfq_panel" / "000063.sz.daily.csv"
    bars = FileSource(path).fetch_bars("000063.SZ", *EVERYTHING)
    newest = path.read_text(encoding="utf-8").splitlines()[1].split(",")
    last = bars.iloc[-1]
    assert last["trade_date"] == dt.datetime.strptime(newest[2], "%Y%m%d").date()
    assert (last["open"], last["high"], last["low"], last["close"]) == tuple(
        float(v) for v in newest[3:7]
    )
    assert last["volume"] == float(newest[10]) and last["amount"] == float(newest[11])
    assert len(bars) == data_rows(path)


def test_shared_index_file_with_iso_dates(shared_data: Path) -> None:
    """CSI 300 from index_daily (ISO dates, oldest first): first and last rows as written."""
    source = FileSource(shared_data / "indices" / "000300.SH.csv")
    assert source.security("000300.SH").kind == "index"
    bars = source.fetch_bars("000300.SH", *EVERYTHING)
    assert bars["trade_date"].iloc[0] == dt.date(2005, 1, 4) and bars["close"].iloc[0] == 982.794
    assert bars["trade_date"].iloc[-1] == dt.date(2022, 12, 30)
    assert len(bars) == 4374


def test_fetch_filters_to_the_range(tmp_path: Path) -> None:
    """Only bars with start <= trade_date <= end, both ends inclusive."""
    path = tmp_path / "600519.SH.csv"
    path.write_text(
        "date,close\n2020-01-02,10\n2020-01-03,11\n2020-01-06,12\n2020-01-07,13\n", encoding="utf-8"
    )
    bars = FileSource(path).fetch_bars("600519.SH", dt.date(2020, 1, 3), dt.date(2020, 1, 6))
    assert bars["close"].tolist() == [11.0, 12.0]


def test_bom_unnamed_index_and_yyyymmdd(tmp_path: Path) -> None:
    """A UTF-8 BOM, pandas' unnamed index column and YYYYMMDD dates, rows newest first."""
    path = tmp_path / "saved.csv"
    text = (
        ",ts_code,trade_date,open,high,low,close,pre_close,vol,amount\n"
        "0,600000.SH,20200103,10.1,10.5,10.0,10.4,10.2,1234.5,1300.1\n"
        "1,600000.SH,20200102,10.0,10.3,9.9,10.2,10.0,1000.0,1020.0\n"
    )
    path.write_bytes("\ufeff".encode() + text.encode("utf-8"))
    bars = FileSource(path).fetch_bars("600000.SH", *EVERYTHING)
    assert bars["trade_date"].tolist() == [dt.date(2020, 1, 2), dt.date(2020, 1, 3)]
    assert bars["close"].tolist() == [10.2, 10.4]
    assert bars["volume"].tolist() == [1000.0, 1234.5]
    assert bars["open"].tolist() == [10.0, 10.1]


def test_iso_and_yyyymmdd_give_the_same_bars(tmp_path: Path) -> None:
    """The same rows with ISO dates in one file and YYYYMMDD in another parse identically."""
    iso = tmp_path / "iso" / "000001.SZ.csv"
    compact = tmp_path / "compact" / "000001.SZ.csv"
    for path in (iso, compact):
        path.parent.mkdir()
    iso.write_text(
        "trade_date,close,vol\n2021-03-01,5.5,100\n2021-02-26,5.4,90\n", encoding="utf-8"
    )
    compact.write_text(
        "trade_date,close,vol\n20210301,5.5,100\n20210226,5.4,90\n", encoding="utf-8"
    )
    a = FileSource(iso).fetch_bars("000001.SZ", *EVERYTHING)
    b = FileSource(compact).fetch_bars("000001.SZ", *EVERYTHING)
    pd.testing.assert_frame_equal(a, b)
    assert a["trade_date"].tolist() == [dt.date(2021, 2, 26), dt.date(2021, 3, 1)]


def test_generic_layout_with_cal_date_and_volume(tmp_path: Path) -> None:
    """``Date,Close,Open,High,Low,Volume`` (any case) and a ``cal_date`` column both work."""
    generic = tmp_path / "600036.SH.csv"
    generic.write_text(
        "Date,Close,Open,High,Low,Volume,Comment\n2022-05-05,30.5,30,31,29.9,5000,x\n",
        encoding="utf-8",
    )
    bars = FileSource(generic).fetch_bars("600036.SH", *EVERYTHING)
    row = bars.iloc[0]
    assert (row["open"], row["high"], row["low"], row["close"], row["volume"]) == (
        30.0,
        31.0,
        29.9,
        30.5,
        5000.0,
    )
    assert pd.isna(row["amount"]) and pd.isna(row["adj_factor"])
    cal = tmp_path / "cal" / "600036.SH.csv"
    cal.parent.mkdir()
    cal.write_text("cal_date,close\n20220505,30.5\n", encoding="utf-8")
    assert FileSource(cal).fetch_bars("600036.SH", *EVERYTHING)["trade_date"].tolist() == [
        dt.date(2022, 5, 5)
    ]


def test_ticker_argument_names_files_without_ts_code(tmp_path: Path) -> None:
    """--ticker wins over the file name; without either, a clear error asks for --ticker."""
    path = tmp_path / "600519.SH.csv"
    path.write_text("date,close\n2020-01-02,1000\n", encoding="utf-8")
    assert FileSource(path).tickers() == ["600519.SH"]
    assert FileSource(path, ticker="601318.sh").tickers() == ["601318.SH"]
    anonymous = tmp_path / "prices.csv"
    anonymous.write_text("date,close\n2020-01-02,1000\n", encoding="utf-8")
    assert FileSource(anonymous, ticker="600000.SH").tickers() == ["600000.SH"]
    alone = FileSource(anonymous)
    assert alone.tickers() == []
    assert list(alone.failures()) == [str(anonymous)]
    assert "--ticker" in alone.failures()[str(anonymous)]


def test_ticker_argument_conflicting_with_ts_code_is_an_error(tmp_path: Path) -> None:
    """A file that names its ticker and a different --ticker: refuse rather than relabel."""
    path = tmp_path / "x.csv"
    path.write_text("ts_code,trade_date,close\n600000.SH,20200102,10\n", encoding="utf-8")
    assert FileSource(path, ticker="600000.SH").tickers() == ["600000.SH"]
    with pytest.raises(SourceError, match=r"x\.csv.*600000\.SH.*601318\.SH"):
        FileSource(path, ticker="601318.SH").fetch_bars("601318.SH", *EVERYTHING)


def test_parquet_files_and_mixed_directories(tmp_path: Path) -> None:
    """A parquet file (datetime dates, ts_code) sits beside a CSV; both are read."""
    pd.DataFrame(
        {
            "ts_code": ["000333.SZ", "000333.SZ"],
            "trade_date": pd.to_datetime(["2023-01-04", "2023-01-03"]),
            "close": [50.0, 49.5],
            "vol": [10.0, 20.0],
        }
    ).to_parquet(tmp_path / "midea.parquet")
    (tmp_path / "600519.SH.csv").write_text("date,close\n2023-01-03,1700\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not prices", encoding="utf-8")
    source = FileSource(tmp_path)
    assert source.tickers() == ["000333.SZ", "600519.SH"]
    bars = source.fetch_bars("000333.SZ", *EVERYTHING)
    assert bars["trade_date"].tolist() == [dt.date(2023, 1, 3), dt.date(2023, 1, 4)]
    assert bars["close"].tolist() == [49.5, 50.0] and bars["volume"].tolist() == [20.0, 10.0]


def test_files_are_read_once(tmp_path: Path) -> None:
    """The first call reads the files; later calls use the cache (a deleted file is not re-read)."""
    path = tmp_path / "600519.SH.csv"
    path.write_text("date,close\n2020-01-02,1000\n", encoding="utf-8")
    source = FileSource(tmp_path)
    assert source.tickers() == ["600519.SH"]
    path.unlink()
    assert len(source.fetch_bars("600519.SH", *EVERYTHING)) == 1


def test_missing_close_names_the_file(tmp_path: Path) -> None:
    """No close column: the ticker its name gives fails with a SourceError naming the file and
    the columns it has; the other files of the folder still read."""
    path = tmp_path / "600519.SH.csv"
    path.write_text("date,price\n2020-01-02,1000\n", encoding="utf-8")
    (tmp_path / "600036.SH.csv").write_text("date,close\n2020-01-02,30\n", encoding="utf-8")
    source = FileSource(tmp_path)
    assert source.tickers() == ["600036.SH", "600519.SH"] and source.failures() == {}
    assert len(source.fetch_bars("600036.SH", *EVERYTHING)) == 1
    with pytest.raises(SourceError, match=r"600519\.SH\.csv.*no close column.*price"):
        source.fetch_bars("600519.SH", *EVERYTHING)


def test_a_bad_date_is_one_bad_row_with_its_text(tmp_path: Path) -> None:
    """An unparseable date costs its row, not the file: the row comes back without a date, with
    a problem naming the value and its raw text; a date saved as a float (20200106.0) parses."""
    path = tmp_path / "600519.SH.csv"
    path.write_text("date,close\n2020-01-02,1\n02/01/2020,2\n20200106.0,3\n", encoding="utf-8")
    bars = FileSource(path).fetch_bars("600519.SH", *EVERYTHING)
    assert bars["trade_date"].tolist() == [dt.date(2020, 1, 2), dt.date(2020, 1, 6), None]
    assert bars["problem"].iloc[:2].isna().all()
    assert bars["problem"].iloc[2] == "date '02/01/2020' is neither YYYYMMDD nor YYYY-MM-DD"
    assert bars["raw_text"].iloc[2] == "02/01/2020,2"


def test_bad_numbers_pass_on_as_nan_for_the_ingest_to_reject(tmp_path: Path) -> None:
    """A garbled close is passed on as NaN with "not a number" and its raw text, not dropped:
    the ingest records what it rejects."""
    path = tmp_path / "600519.SH.csv"
    path.write_text("date,close\n2020-01-02,1\n2020-01-03,abc\n", encoding="utf-8")
    bars = FileSource(path).fetch_bars("600519.SH", *EVERYTHING)
    assert len(bars) == 2 and pd.isna(bars["close"].iloc[1])
    assert bars["problem"].iloc[1] == "close 'abc' is not a number"
    assert bars["raw_text"].iloc[1] == "2020-01-03,abc"


def test_gbk_file_with_chinese_headers(tmp_path: Path) -> None:
    """A GBK-encoded export with 日期, 开盘, 最高, 最低, 收盘, 成交量 is detected and read; a
    wrong --encoding fails naming the byte and the option."""
    path = tmp_path / "600519.SH.csv"
    text = "日期,开盘,最高,最低,收盘,成交量,名称\n2020-01-02,10,11,9.5,10.5,1000,贵州茅台\n"
    path.write_bytes(text.encode("gbk"))
    bars = FileSource(path).fetch_bars("600519.SH", *EVERYTHING)
    row = bars.iloc[0]
    assert (row["open"], row["high"], row["low"], row["close"], row["volume"]) == (
        10.0,
        11.0,
        9.5,
        10.5,
        1000.0,
    )
    assert len(FileSource(path, encoding="gbk").fetch_bars("600519.SH", *EVERYTHING)) == 1
    with pytest.raises(SourceError, match=r"not readable as utf-8.*--encoding"):
        FileSource(path, encoding="utf-8").fetch_bars("600519.SH", *EVERYTHING)
    with pytest.raises(SourceError, match="unknown encoding 'klingon'"):
        FileSource(path, encoding="klingon")


def test_a_blank_ts_code_is_one_bad_row(tmp_path: Path) -> None:
    """A row with an empty ts_code is filed under the file's ticker with a problem, not fatal."""
    path = tmp_path / "x.csv"
    path.write_text(
        "ts_code,trade_date,close\n600000.SH,20200102,10\n,20200103,11\n", encoding="utf-8"
    )
    bars = FileSource(path).fetch_bars("600000.SH", *EVERYTHING)
    assert pd.isna(bars["problem"].iloc[0])
    assert bars["problem"].iloc[1] == "the row's ts_code is empty"


def test_a_big_file_is_read_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunked reading gives the same bars as one read (here 3-row chunks over 7 rows)."""
    import forecasting.data.sources.files as files

    path = tmp_path / "600519.SH.csv"
    days = pd.bdate_range("2020-01-01", periods=7)
    path.write_text(
        "date,close\n" + "".join(f"{d:%Y%m%d},{i + 1}\n" for i, d in enumerate(days)),
        encoding="utf-8",
    )
    whole = FileSource(path).fetch_bars("600519.SH", *EVERYTHING)
    monkeypatch.setattr(files, "CHUNK_ROWS", 3)
    pd.testing.assert_frame_equal(FileSource(path).fetch_bars("600519.SH", *EVERYTHING), whole)


def test_unknown_ticker_and_missing_path(tmp_path: Path) -> None:
    """Errors name the ticker and dates, or the path that does not exist."""
    (tmp_path / "600519.SH.csv").write_text("date,close\n2020-01-02,1\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"no bars for 000001\.SZ.*2020-01-01.*600519\.SH"):
        FileSource(tmp_path).fetch_bars("000001.SZ", dt.date(2020, 1, 1), dt.date(2020, 2, 1))
    with pytest.raises(SourceError, match="does not exist"):
        FileSource(tmp_path / "nope").tickers()
    assert FileSource(tmp_path).trading_calendar(dt.date(2020, 1, 1), dt.date(2020, 2, 1)) is None


@pytest.mark.parametrize(
    ("name", "ticker"),
    [
        ("000063.sz.daily.csv", "000063.SZ"),
        ("600519.SH.csv", "600519.SH"),
        ("430047.bj.parquet", "430047.BJ"),
        ("prices.csv", None),
        ("600519.csv", None),
    ],
)
def test_ticker_from_filename(name: str, ticker: str | None) -> None:
    """The file name gives the ticker when it starts with a six-digit code and an exchange."""
    assert ticker_from_filename(Path(name)) == ticker
