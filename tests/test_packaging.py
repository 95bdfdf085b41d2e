"""What an installed package carries: every package folder, and the SQL queries users run."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed() -> None:
    """pyproject.toml lists its packages by name (forecasting.queries is a mapped folder, which
    a search would not find), so a new package folder must be added there: this says which."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("forecasting", "forecasting_flows")
        for p in (ROOT / top).rglob("__init__.py")
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert listed - found == {"forecasting.queries"}


@pytest.mark.slow
def test_the_queries_are_in_the_wheel_and_the_cli_reads_them_there(tmp_path: Path) -> None:
    """A built wheel carries sql/queries/*.sql as forecasting/queries/; unpacked where there
    is no sql/ folder, `forecasting sql show` prints them from there."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path / "dist"), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = sorted(n for n in z.namelist() if n.startswith("forecasting/queries/"))
        z.extractall(tmp_path / "site")
    expected = sorted(
        f"forecasting/queries/{p.name}" for p in (ROOT / "sql" / "queries").glob("*.sql")
    )
    assert shipped == expected and expected
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    done = subprocess.run(
        [sys.executable, "-m", "forecasting_flows.cli", "sql", "show", "retrain_history"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == (ROOT / "sql" / "queries" / "retrain_history.sql").read_text()
    listing = subprocess.run(
        [sys.executable, "-c", "from forecasting_flows import queries; print(queries.folder())"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert str(tmp_path / "site") in listing.stdout
