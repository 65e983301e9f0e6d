"""A run's exit code and success, decided in one place: RunSummary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from archiver.catalog import Outcome
from archiver.results import (
    EXIT_EXPIRED,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_SYSTEMIC,
    PassResult,
    RunSummary,
)

T0 = datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC)
FAILED_SOURCE = {"name": "kyc", "error": "source kyc: reading changes failed"}


def _run(*outcomes: Outcome, **fields: Any) -> RunSummary:
    results = [
        PassResult(f"0b6f3c9e-6a55-4a43-9d8f-2f0a8f7e3c{n:02d}", o) for n, o in enumerate(outcomes)
    ]
    return RunSummary(
        run_id="r", started_at=T0, finished_at=T0 + timedelta(seconds=1), results=results, **fields
    )


@pytest.mark.parametrize(
    ("summary", "code", "succeeded"),
    [
        (_run(Outcome.ARCHIVED, Outcome.NO_IMAGES, Outcome.NOT_READY), EXIT_OK, True),
        (_run(), EXIT_OK, True),
        (_run(Outcome.ARCHIVED, Outcome.FAILED), EXIT_INCOMPLETE, True),
        (_run(Outcome.RETRY), EXIT_INCOMPLETE, True),
        (_run(Outcome.ARCHIVED, stopped_early=True), EXIT_INCOMPLETE, False),
        (_run(Outcome.ARCHIVED, sources=[FAILED_SOURCE]), EXIT_INCOMPLETE, False),
        (_run(Outcome.ARCHIVED, sources=[{"name": "kyc", "error": None}]), EXIT_OK, True),
        (_run(Outcome.FAILED, Outcome.EXPIRED, sources=[FAILED_SOURCE]), EXIT_EXPIRED, False),
        (_run(Outcome.EXPIRED, systemic_error="api_auth_error"), EXIT_SYSTEMIC, False),
    ],
)
def test_exit_code_and_success(summary: RunSummary, code: int, succeeded: bool) -> None:
    """Systemic (3) before expired (4) before incomplete (1: failed or retrying passes,
    an early stop, a failed source sync); the JSON summary carries the same number.
    Success is a completed cycle, whatever became of single passes."""
    assert summary.exit_code == code
    assert summary.to_json()["exit_code"] == code
    assert summary.succeeded is succeeded
