"""What a compliance review reads from the catalog: the coverage of the archive.

Plain frozen data, filled by :meth:`archiver.catalog.sql.SqlCatalog.coverage` and
rendered by :mod:`archiver.report`. Nothing here holds a cipher key or personal data:
pass ids are opaque UUIDs and failure reasons never quote what the API returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from archiver.catalog import WORK_STATES, Outcome


@dataclass(frozen=True, slots=True)
class DayCoverage:
    """One UTC day: passes archived that day (with their images) and passes whose
    retention window closed that day without them being archived."""

    day: date
    archived: int = 0
    images: int = 0
    image_bytes: int = 0
    expired: int = 0


@dataclass(frozen=True, slots=True)
class UpcomingDeadline:
    """A pass with work left and a known deadline (it may already be overdue: the next
    run settles it as expired)."""

    pass_id: str
    deadline: datetime
    state: Outcome


@dataclass(frozen=True, slots=True)
class FailedPass:
    """A pass that needs a person; ``failed_at`` is when its outcome was recorded."""

    pass_id: str
    reason: str | None
    attempts: int
    failed_at: datetime


@dataclass(frozen=True, slots=True)
class Coverage:
    """The catalog at ``generated_at``.

    ``by_state`` counts every pass in the catalog (whatever ``since`` is); ``days``
    holds the days with activity on or after ``since`` (all of them when ``None``), in
    order; ``upcoming`` the work-left passes with the earliest deadlines; ``failures``
    the most recently failed passes (``by_state`` has how many there are in all).
    """

    generated_at: datetime
    since: datetime | None
    by_state: tuple[tuple[Outcome, int], ...]
    days: tuple[DayCoverage, ...] = ()
    upcoming: tuple[UpcomingDeadline, ...] = ()
    failures: tuple[FailedPass, ...] = ()

    def count(self, state: Outcome) -> int:
        return sum(n for s, n in self.by_state if s is state)

    @property
    def known(self) -> int:
        return sum(n for _, n in self.by_state)

    @property
    def work_left(self) -> int:
        return sum(self.count(s) for s in WORK_STATES)

    @property
    def period_archived(self) -> int:
        return sum(d.archived for d in self.days)

    @property
    def period_expired(self) -> int:
        return sum(d.expired for d in self.days)

    @property
    def period_images(self) -> int:
        return sum(d.images for d in self.days)

    @property
    def period_image_bytes(self) -> int:
        return sum(d.image_bytes for d in self.days)
