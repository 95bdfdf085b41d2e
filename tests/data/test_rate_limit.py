"""The token bucket that keeps requests under the account's calls per minute."""

from __future__ import annotations

import pytest

from forecasting.data.sources.rate_limit import TokenBucket


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_burst_passes_then_calls_are_spaced_at_the_rate() -> None:
    """60 a minute with a burst of 2: two calls at once, then one a second."""
    t = FakeTime()
    bucket = TokenBucket(60, burst=2, clock=t.clock, sleep=t.sleep)
    waits = [bucket() for _ in range(5)]
    assert waits[:2] == [0.0, 0.0]
    assert waits[2:] == pytest.approx([1.0, 1.0, 1.0])
    assert t.now == pytest.approx(3.0)


def test_idle_time_refills_up_to_the_burst_only() -> None:
    """A long pause refills the burst, never more."""
    t = FakeTime()
    bucket = TokenBucket(600, burst=3, clock=t.clock, sleep=t.sleep)
    for _ in range(3):
        bucket()
    t.now += 3600
    assert [bucket() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket() == pytest.approx(0.1)


def test_500_a_minute_never_exceeds_500_in_any_minute() -> None:
    """Over 1,500 calls, no sliding minute holds more than the limit (plus the first burst)."""
    t = FakeTime()
    bucket = TokenBucket(500, clock=t.clock, sleep=t.sleep)
    stamps = []
    for _ in range(1500):
        bucket()
        stamps.append(t.now)
    later = [s for s in stamps if s >= 60]
    for i, s in enumerate(later):
        in_minute = sum(1 for x in later[i:] if x < s + 60)
        assert in_minute <= 500 + 1


def test_a_nonsense_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="calls per minute"):
        TokenBucket(0)


def test_the_tushare_client_takes_a_token_before_every_request() -> None:
    """Every request the server receives was preceded by a token: the limiter is in the path."""
    from market_fixtures import market_source, market_stub

    taken: list[int] = []
    with market_stub() as stub:
        source = market_source(stub)
        source.client._limiter = lambda: taken.append(1)  # the slot TokenBucket fills
        source.listings()
        source.fetch_bars("600000.SH", stub.first, stub.last)
        assert len(taken) == len(stub.requests) > 3


def test_calls_per_minute_sets_the_bucket() -> None:
    """The source's calls_per_minute becomes the client's token bucket."""
    from market_fixtures import market_source, market_stub

    with market_stub() as stub:
        bucket = market_source(stub, calls_per_minute=500).client._limiter
    assert isinstance(bucket, TokenBucket) and bucket.rate == pytest.approx(500 / 60)
