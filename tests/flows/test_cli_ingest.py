"""`forecasting ingest` as a user runs it, in its own process: exit codes that tell the truth,
and a run row that is closed however the process is stopped."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from tushare_stub import TushareStub

from forecasting.data.db import make_engine
from forecasting.data.schema import ingest_runs, prices

FORECASTING = str(Path(sys.executable).with_name("forecasting"))
TICKERS = [f"6000{i:02d}.SH" for i in range(10)]


def env_for(db_url: str, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FORECASTING_", "TUSHARE"))}
    return {**clean, "FORECASTING_DATABASE_URL": db_url, "TQDM_DISABLE": "1", **extra}


def csv(path: Path, base: float) -> None:
    days = [dt.date(2024, 1, 2) + dt.timedelta(days=i) for i in range(14)]
    rows = [
        f"{d:%Y%m%d},{base:.2f},{base + 0.2:.2f},{base - 0.2:.2f},{base:.2f},100"
        for d in days
        if d.weekday() < 5
    ]
    path.write_text(
        "trade_date,open,high,low,close,vol\n" + "\n".join(rows) + "\n", encoding="utf-8"
    )


@pytest.mark.slow
def test_exit_status_and_last_line_say_partial(db_url: str, tmp_path: Path) -> None:
    """A folder with one broken file: the others land, the process exits 1 and its last line
    says partial; once the file is fixed, a rerun exits 0 with 'ingest success'."""
    folder = tmp_path / "prices"
    folder.mkdir()
    csv(folder / "600519.SH.csv", 20.0)
    (folder / "600036.SH.csv").write_text("date,price\n2024-01-02,1\n", encoding="utf-8")
    run = [FORECASTING, "ingest", "--source", "csv", "--path", str(folder), "--end", "2024-01-15"]
    out = subprocess.run(
        run, capture_output=True, text=True, env=env_for(db_url), cwd=tmp_path, timeout=120
    )
    assert out.returncode == 1, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("ingest partial: 1 of 2 failed (600036.SH)"), out.stdout
    csv(folder / "600036.SH.csv", 30.0)
    again = subprocess.run(
        run, capture_output=True, text=True, env=env_for(db_url), cwd=tmp_path, timeout=120
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.strip().splitlines()[-1] == "ingest success"
    engine = make_engine(db_url)
    with engine.connect() as conn:
        statuses = list(
            conn.execute(select(ingest_runs.c.status).order_by(ingest_runs.c.started_at)).scalars()
        )
    engine.dispose()
    assert statuses == ["partial", "success"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_ingest_is_recorded_as_aborted(
    db_url: str, tmp_path: Path, signum: signal.Signals
) -> None:
    """SIGTERM (kill, systemd, docker) or SIGINT in the middle of a tushare ingest: the process
    exits 128 + signal, its run row says aborted with exactly the rows committed so far, and
    a rerun completes the rest."""
    with TushareStub(row_limit=1000, first=dt.date(2019, 1, 1), last=dt.date(2019, 3, 29)) as stub:
        stub.delay_next(10_000, 0.15)  # every reply held back: the ingest takes a while
        env = env_for(
            db_url,
            TUSHARE_TOKEN=stub.token,
            FORECASTING_INGEST_TUSHARE_URL=stub.url,
            FORECASTING_HISTORY_START="2019-01-01",
        )
        run = [
            FORECASTING,
            "ingest",
            "--source",
            "tushare",
            "--tickers",
            ",".join(TICKERS),
            "--end",
            "2019-03-29",
        ]
        proc = subprocess.Popen(
            run, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
        )
        engine = make_engine(db_url)
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:  # wait for two tickers to have committed
                time.sleep(0.2)
                try:
                    with engine.connect() as conn:
                        n = conn.execute(select(func.count()).select_from(prices)).scalar_one()
                except Exception:  # the schema is not there yet
                    continue
                if n >= 2 * 50:
                    break
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 128 + signum, err
        assert "interrupted" in err and "Traceback" not in err
        with engine.connect() as conn:
            row = conn.execute(select(ingest_runs)).one()
            stored = conn.execute(select(func.count()).select_from(prices)).scalar_one()
        assert row.status == "aborted", row
        assert row.rows_inserted == stored and 0 < stored < 50 * len(TICKERS)
        assert signal.Signals(signum).name in row.error and row.finished_at is not None
        stub.clear_delays()
        done = subprocess.run(
            run, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        with engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(prices)).scalar_one()
        engine.dispose()
        assert total == sum(len(stub.bars(t)) for t in TICKERS)
