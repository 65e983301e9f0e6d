"""What a run produced: each pass's result, the run's summary, and the exit codes.

Shared by the pipeline that makes them and by what reports them (the CLI, the run
manifest, metrics, progress), which need not import the pipeline for it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from archiver.catalog import Outcome, OutcomeUpdate
from archiver.clock import isoformat
from archiver.core.format import PassFacts, PassManifest
from archiver.core.images import sha256_hex

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_USAGE = 2
EXIT_SYSTEMIC = 3
EXIT_EXPIRED = 4

#: The reason code of a pass whose reads returned different images for one slot.
SLOT_CONFLICT = "slot_conflict"


@dataclass(frozen=True, slots=True)
class Learned:
    """What reading a pass taught about it, recorded with its outcome."""

    api_status: str | None = None
    completed_at: datetime | None = None
    image_retention_days: int | None = None
    deadline: datetime | None = None
    link_expires_at: datetime | None = None
    # what the reads so far saw per slot (archiver.pipeline.confirm), once stored
    seen_slots: str | None = None

    @classmethod
    def from_facts(cls, facts: PassFacts) -> Learned:
        """What a stored manifest says the API answered."""
        return cls(
            facts.status, facts.completed_at, facts.image_retention_days, facts.images_deadline
        )

    def fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


NOTHING_LEARNED = Learned()


@dataclass(frozen=True, slots=True)
class PassResult:
    pass_id: str
    outcome: Outcome
    reason: str | None = None
    images: int = 0
    image_bytes: int = 0
    objects_written: int = 0
    objects_reused: int = 0
    manifest_key: str | None = None
    manifest_sha256: str | None = None
    already_archived: bool = False
    # when to read the pass again, when the result decides it (a confirming read)
    next_attempt_at: datetime | None = None

    @classmethod
    def archived_by(
        cls, manifest: PassManifest, key: str, data: bytes, *, reason: str
    ) -> PassResult:
        """The result of a pass committed by the manifest ``data`` stored at ``key``."""
        counts = cls(manifest.pass_id, Outcome.ARCHIVED, reason, *manifest.counts())
        return dataclasses.replace(
            counts, manifest_key=key, manifest_sha256=sha256_hex(data), already_archived=True
        )

    def catalog_update(
        self,
        learned: Learned = NOTHING_LEARNED,
        *,
        next_attempt_at: datetime | None = None,
        count_attempt: bool = True,
        count_check: bool = False,
        count_confirmation: bool = False,
    ) -> OutcomeUpdate:
        """What the catalog records of this result."""
        return OutcomeUpdate(
            self.pass_id,
            self.outcome,
            self.reason,
            manifest_key=self.manifest_key,
            manifest_sha256=self.manifest_sha256,
            next_attempt_at=next_attempt_at,
            image_count=self.images,
            image_bytes=self.image_bytes,
            count_attempt=count_attempt,
            count_check=count_check,
            count_confirmation=count_confirmation,
            **learned.fields(),
        )


@dataclass
class RunSummary:
    run_id: str
    started_at: datetime
    finished_at: datetime | None = None
    results: list[PassResult] = field(default_factory=list)
    systemic_error: str | None = None
    dry_run: bool = False
    planned: list[dict[str, Any]] = field(default_factory=list)
    worker_id: str | None = None
    next_run: datetime | None = None
    # passes with work left whose window closes before the next scheduled run
    at_risk: list[tuple[str, datetime]] = field(default_factory=list)
    stopped_early: bool = False
    # what each configured source contributed before the run (SourceReport.to_json())
    sources: list[dict[str, Any]] = field(default_factory=list)
    run_manifest_key: str | None = None
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def add(self, result: PassResult) -> None:
        """Record a pass's result; a pass handled twice in one run (a retry that came
        due again) keeps its last result only."""
        at = self._index.get(result.pass_id)
        if at is not None and at < len(self.results) and self.results[at].pass_id == result.pass_id:
            self.results[at] = result
            return
        self._index[result.pass_id] = len(self.results)
        self.results.append(result)

    @property
    def counts(self) -> dict[str, int]:
        c = Counter(r.outcome.value for r in self.results)
        return {o.value: c.get(o.value, 0) for o in Outcome if o is not Outcome.PENDING}

    @property
    def slot_conflicts(self) -> int:
        """Passes failed because two reads returned different images for a slot."""
        return sum(
            1
            for r in self.results
            if r.outcome is Outcome.FAILED and (r.reason or "").startswith(SLOT_CONFLICT)
        )

    @property
    def sources_failed(self) -> bool:
        """Whether a configured source failed to sync before the run."""
        return any(s.get("error") for s in self.sources)

    @property
    def exit_code(self) -> int:
        """The run's exit code (README, "Exit codes"). The one place it is decided: the
        process exits with it, and the signed run manifest, the catalog's run record
        and the metrics all hold it. A failed source sync makes a run incomplete."""
        if self.systemic_error:
            return EXIT_SYSTEMIC
        counts = self.counts
        if counts["expired"]:
            return EXIT_EXPIRED
        if counts["failed"] or counts["retry"] or self.stopped_early or self.sources_failed:
            return EXIT_INCOMPLETE
        return EXIT_OK

    @property
    def succeeded(self) -> bool:
        """Whether the run completed its cycle: no systemic failure, not stopped early,
        every configured source synced. Passes that failed, wait to retry or expired
        do not make it unsuccessful (they raise the exit code, and have their own
        metrics); this is the metrics' ``last_run_success``."""
        return self.systemic_error is None and not self.stopped_early and not self.sources_failed

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "started_at": isoformat(self.started_at),
            "finished_at": _iso(self.finished_at),
            "dry_run": self.dry_run,
            "passes": len(self.results),
            "counts": self.counts,
            **self._totals(),
            "expired_ids": sorted(r.pass_id for r in self.results if r.outcome is Outcome.EXPIRED),
            "failed": self._failed(),
            "slot_conflicts": self.slot_conflicts,
            "at_risk": len(self.at_risk),
            "at_risk_passes": [
                {"pass_id": pid, "deadline": isoformat(deadline)} for pid, deadline in self.at_risk
            ],
            "next_run": _iso(self.next_run),
            "worker_id": self.worker_id,
            "stopped_early": self.stopped_early,
            "sources": self.sources,
            "run_manifest_key": self.run_manifest_key,
            "systemic_error": self.systemic_error,
            "exit_code": self.exit_code,
            "planned": self.planned if self.dry_run else None,
        }

    def _totals(self) -> dict[str, int]:
        """Images, bytes and objects over the run's passes, and how many were archived
        already."""
        return {
            "images": sum(r.images for r in self.results),
            "image_bytes": sum(r.image_bytes for r in self.results),
            "objects_written": sum(r.objects_written for r in self.results),
            "objects_reused": sum(r.objects_reused for r in self.results),
            "already_archived": sum(1 for r in self.results if r.already_archived),
        }

    def _failed(self) -> list[dict[str, Any]]:
        """The passes that failed or wait to retry, with their reasons, by pass id."""
        failed = [
            {"pass_id": r.pass_id, "reason": r.reason}
            for r in self.results
            if r.outcome in (Outcome.FAILED, Outcome.RETRY)
        ]
        return sorted(failed, key=lambda d: str(d["pass_id"]))


def _iso(ts: datetime | None) -> str | None:
    return isoformat(ts) if ts is not None else None
