import itertools

import pytest

from archiver.ratelimit import AsyncRateLimiter


class FakeTime:
    def __init__(self):
        self.now = 0.0
        self.slept = []

    def monotonic(self):
        return self.now

    async def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


async def test_burst_then_steady_rate():
    """After the burst, acquisitions are spaced 1/rate apart on the limiter's clock."""
    t = FakeTime()
    limiter = AsyncRateLimiter(4, burst=2, monotonic=t.monotonic, sleep=t.sleep)
    stamps = []
    for _ in range(10):
        await limiter.acquire()
        stamps.append(t.now)
    assert stamps[:2] == [0.0, 0.0]
    gaps = [b - a for a, b in itertools.pairwise(stamps[1:])]
    assert all(g == pytest.approx(0.25) for g in gaps)
    assert t.now == pytest.approx(2.0)


async def test_idle_time_refills_only_up_to_burst():
    """A long pause refills the bucket to the burst size, no more."""
    t = FakeTime()
    limiter = AsyncRateLimiter(2, burst=3, monotonic=t.monotonic, sleep=t.sleep)
    for _ in range(3):
        await limiter.acquire()
    t.now += 100
    for _ in range(3):
        await limiter.acquire()
    assert t.slept == []
    await limiter.acquire()
    assert t.slept == [pytest.approx(0.5)]


def test_rate_must_be_positive():
    """A zero rate is refused."""
    with pytest.raises(ValueError):
        AsyncRateLimiter(0)
