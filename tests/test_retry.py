"""Request-level retries: unit tests with a fake reader, and against the real sandbox."""

from __future__ import annotations

import random

import pytest

from archiver.errors import (
    ApiAuthError,
    ApiBadRequest,
    ApiMalformedResponse,
    ApiNotFound,
    ApiRateLimited,
    ApiServerError,
    ApiTransportError,
)
from archiver.idpass.client import IdPassClient
from archiver.retry import RetryingReader


class Flaky:
    def __init__(self, errors):
        self.errors = list(errors)
        self.calls = 0

    async def details(self, pass_id, cipher_key=None, **kw):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def _reader(inner, **kw):
    waits = []

    async def sleep(s):
        waits.append(s)

    return RetryingReader(inner, sleep=sleep, rng=random.Random(1), **kw), waits


@pytest.mark.parametrize(
    "error",
    [
        ApiServerError("x"),
        ApiTransportError("x"),
        ApiMalformedResponse("x"),
        ApiRateLimited("x", retry_after=None),
    ],
)
async def test_transient_errors_are_retried_with_backoff(error):
    """5xx, transport failures, malformed bodies and 429 are retried, then succeed."""
    inner = Flaky([error, error])
    reader, waits = _reader(inner, attempts=4, base=1.0)
    assert await reader.details("p") == "ok"
    assert inner.calls == 3
    assert len(waits) == 2 and 0 <= waits[0] <= 1.0 and 0 <= waits[1] <= 2.0


async def test_retry_after_is_honoured():
    """A 429's Retry-After is the least wait."""
    inner = Flaky([ApiRateLimited("x", retry_after=7)])
    reader, waits = _reader(inner, base=0.1)
    await reader.details("p")
    assert waits == [7]


async def test_retry_after_beyond_the_maximum_gives_up():
    """A Retry-After longer than max_wait is not waited out within the run."""
    inner = Flaky([ApiRateLimited("x", retry_after=3600)])
    reader, waits = _reader(inner, max_wait=60)
    with pytest.raises(ApiRateLimited):
        await reader.details("p")
    assert waits == []


@pytest.mark.parametrize("error", [ApiBadRequest("x"), ApiAuthError("x"), ApiNotFound("x")])
async def test_permanent_errors_are_not_retried(error):
    """400, 401/403 and 404 are raised at once."""
    inner = Flaky([error])
    reader, waits = _reader(inner)
    with pytest.raises(type(error)):
        await reader.details("p")
    assert inner.calls == 1 and waits == []


async def test_attempts_run_out():
    """After the last attempt the error goes to the caller."""
    inner = Flaky([ApiServerError("x")] * 5)
    reader, waits = _reader(inner, attempts=3)
    with pytest.raises(ApiServerError):
        await reader.details("p")
    assert inner.calls == 3 and len(waits) == 2


async def test_real_sandbox_faults_are_ridden_out(sandbox_http, sandbox_reset):
    """Against the sandbox: a 503, a 429 with Retry-After and a truncated body are retried."""
    [p] = sandbox_http.post("/_sandbox/passes", json={"image_retention_days": 3}).json()["passes"]
    for fault in (
        {"kind": "status", "status": 503},
        {"kind": "status", "status": 429, "retry_after": 0.05},
        {"kind": "truncated"},
    ):
        assert (
            sandbox_http.post("/_sandbox/faults", json={**fault, "pass_id": p["id"]}).status_code
            == 200
        )
    async with IdPassClient(sandbox_reset.base_url, sandbox_reset.token) as api:
        reader = RetryingReader(api, attempts=5, base=0.01)
        read = await reader.details(p["id"], p["cipher_key"])
    assert read.details.id == p["id"] and read.images
    assert sandbox_http.get("/_sandbox/faults").json()["faults"] == []
