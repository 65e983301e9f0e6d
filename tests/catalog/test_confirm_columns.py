"""Migration 5 and the catalog's side of confirmed absence and retry accounting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from archiver.catalog import Outcome, OutcomeUpdate, PassUpsert
from archiver.catalog.sql import MIGRATIONS, SCHEMA_VERSION, SqlCatalog, schema_version

T0 = datetime(2026, 6, 1, tzinfo=UTC)
PID = "00000000-0000-4000-8000-000000000005"


def _at_version_4(url: str) -> None:
    """A catalog as version 4 left it, with a pass waiting on a not_ready re-check."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        schema_version.create(conn)
        for version, migrate in MIGRATIONS[:4]:
            migrate(conn)
            conn.execute(schema_version.insert().values(version=version, applied_at=T0))
        conn.execute(
            sa.text(
                "INSERT INTO passes (pass_id, state, source, attempts, next_attempt_at, "
                "first_seen_at, updated_at) VALUES (:p, 'not_ready', 'v4', 3, :n, :t, :t)"
            ),
            {"p": PID, "n": T0 + timedelta(hours=4), "t": T0},
        )
    engine.dispose()


def test_version_4_catalog_gains_the_confirmation_columns_and_state(catalog_url):
    """Migration 5: counts start at 0, and a confirming pass is due and claimable
    through the rebuilt due-order index."""
    _at_version_4(catalog_url)
    cat = SqlCatalog(catalog_url)
    try:
        assert cat.schema_version == SCHEMA_VERSION
        entry = cat.get(PID)
        assert (entry.attempts, entry.checks, entry.confirmations) == (3, 0, 0)
        assert entry.seen_slots is None
        update = OutcomeUpdate(
            PID,
            Outcome.CONFIRMING,
            "no images: confirming read 1 of 2",
            next_attempt_at=T0 + timedelta(seconds=30),
            seen_slots='{"probe":null}',
            count_attempt=False,
            count_confirmation=True,
        )
        cat.record(update, T0)
        entry = cat.get(PID)
        assert (entry.attempts, entry.confirmations) == (3, 1)
        assert entry.seen_slots == '{"probe":null}'
        assert cat.claim("w", T0, 10, 60) == []  # not due yet
        [claimed] = cat.claim("w", T0 + timedelta(seconds=30), 10, 60)
        assert claimed.state is Outcome.CONFIRMING
    finally:
        cat.close()


def test_a_not_ready_recheck_counts_in_checks_not_attempts(catalog):
    catalog.upsert([PassUpsert(PID, "t")])
    for _ in range(3):
        catalog.record(
            OutcomeUpdate(PID, Outcome.NOT_READY, count_attempt=False, count_check=True), T0
        )
    entry = catalog.get(PID)
    assert (entry.attempts, entry.checks) == (0, 3)


def test_a_reimport_with_completed_at_makes_a_not_ready_pass_due_at_once(catalog):
    """The source now knows the pass completed: its re-check backoff is cleared."""
    catalog.upsert([PassUpsert(PID, "t")])
    later = T0 + timedelta(hours=8)
    catalog.record(
        OutcomeUpdate(PID, Outcome.NOT_READY, next_attempt_at=later, count_attempt=False), T0
    )
    assert catalog.due(T0, 10) == []
    catalog.upsert([PassUpsert(PID, "t", completed_at=T0, image_retention_days=30)])
    [entry] = catalog.due(T0, 10)
    assert entry.next_attempt_at is None and entry.completed_at == T0
