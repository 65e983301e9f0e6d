"""Retention-aware scheduling, with the sandbox's and the archiver's clocks moved together."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from archiver.catalog import Outcome
from archiver.results import EXIT_EXPIRED


def test_passes_are_archived_earliest_deadline_first(travel):
    """Each run with --limit 1 takes the pass whose window closes first."""
    by_retention = {d: travel.seed(image_retention_days=d)[0]["id"] for d in (9, 2, 5)}
    travel.import_ledger()
    order = [travel.run(limit=1).results[0].pass_id for _ in range(3)]
    assert order == [by_retention[2], by_retention[5], by_retention[9]]


def test_passes_due_before_the_next_run_are_flagged_at_risk(travel):
    """Work left whose deadline falls before the next scheduled run is flagged at risk."""
    soon = travel.seed(image_retention_days=1)[0]["id"]
    later = travel.seed(image_retention_days=2)[0]["id"]
    safe = travel.seed(image_retention_days=30)[0]["id"]
    travel.import_ledger()
    travel.options = dataclasses.replace(
        travel.options, next_run=travel.clock.now() + timedelta(days=3)
    )
    summary = travel.run(limit=1)
    assert [r.pass_id for r in summary.results] == [soon]
    assert [pid for pid, _ in summary.at_risk] == [later]
    assert summary.to_json()["at_risk"] == 1
    assert safe not in [pid for pid, _ in summary.at_risk]


def test_window_closing_before_archival_is_expired_without_a_fetch(travel):
    """A pass whose window closed while it waited is expired (exit 4) and not fetched."""
    pid = travel.seed(image_retention_days=2)[0]["id"]
    travel.import_ledger()
    travel.advance(timedelta(days=2, seconds=1))
    # Any details call for this pass would now fail (and give `retry`, not `expired`).
    r = travel.http.post(
        "/_sandbox/faults", json={"kind": "status", "status": 500, "count": 5, "pass_id": pid}
    )
    assert r.status_code == 200, r.text
    summary = travel.run()
    [result] = summary.results
    assert result.pass_id == pid and result.outcome is Outcome.EXPIRED
    assert summary.exit_code == EXIT_EXPIRED
    assert travel.catalog.get(pid).last_reason == "retention window closed before archival"
    remaining = travel.http.get("/_sandbox/faults").json()["faults"]
    assert [f["remaining"] for f in remaining] == [5]  # the fault was never consumed


def test_not_ready_is_rechecked_with_backoff_then_given_up(travel):
    """A pass not complete is rechecked after 1 h, then 2 h, and skipped after its link died."""
    pid = travel.seed(status="in_progress", link_validity_days=2)[0]["id"]
    travel.import_ledger()
    assert travel.run().results[0].outcome is Outcome.NOT_READY
    first = travel.catalog.get(pid).next_attempt_at
    assert first == travel.clock.now() + timedelta(hours=1)
    assert travel.run().results == []  # not due again yet
    travel.advance(timedelta(hours=1))
    assert travel.run().results[0].outcome is Outcome.NOT_READY
    assert travel.catalog.get(pid).next_attempt_at == travel.clock.now() + timedelta(hours=2)
    travel.advance(timedelta(days=3, hours=1))  # link (2 days) + margin (24 h) are over
    [result] = travel.run().results
    assert result.outcome is Outcome.SKIPPED
    assert "after its link expired" in result.reason
    assert travel.catalog.get(pid).link_expires_at is not None


def test_pass_completing_later_is_archived(travel):
    """A pass first seen in progress is archived once it completes."""
    pid = travel.seed(status="in_progress")[0]["id"]
    travel.import_ledger()
    assert travel.run().results[0].outcome is Outcome.NOT_READY
    r = travel.http.post(f"/_sandbox/passes/{pid}/complete", json={})
    assert r.status_code == 200, r.text
    travel.advance(timedelta(hours=1))
    [result] = travel.run().results
    assert result.outcome is Outcome.ARCHIVED
    entry = travel.catalog.get(pid)
    assert entry.completed_at is not None and entry.deadline is not None


def test_failed_status_archived_only_when_configured(travel):
    """Failed passes are skipped by default and archived when archive_statuses has failed."""
    first = travel.seed(status="failed")[0]["id"]
    travel.import_ledger()
    [result] = travel.run().results
    assert (result.pass_id, result.outcome) == (first, Outcome.SKIPPED)
    second = travel.seed(status="failed")[0]["id"]
    travel.import_ledger()
    travel.options = dataclasses.replace(travel.options, archive_statuses=("complete", "failed"))
    [result] = travel.run().results
    assert (result.pass_id, result.outcome) == (second, Outcome.ARCHIVED)
    assert result.images >= 1
