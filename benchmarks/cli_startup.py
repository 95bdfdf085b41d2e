"""How long `forecasting --help` and `forecasting prices` take to answer, before and after.

Each command runs ``--runs`` times in a fresh process; the table shows the median wall time and
the median CPU time of the process (user + system: less sensitive than wall time to other
work on a shared machine), beside three references in the same run: a bare ``python -c pass``
(the floor no command can beat), an import of the libraries ``prices`` cannot do without (Typer and
pydantic-settings; and with SQLAlchemy, which it no longer imports on SQLite), and the same command at an earlier commit (``--before``,
extracted with ``git archive`` into a temporary folder), with the ratio of each figure to that
earlier one. The target is 0.5 s of wall time for both commands.

    python benchmarks/cli_startup.py [--runs 9] [--before 543883e]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, where a module named like a standard
# one (there was a benchmarks/signal.py) would stand in for the one subprocess imports.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: The last commit with the hand-written argparse command line.
BEFORE = "543883e"
TARGET_S = 0.5
STACK = "import typer, typer._adapters, pydantic_settings, sqlite3"
STACK_SA = STACK + ", sqlalchemy, sqlalchemy.dialects.sqlite"


def _time(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``argv`` in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _median(argv: list[str], env: dict[str, str], cwd: Path, runs: int) -> tuple[float, float]:
    times = [_time(argv, env, cwd) for _ in range(runs)]
    return statistics.median(w for w, _ in times), statistics.median(c for _, c in times)


def _checkout(rev: str, into: Path) -> Path:
    """The package at ``rev``, unpacked under ``into`` (for ``PYTHONPATH``)."""
    archive = into / "before.tar"
    with archive.open("wb") as out:
        subprocess.run(
            ["git", "archive", rev, "forecasting", "forecasting_flows"],
            cwd=ROOT,
            stdout=out,
            check=True,
        )
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=9, help="runs per command (default 9)")
    p.add_argument("--before", default=BEFORE, help=f"the earlier commit (default {BEFORE})")
    args = p.parse_args(argv)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FORECASTING_", "TUSHARE"))}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        db = f"sqlite:///{work / 'bench.db'}"
        trees = {"now": ROOT, f"at {args.before}": _checkout(args.before, work)}
        env = {name: {**base, "PYTHONPATH": str(tree)} for name, tree in trees.items()}
        cli = [sys.executable, "-m", "forecasting_flows.cli"]
        # One small database that both versions read: the schema and 64 rows of one ticker.
        csv = ROOT.parent / "shared" / "data" / "tushare_raw"
        setup = {**env["now"], "FORECASTING_DATABASE_URL": db}
        subprocess.run([*cli, "init-db"], env=setup, cwd=work, check=True, capture_output=True)
        if csv.is_dir():
            subprocess.run(
                [*cli, "ingest", "--source", "csv", "--path", str(csv), "--tickers", "600519.SH"],
                env=setup,
                cwd=work,
                check=True,
                capture_output=True,
            )
        floor = _median([sys.executable, "-c", "pass"], base, work, args.runs)
        print(f"python -c pass: {floor[0]:.3f} s wall, {floor[1]:.3f} s CPU (the floor)")
        # What `prices` cannot do without: the libraries of the CLI and the settings (issue 15
        # asks for Typer and pydantic-settings), imported and nothing else; and the same with
        # SQLAlchemy, the floor of `prices` if it read a SQLite file through it.
        for label, code in (
            ("typer, pydantic-settings", STACK),
            ("typer, pydantic-settings, SQLAlchemy", STACK_SA),
        ):
            wall, cpu = _median([sys.executable, "-c", code], base, work, args.runs)
            print(f"importing {label}: {wall:.3f} s wall, {cpu:.3f} s CPU")
        print(f"{'command':<20} {'version':<16} {'wall s':>7} {'CPU s':>7} {'wall/before':>12}")
        for command in (["--help"], ["prices"]):
            figures = {
                name: _median(
                    [*cli, *command], {**e, "FORECASTING_DATABASE_URL": db}, work, args.runs
                )
                for name, e in env.items()
            }
            ref = figures[f"at {args.before}"][0]
            for name, (wall, cpu) in figures.items():
                print(
                    f"forecasting {' '.join(command):<8} {name:<16} {wall:7.3f} {cpu:7.3f} "
                    f"{wall / ref:11.2f}x" + ("  (over the 0.5 s target)" * (wall > TARGET_S))
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
