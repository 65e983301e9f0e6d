"""Rate limiting as a wrapper around the API boundary (not a flag inside the core)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from archiver.idpass.client import PassRead
from archiver.pipeline import DetailsReader


class AsyncRateLimiter:
    """At most ``rate`` acquisitions per second on average, bursts up to ``burst``."""

    def __init__(
        self,
        rate: float,
        burst: int | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = float(burst if burst is not None else max(1, int(rate)))
        self._monotonic = monotonic
        self._sleep = sleep
        self._tokens = self.burst
        self._last = monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = self._monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await self._sleep((1 - self._tokens) / self.rate)


class RateLimitedReader:
    """A :class:`DetailsReader` that waits for the limiter before every request."""

    def __init__(self, inner: DetailsReader, limiter: AsyncRateLimiter) -> None:
        self.inner = inner
        self.limiter = limiter

    async def details(self, pass_id: str, *args: Any, **kwargs: Any) -> PassRead:
        """``inner.details(...)`` with the same arguments, once the limiter allows."""
        await self.limiter.acquire()
        return await self.inner.details(pass_id, *args, **kwargs)
