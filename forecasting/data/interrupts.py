"""SIGTERM and SIGINT as an exception raised where it is safe: never inside a database write.

``kill``, systemd and docker stop a process with SIGTERM, whose default action ends Python at
once, with no ``finally`` and no cleanup: a run row would stay ``running`` forever. SIGINT
(Ctrl-C) raises ``KeyboardInterrupt`` at any bytecode, also inside a driver call halfway through
a commit, which on SQLite can leave the file locked for the cleanup that follows.

:class:`Interrupts` turns both into :class:`Interrupted` (a ``KeyboardInterrupt``, so whatever
handles Ctrl-C handles it too), raised at once while the caller waits on the network, but held
back while it writes (``with interrupts.writing(): ...``) and raised when the write has
committed. Handlers can only be installed in the main thread; elsewhere (a worker thread of a
flow) it installs none and the process's own handling stands.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop by ``signum``; ``exit_code`` is the shell's 128 + signum."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class Interrupts:
    """Install with ``with Interrupts() as guard:``; write with ``with guard.writing():``."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self._writing = 0
        self._pending: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold signals back for the duration (a transaction); raise a held one afterwards."""
        self._writing += 1
        try:
            yield
        finally:
            self._writing -= 1
        if not self._writing and self._pending is not None:
            signum, self._pending = self._pending, None
            raise Interrupted(signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._writing:
            self._pending = signum
            return
        raise Interrupted(signum)
