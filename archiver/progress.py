"""Progress of long runs (backfills): a bar on a terminal, JSON events otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import structlog
from tqdm import tqdm

from archiver.results import PassResult

log = structlog.get_logger("archiver.progress")


class Progress:
    """Feed it every :class:`PassResult`; it shows passes done / total, MB and ETA.

    On a terminal: a tqdm bar on stderr. Otherwise: a ``backfill_progress`` event at
    most every ``interval`` seconds, and one at the end.
    """

    def __init__(self, total: int, *, stream: TextIO | None = None, interval: float = 5.0):
        self.total = total
        self.done = 0
        self.image_bytes = 0
        self.started = time.monotonic()
        self.interval = interval
        self._last_event = 0.0
        out = stream or sys.stderr
        self._bar: tqdm[Any] | None = None
        if out.isatty():
            self._bar = tqdm(total=total, unit="pass", file=out, dynamic_ncols=True)

    def __call__(self, result: PassResult) -> None:
        self.done += 1
        self.image_bytes += result.image_bytes
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(f"{self.image_bytes / 1e6:.1f} MB", refresh=False)
            return
        now = time.monotonic()
        if now - self._last_event >= self.interval:
            self._last_event = now
            self._event()

    def eta_seconds(self) -> float | None:
        elapsed = time.monotonic() - self.started
        if not self.done or self.done >= self.total:
            return None if not self.done else 0.0
        return elapsed / self.done * (self.total - self.done)

    def _event(self) -> None:
        eta = self.eta_seconds()
        log.info(
            "backfill_progress",
            done=self.done,
            total=self.total,
            image_mb=round(self.image_bytes / 1e6, 1),
            elapsed_seconds=round(time.monotonic() - self.started, 1),
            eta_seconds=round(eta, 1) if eta is not None else None,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            self._event()
