"""The temporary Prefect server a command starts dies with the command, however it ends.

Real processes: the CLI runs as a subprocess with no PREFECT_API_URL, as a user runs it, so the
server it starts is whatever the CLI starts; the tests only look at the CLI's descendants.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

pytestmark = pytest.mark.prefect

STARTUP_TIMEOUT_S = 200.0  # a fresh Prefect database migrates first: 30-75 s on a busy machine
GONE_TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Prefect home for the module, so only the first server start runs the migrations."""
    return tmp_path_factory.mktemp("prefect-home")


@pytest.fixture()
def cli_env(prefect_home: Path, tmp_path: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "FORECASTING_CONFIG")
    }
    env.update(
        PREFECT_HOME=str(prefect_home),
        FORECASTING_DATABASE_URL=f"sqlite:///{tmp_path / 'forecasting.db'}",
        FORECASTING_MODEL_DEVICE="cpu",
    )
    return env


@pytest.fixture()
def spawned(prefect_home: Path) -> Iterator[list[psutil.Process]]:
    """Processes a test started; whatever of them, or of their descendants, or of anything
    else on our Prefect home, is still alive at the end is killed."""
    procs: list[psutil.Process] = []
    yield procs
    for p in procs + _on_home(prefect_home):
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """The real console command; its output goes to files in ``cwd``, never to a pipe that a
    chatty run could fill."""
    with (cwd / "stdout.txt").open("wb") as out, (cwd / "stderr.txt").open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "forecasting_flows.cli", *args],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=err,
        )


def _init_db(env: dict[str, str], cwd: Path) -> None:
    """An empty forecasting database (no prices), made the way a user makes one."""
    subprocess.run(
        [sys.executable, "-m", "forecasting_flows.cli", "init-db"],
        env=env,
        cwd=cwd,
        check=True,
        capture_output=True,
        timeout=120,
    )


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _on_home(home: Path) -> list[psutil.Process]:
    """Every live process whose PREFECT_HOME is ``home``: the CLI and any server it started."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("PREFECT_HOME") == str(home) and _alive(p):
                found.append(p)
        except psutil.Error:
            continue
    return found


def _wait_for_server(cli: subprocess.Popen[bytes]) -> psutil.Process:
    """The CLI's child that serves the Prefect API, once /api/health answers."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        assert cli.poll() is None, f"the CLI exited ({cli.returncode}) before its server was up"
        for child in psutil.Process(cli.pid).children(recursive=True):
            try:
                ports = [c.laddr.port for c in child.net_connections("tcp") if c.status == "LISTEN"]
            except psutil.NoSuchProcess:
                continue
            for port in ports:
                try:
                    url = f"http://127.0.0.1:{port}/api/health"
                    if httpx.get(url, timeout=deadline - time.monotonic()).is_success:
                        return child
                except httpx.HTTPError:
                    pass
        time.sleep(0.1)
    raise AssertionError(f"no Prefect server answered within {STARTUP_TIMEOUT_S:.0f} s")


def test_a_cli_that_exits_stops_its_server(
    cli_env: dict[str, str], prefect_home: Path, tmp_path: Path, spawned: list[psutil.Process]
) -> None:
    """`forecasting run` on a database without prices runs its flow, reports that there is nothing to
    forecast and exits; the server it started is stopped by then, and said nothing on stdout."""
    # An explicit as-of day: with none, on a weekend `run` has nothing to do and starts no flow.
    _init_db(cli_env, tmp_path)
    cli = _cli("run", "--no-ingest", "--as-of", "2019-01-04", env=cli_env, cwd=tmp_path)
    spawned.append(psutil.Process(cli.pid))
    servers = {_wait_for_server(cli)}
    spawned.extend(servers)
    while cli.poll() is None:
        try:
            servers.update(psutil.Process(cli.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    cli.wait(timeout=GONE_TIMEOUT_S)

    assert cli.returncode == 1, (tmp_path / "stderr.txt").read_text()
    out = (tmp_path / "stdout.txt").read_text()
    assert "no prices in the database; run `forecasting ingest` first" in out
    assert "127.0.0.1" not in out and "server" not in out.lower()
    assert [p.pid for p in servers if _alive(p)] == []
    assert _on_home(prefect_home) == []


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_cli_takes_its_server_with_it(
    sig: signal.Signals,
    cli_env: dict[str, str],
    prefect_home: Path,
    tmp_path: Path,
    spawned: list[psutil.Process],
) -> None:
    """A `forecasting demo` killed while its flow runs (neither signal runs any cleanup in
    the CLI) leaves no Prefect server behind: it is gone within seconds."""
    cli = _cli("demo", env=cli_env, cwd=tmp_path)
    spawned.append(psutil.Process(cli.pid))
    server = _wait_for_server(cli)
    spawned.append(server)
    assert cli.poll() is None, "the demo finished before it could be killed"

    cli.send_signal(sig)
    cli.wait(timeout=GONE_TIMEOUT_S)
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while _alive(server) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(server), f"server {server.pid} outlived the CLI by {GONE_TIMEOUT_S} s"
    assert _on_home(prefect_home) == []


@pytest.mark.skipif(
    "faketime" in os.environ.get("LD_PRELOAD", ""),
    reason="under libfaketime the CLI waits on after its failed server is gone (not understood)",
)
def test_a_server_that_cannot_start_is_one_line_and_exit_1(
    cli_env: dict[str, str], tmp_path: Path, spawned: list[psutil.Process]
) -> None:
    """When the temporary server dies while starting (here its database folder does not
    exist), the command says so in one line, with the fix, and exits 1: no client traceback."""
    missing = tmp_path / "no-such-folder" / "prefect.db"
    env = {**cli_env, "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{missing}"}
    _init_db(cli_env, tmp_path)
    cli = _cli("run", "--no-ingest", "--as-of", "2019-01-04", env=env, cwd=tmp_path)
    spawned.append(psutil.Process(cli.pid))
    cli.wait(timeout=STARTUP_TIMEOUT_S)

    err = (tmp_path / "stderr.txt").read_text()
    assert cli.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: the temporary Prefect server exited with code"), err
    assert "set PREFECT_API_URL to use a running server" in last
    assert "Traceback" not in err.split("error: the temporary")[-1]
