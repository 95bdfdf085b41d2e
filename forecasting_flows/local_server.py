"""A temporary Prefect API server that cannot outlive the command that started it.

Why this exists: with no ``PREFECT_API_URL``, Prefect 3.8 starts a temporary server of its own
(``SubprocessASGIServer``: uvicorn on ``prefect.server.api.server:create_app``) as a plain
subprocess and stops it from an ``atexit`` hook. A CLI that is SIGKILLed, or dies of SIGTERM
(which skips ``atexit``), leaves that server running: measured, 18 of 20 SIGKILLs left one
behind, holding a port, the Prefect database and ~200 MB.

:func:`local_prefect_server` starts the same server itself, with two differences:

* the server process asks the kernel to SIGKILL it as soon as its parent dies
  (``prctl(PR_SET_PDEATHSIG)``, Linux), so no exit of the CLI, however abrupt, leaves it
  behind. It makes that call itself, first thing, and then checks that its parent is still the
  process that started it, which closes the gap between fork and ``prctl``;
* the CLI binds the listening socket (a free port on 127.0.0.1) and hands it to the server. A
  request made before the server is ready waits in the kernel's accept queue instead of being
  refused, so the CLI need not wait for the server: its startup (~10 s) overlaps the CLI's own
  imports and work instead of adding to them. A watcher thread reports on stderr if the server
  dies or hangs while starting.

Then ``PREFECT_API_URL`` points this process (and its subprocesses) at the server, so Prefect's
client never starts its own; on the way out the context drains Prefect's log and event workers
and stops the server. Where a Prefect server is configured, or ephemeral mode is off, or the
platform is not Linux, it does nothing and Prefect behaves as it always does.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

from forecasting.errors import ForecastingError

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# A fresh Prefect database runs every migration before the server answers: 32 s measured on a
# busy 2-core machine, 75 s on one with a load of 11, more than the setting's default of 20 s.
# The CLI does not wait for the server (its requests queue), so a long limit costs nothing
# until the server truly hangs.
_MIN_STARTUP_TIMEOUT_S = 180.0
_STOP_TIMEOUT_S = 5.0
_DRAIN_TIMEOUT_S = 10.0


class LocalServerError(ForecastingError):
    """The temporary Prefect server died or hung while starting, so the flow could not run."""


@contextlib.contextmanager
def local_prefect_server() -> Iterator[str | None]:
    """Run the block against a temporary Prefect server that dies with this process.

    Yields the API URL flows will use: the temporary server's, or the configured one; ``None``
    where this does nothing and none is configured (ephemeral mode off, or not Linux).
    """
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled or sys.platform != "linux":
        yield settings.api.url
        return

    server_env = {
        **os.environ,
        # What SubprocessASGIServer sets: no UI, ephemeral (services off), one app per process.
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **settings.to_environment_variables(exclude_unset=True),
    }
    timeout = max(float(settings.server.ephemeral.startup_timeout_seconds), _MIN_STARTUP_TIMEOUT_S)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        port = sock.getsockname()[1]
        process = subprocess.Popen(
            # -P: a ``flows`` folder in the working directory must not shadow this package.
            [sys.executable, "-P", "-m", __name__, str(sock.fileno()), str(os.getpid())],
            env=server_env,
            pass_fds=(sock.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=_stderr_fd(),  # nothing of the server's on the CLI's stdout
            # Out of the terminal's process group: Ctrl-C interrupts the CLI only, which can
            # still report its flow run to the server before it stops it.
            start_new_session=True,
        )
    finally:
        # The server holds the only copy now: if it dies, queued requests fail at once.
        sock.close()

    api_url = f"http://127.0.0.1:{port}/api"
    logger.debug("temporary Prefect server pid %d on %s", process.pid, api_url)
    stopping = threading.Event()
    failure: list[str] = []  # what went wrong while it started, set by the watcher
    watcher = threading.Thread(
        target=_watch_startup,
        args=(process, api_url, timeout, stopping, failure),
        name="prefect-server-startup",
        daemon=True,
    )
    previous_url = os.environ.get("PREFECT_API_URL")
    try:
        watcher.start()
        _point_prefect_at(api_url)
        try:
            yield api_url
        except Exception as exc:
            # The flow failed because the server never came up: say that, in one line, rather
            # than the client's "Failed to reach API" traceback.
            # A watcher still running means the server never answered: give it a moment to see
            # the server's exit (a server that failed closes its socket before it exits).
            watcher.join(timeout=_STOP_TIMEOUT_S)
            if failure:
                raise LocalServerError(failure[0]) from exc
            raise
    finally:
        try:
            _drain_prefect_workers()
        finally:
            stopping.set()
            _stop(process)
            _point_prefect_at(previous_url)


def _stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a replaced stderr: inherit the real one
        return None


def _point_prefect_at(api_url: str | None) -> None:
    """Set ``PREFECT_API_URL`` for this process, its threads and its subprocesses."""
    from prefect.context import refresh_global_settings_context

    if api_url is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = api_url
    refresh_global_settings_context()


def _watch_startup(
    process: subprocess.Popen[bytes],
    api_url: str,
    timeout: float,
    stopping: threading.Event,
    failure: list[str],
) -> None:
    """Wait for the server's health check; if it dies or hangs first, stop it and put the
    reason in ``failure`` (the flow that needed it then fails with that reason)."""
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client() as client:
        while not stopping.is_set():
            if process.poll() is not None:
                if not stopping.is_set():
                    failure.append(
                        f"the temporary Prefect server exited with code {process.returncode} "
                        "while starting (its output is above); set PREFECT_API_URL to use a "
                        "running server"
                    )
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                failure.append(
                    f"the temporary Prefect server did not start within {timeout:.0f} s; raise "
                    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or set PREFECT_API_URL to "
                    "use a running server"
                )
                process.kill()
                return
            try:
                # Answered as soon as the server serves: the request waits in the accept queue.
                if client.get(f"{api_url}/health", timeout=min(2.0, remaining)).is_success:
                    return
            except httpx.TimeoutException:
                continue
            except httpx.HTTPError:
                pass  # refused or reset: it is dying, or about to be polled again
            stopping.wait(0.1)


def _drain_prefect_workers() -> None:
    """Send the logs and events Prefect still holds while the server is there to take them.

    Otherwise they would go at interpreter exit, to a server already stopped."""
    for module, worker in (
        ("prefect.logging.handlers", "APILogWorker"),
        ("prefect.events.worker", "EventsWorker"),
    ):
        if module in sys.modules:  # never started if never imported
            getattr(sys.modules[module], worker).drain_all(timeout=_DRAIN_TIMEOUT_S)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ------------------------------------------------------------------------------------------
# The server process: ``python -m forecasting_flows.local_server FD PARENT_PID``


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies; exit if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    # SIGKILL rather than SIGTERM: with the CLI gone nobody is left to wait for a graceful
    # shutdown, and the SQLite database survives a kill like any crash.
    if os.getppid() != parent_pid:  # the parent died before prctl: no signal will come
        os._exit(1)


def _serve(fd: int, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    import uvicorn

    config = uvicorn.Config(
        "prefect.server.api.server:create_app",
        factory=True,
        log_level="error",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    server.run(sockets=[socket.socket(fileno=fd)])
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
