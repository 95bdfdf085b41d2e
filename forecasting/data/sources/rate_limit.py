"""A token bucket: at most the configured calls per minute to a rate-limited API.

tushare counts calls per minute per interface (500 a minute on a common account); a whole-market
backfill by ``ts_code`` makes thousands of calls, so the client waits for a token before each
request instead of running into the limit and backing off after the fact.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """``per_minute`` calls a minute on average, bursts of at most ``burst`` calls.

    ``burst`` defaults to ten seconds' worth (at least one), so a fresh process cannot spend a
    whole minute's allowance at once on top of what an earlier process used in that minute.
    ``clock`` and ``sleep`` are the monotonic clock and the wait (tests pass a fake pair).
    """

    def __init__(
        self,
        per_minute: float,
        *,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if per_minute <= 0:
            raise ValueError(f"calls per minute must be > 0, got {per_minute}")
        self.rate = per_minute / 60.0  # tokens per second
        self.capacity = float(burst if burst is not None else max(1, int(per_minute / 6)))
        if self.capacity < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._stamp = clock()
        self._lock = threading.Lock()
        self.waited = 0.0  # seconds spent waiting, in all

    def __call__(self) -> float:
        """Take one token, waiting until there is one; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= 1.0
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
            if wait > 0:
                # The token is spoken for: the next caller queues behind this one.
                self._sleep(wait)
                self._stamp = self._clock()
                self._tokens = min(0.0, self._tokens + wait * self.rate)
            self.waited += wait
            return wait
