"""What a run produced: each pass's result, the run's summary, and the exit codes.

Shared by the pipeline that makes them and by what reports them (the CLI, the run
manifest, metrics, progress), which need not import the pipeline for it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from archiver.catalog import Outcome
from archiver.clock import isoformat

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_USAGE = 2
EXIT_SYSTEMIC = 3
EXIT_EXPIRED = 4


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
    def exit_code(self) -> int:
        counts = self.counts
        if self.systemic_error:
            return EXIT_SYSTEMIC
        if counts["expired"]:
            return EXIT_EXPIRED
        if counts["failed"] or counts["retry"] or self.stopped_early:
            return EXIT_INCOMPLETE
        return EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "started_at": isoformat(self.started_at),
            "finished_at": isoformat(self.finished_at) if self.finished_at else None,
            "dry_run": self.dry_run,
            "passes": len(self.results),
            "counts": self.counts,
            "images": sum(r.images for r in self.results),
            "image_bytes": sum(r.image_bytes for r in self.results),
            "objects_written": sum(r.objects_written for r in self.results),
            "objects_reused": sum(r.objects_reused for r in self.results),
            "already_archived": sum(1 for r in self.results if r.already_archived),
            "expired_ids": sorted(r.pass_id for r in self.results if r.outcome is Outcome.EXPIRED),
            "failed": sorted(
                (
                    {"pass_id": r.pass_id, "reason": r.reason}
                    for r in self.results
                    if r.outcome in (Outcome.FAILED, Outcome.RETRY)
                ),
                key=lambda d: str(d["pass_id"]),
            ),
            "at_risk": len(self.at_risk),
            "at_risk_passes": [
                {"pass_id": pid, "deadline": isoformat(deadline)} for pid, deadline in self.at_risk
            ],
            "next_run": isoformat(self.next_run) if self.next_run else None,
            "worker_id": self.worker_id,
            "stopped_early": self.stopped_early,
            "sources": self.sources,
            "run_manifest_key": self.run_manifest_key,
            "systemic_error": self.systemic_error,
            "exit_code": self.exit_code,
            "planned": self.planned if self.dry_run else None,
        }
