"""The HTML report: it renders from a populated database, every plot exists and is linked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from test_evaluation import D0, D2, populate

from forecasting.evaluation.report import latest_report, rolling_ratio, write_report
from forecasting.settings import PolicySettings, Settings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUMMARY_PLOTS = (
    "accuracy_over_time.png",
    "decisions.png",
    "coverage.png",
    "error_by_horizon.png",
    "training_loss.png",
)


def _referenced(index: Path) -> set[str]:
    return set(re.findall(r'<img src="([^"]+)"', index.read_text(encoding="utf-8")))


def test_report_renders_every_plot_and_links_it(engine: Engine, tmp_path: Path) -> None:
    """index.html plus one PNG per chosen ticker, error by horizon, rolling ratio and training
    loss; every PNG is a real image and every one is referenced by the page."""
    populate(engine)
    out = tmp_path / "report"
    s = Settings(policy=PolicySettings(check_window=2, rel_threshold=1.05))
    index = write_report(engine, out, settings=s)
    assert index == out / "index.html"
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == {"forecast_AAA_SH.png", "forecast_BBB_SZ.png", *SUMMARY_PLOTS}
    for name in pngs:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert _referenced(index) == pngs
    page = index.read_text(encoding="utf-8")
    assert "By horizon" in page and "AAA.SH" in page
    assert "3 retrains, 1 fine-tunes" in page  # D_BEFORE counts: no range
    assert latest_report(out) == index


def test_report_for_chosen_tickers_and_range(engine: Engine, tmp_path: Path) -> None:
    """Explicit tickers are the only ticker plots; a range bounds the tables."""
    populate(engine)
    index = write_report(engine, tmp_path, tickers=["bbb.sz"], start=D0, end=D2, lineage="live")
    assert {n for n in _referenced(index) if n.startswith("forecast_")} == {"forecast_BBB_SZ.png"}
    assert "1 retrains, 1 fine-tunes" in index.read_text(encoding="utf-8")


def test_empty_database_still_renders(sqlite_engine: Engine, tmp_path: Path) -> None:
    """With nothing stored yet the report says so instead of failing, and no link is offered
    before a report exists."""
    assert latest_report(tmp_path) is None
    index = write_report(sqlite_engine, tmp_path)
    assert _referenced(index) == set(SUMMARY_PLOTS)
    page = index.read_text(encoding="utf-8")
    assert "no forecast has reached its target day yet" in page
    assert "NaN" not in page and "nan" not in page


def test_rolling_ratio_pools_the_window() -> None:
    """The rolling ratio is sqrt(sum err^2) / sqrt(sum naive^2) over the last `window` days."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            "as_of_date": [D0, D0, D2],
            "error": [1.0, 1.0, 2.0],
            "naive_error": [2.0, 0.0, 1.0],
        }
    )
    r = rolling_ratio(frame, 2)
    assert r.loc[D0] == pytest.approx((2**0.5) / 2)
    assert r.loc[D2] == pytest.approx((6**0.5) / (5**0.5))


def _browser() -> str | None:
    import shutil

    return next(
        (p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))),
        None,
    )


@pytest.mark.slow
def test_the_page_renders_in_a_browser_with_its_plots_on_the_first_screen(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    """A headless browser's first 1366x900 screen of the report shows plots (their blue lines
    and bands, not alt text), the lineage is named, and no cell says NaN."""
    import subprocess

    import numpy as np
    from matplotlib.image import imread

    browser = _browser()
    if browser is None:
        pytest.skip("no headless browser (apt-get install chromium) to render the report")
    populate(sqlite_engine)
    index = write_report(sqlite_engine, tmp_path / "report", lineage="live")
    page = index.read_text(encoding="utf-8")
    assert "NaN" not in page and ">nan<" not in page
    assert 'Lineage: <b class="lineage">live' in page
    assert all((index.parent / name).is_file() for name in _referenced(index))
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        + ["--window-size=1366,900", f"--screenshot={shot}", index.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = imread(shot)[:, :, :3]  # [900, 1366, 3] in 0..1
    assert pixels.shape[:2] == (900, 1366)
    # Below the title, the top half is plots: axes, lines, bands and labels ink about a tenth
    # of it; broken images would leave their alt text, under 1%.
    ink = (pixels[100:450].min(axis=2) < 0.9).mean()
    assert ink > 0.04, f"only {ink:.1%} of the first screen's top half is drawn"
    blue = np.abs(pixels - np.array([31, 119, 180]) / 255).max(axis=2) < 0.08  # [900, 1366]
    assert blue[:450].sum() > 50, "no forecast line or band (tab:blue) in the top half"
