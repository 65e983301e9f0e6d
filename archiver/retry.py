"""Request-level retries for the ID Pass API, as a wrapper around the boundary.

Retried, with exponential backoff and full jitter: 429 (waiting at least its
``Retry-After``, up to ``max_wait``), 5xx, timeouts, connection resets and truncated
or malformed bodies. Never retried: 400, 401/403 (systemic: the run stops), 404, and
payload errors. When the attempts run out the last error goes to the pipeline, which
records a pass-level ``retry`` (next run) or, after ``pipeline.max_attempts``,
``failed``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from archiver.errors import ApiError, ApiRateLimited
from archiver.idpass.client import PassRead
from archiver.pipeline import DetailsReader

log = structlog.get_logger("archiver.retry")


class RetryingReader:
    def __init__(
        self,
        inner: DetailsReader,
        *,
        attempts: int = 4,
        base: float = 0.5,
        cap: float = 20.0,
        max_wait: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.inner = inner
        self.attempts = attempts
        self.base = base
        self.cap = cap
        self.max_wait = max_wait
        self._sleep = sleep
        self._rng = rng or random.Random()

    def delay(self, attempt: int, error: ApiError) -> float:
        """Full-jitter exponential backoff; at least Retry-After for a 429."""
        backoff = self._rng.uniform(0, min(self.cap, self.base * 2**attempt))
        if isinstance(error, ApiRateLimited) and error.retry_after is not None:
            return max(backoff, error.retry_after)
        return backoff

    async def details(self, pass_id: str, *args: Any, **kwargs: Any) -> PassRead:
        """``inner.details(...)`` with the same arguments, retried (see the class)."""
        attempt = 0
        while True:
            try:
                return await self.inner.details(pass_id, *args, **kwargs)
            except ApiError as exc:
                attempt += 1
                if not exc.retryable or attempt >= self.attempts:
                    raise
                wait = self.delay(attempt - 1, exc)
                if wait > self.max_wait:
                    raise
                log.info(
                    "api_retry", reason=exc.reason, attempt=attempt, wait_seconds=round(wait, 2)
                )
                await self._sleep(wait)
