"""Where the command line's log lines go: the terminal (or CI's log), a file, as text or JSON.

The library logs its milestones at INFO under ``forecasting`` (an ingest's per-ticker counts,
training start and epochs, a decision and its reason, a backfill's days); everything else
(Prefect, httpx) is shown from WARNING, or from DEBUG with ``-v``. On a terminal the lines go
through tqdm's writer while a progress bar is drawn, so a line never breaks a bar; in a pipe or
in CI there is no bar and each milestone is a plain line with its time. ``--log-json`` writes one
JSON object per line (``time``, ``level``, ``logger``, ``message``) for a log collector;
``--log-file PATH`` appends the same lines to a file as well.

A command that prints its result on stdout (an ingest's summary) calls :func:`already_shown`
first: when stdout and stderr are one terminal and the same line has just been logged there,
printing it again would only say it twice.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Messages the terminal's handler has shown lately (for :func:`already_shown`).
_SHOWN: deque[str] = deque(maxlen=64)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (ISO 8601, UTC offset), level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _Remember(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        _SHOWN.append(record.getMessage())
        return True


def configure(*, verbose: bool = False, log_file: str | None = None, as_json: bool = False) -> None:
    """Set up the root logger for one command (replacing what an earlier call set up)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_forecasting", False):
            root.removeHandler(handler)
            handler.close()
    formatter: logging.Formatter = JsonFormatter() if as_json else logging.Formatter(TEXT_FORMAT)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(formatter)
    console.addFilter(_Remember())
    handlers: list[logging.Handler] = [console]
    if log_file:
        file = logging.FileHandler(log_file, encoding="utf-8")
        file.setFormatter(formatter)
        handlers.append(file)
    for handler in handlers:
        handler._forecasting = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    # Our own progress at INFO; third-party chatter (httpx, the Prefect server) stays quiet.
    logging.getLogger("forecasting").setLevel(logging.DEBUG if verbose else logging.INFO)


@contextmanager
def around_bars() -> Iterator[None]:
    """While a command runs on a terminal, log lines are written above tqdm's bars."""
    if not sys.stderr.isatty():
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    handlers = [h for h in logging.getLogger().handlers if getattr(h, "_forecasting", False)]
    console = next((h for h in handlers if isinstance(h, logging.StreamHandler)), None)
    with logging_redirect_tqdm():
        # tqdm's handler replaces the console handler; it keeps the formatter, not the filter.
        for handler in logging.getLogger().handlers:
            if console is not None and handler not in handlers:
                handler.addFilter(_Remember())
        yield


def already_shown(text: str) -> bool:
    """Whether ``text`` was just logged on the terminal that stdout also writes to."""
    return sys.stdout.isatty() and sys.stderr.isatty() and text in _SHOWN
