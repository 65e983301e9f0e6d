"""The catalog: which passes exist, their deadlines and their archival state.

S3 stays the source of truth (a pass is archived when its manifest exists); the
catalog is the job's memory of what to do next. :class:`Catalog` is the interface
the pipeline and the CLI use; :mod:`archiver.catalog.sql` implements it over
SQLAlchemy (SQLite by default).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol


class Outcome(StrEnum):
    """What happened to a pass (the README's Outcomes table). ``PENDING``: nothing yet."""

    PENDING = "pending"
    ARCHIVED = "archived"
    NO_IMAGES = "no_images"  # the pass keeps no images by design (retention 0)
    # Inside the window, confirmed reads of the pass returned no image at all.
    IMAGES_ABSENT = "images_absent"
    EXPIRED = "expired"
    NOT_READY = "not_ready"
    # A read answered no images, or a slot null: read again before the pass settles.
    CONFIRMING = "confirming"
    RETRY = "retry"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def final(self) -> bool:
        return self in FINAL_OUTCOMES


FINAL_OUTCOMES = frozenset(
    {
        Outcome.ARCHIVED,
        Outcome.NO_IMAGES,
        Outcome.IMAGES_ABSENT,
        Outcome.EXPIRED,
        Outcome.FAILED,
        Outcome.SKIPPED,
    }
)
WORK_STATES = (Outcome.PENDING, Outcome.RETRY, Outcome.NOT_READY, Outcome.CONFIRMING)


@dataclass(frozen=True, slots=True)
class PassUpsert:
    """A pass as a source knows it. ``None`` means the source does not know."""

    pass_id: str
    source: str
    cipher_key: str | None = field(default=None, repr=False)
    completed_at: datetime | None = None
    image_retention_days: int | None = None
    # The name of the source to ask for the cipher key when the pass is processed
    # (the key itself then never enters the catalog).
    key_ref: str | None = None


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    pass_id: str
    state: Outcome
    cipher_key: str | None = field(repr=False)
    completed_at: datetime | None
    image_retention_days: int | None
    deadline: datetime | None
    attempts: int
    next_attempt_at: datetime | None
    last_reason: str | None
    manifest_key: str | None
    manifest_sha256: str | None
    api_status: str | None
    key_ref: str | None = None
    link_expires_at: datetime | None = None
    lease_owner: str | None = None
    # not_ready re-checks so far (their backoff; they spend no error attempts)
    checks: int = 0
    # confirming reads so far, and what every read of the pass saw per slot (JSON,
    # see archiver.pipeline.confirm); neither spends error attempts
    confirmations: int = 0
    seen_slots: str | None = None


@dataclass(frozen=True, slots=True)
class OutcomeUpdate:
    """What the pipeline learned about one pass."""

    pass_id: str
    outcome: Outcome
    reason: str | None = None
    api_status: str | None = None
    completed_at: datetime | None = None
    image_retention_days: int | None = None
    deadline: datetime | None = None
    manifest_key: str | None = None
    manifest_sha256: str | None = None
    next_attempt_at: datetime | None = None
    link_expires_at: datetime | None = None
    image_count: int | None = None
    image_bytes: int | None = None
    seen_slots: str | None = None  # set when not None
    count_attempt: bool = True
    count_check: bool = False  # a not_ready re-check
    count_confirmation: bool = False  # a read that asked for a confirming read


@dataclass(frozen=True, slots=True)
class UnlistedPass:
    """An archived pass no stored run manifest lists (the run that committed it died
    before storing its run manifest): a later run lists it as recovered."""

    pass_id: str
    manifest_key: str
    manifest_sha256: str


@dataclass(frozen=True, slots=True)
class Scope:
    """Narrows which due passes a run claims (a backfill). ``None`` fields: no limit.

    ``completed_from`` is inclusive and ``completed_to`` exclusive. A backfill waives
    the retry backoff of passes last touched before ``waive_backoff_before`` (the
    backfill's start: a person asked for them now), so a pass that fails again during
    the backfill still waits; it never takes other workers' leases.
    """

    completed_from: datetime | None = None
    completed_to: datetime | None = None
    pass_ids: tuple[str, ...] | None = None
    waive_backoff_before: datetime | None = None


@dataclass(frozen=True, slots=True)
class UpsertStats:
    added: int = 0
    updated: int = 0
    unchanged: int = 0


class Catalog(Protocol):
    def upsert(self, passes: Iterable[PassUpsert]) -> UpsertStats: ...

    def due(self, now: datetime, limit: int, scope: Scope | None = None) -> list[CatalogEntry]: ...

    def claim(
        self,
        worker: str,
        now: datetime,
        limit: int,
        lease_seconds: int,
        scope: Scope | None = None,
    ) -> list[CatalogEntry]: ...

    def count_due(self, now: datetime, scope: Scope | None = None) -> int: ...

    def close_overdue(self, now: datetime) -> tuple[list[str], list[str]]: ...

    def release(self, worker: str, pass_ids: list[str]) -> None: ...

    def at_risk(self, now: datetime, before: datetime, limit: int = 1000) -> list[CatalogEntry]: ...

    def get(self, pass_id: str) -> CatalogEntry | None: ...

    def record(self, update: OutcomeUpdate, now: datetime) -> None: ...

    def counts(self) -> Mapping[str, int]: ...

    def record_run(
        self,
        run_id: str,
        started_at: datetime,
        finished_at: datetime,
        exit_code: int,
        summary: Mapping[str, object],
    ) -> None: ...

    def close(self) -> None: ...
