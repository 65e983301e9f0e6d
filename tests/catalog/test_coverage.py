"""SqlCatalog.coverage, the compliance report's query: on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import sqlalchemy as sa

from archiver.catalog import Outcome, OutcomeUpdate, PassUpsert
from archiver.catalog.coverage import DayCoverage
from archiver.catalog.sql import SqlCatalog
from archiver.idpass.crypto import new_key

T0 = datetime(2026, 6, 1, tzinfo=UTC)
NOW = datetime(2026, 6, 20, tzinfo=UTC)


def _id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def _archive(cat: SqlCatalog, n: int, at: datetime, images: int = 2, size: int = 1000) -> None:
    cat.upsert([PassUpsert(_id(n), "t", completed_at=T0, image_retention_days=60)])
    cat.record(OutcomeUpdate(_id(n), Outcome.ARCHIVED, image_count=images, image_bytes=size), at)


def _expire(cat: SqlCatalog, n: int, window_closed: datetime) -> None:
    """A pass whose window closed at ``window_closed``, settled by a run a day later."""
    cat.upsert([PassUpsert(_id(n), "t", completed_at=window_closed, image_retention_days=1)])
    cat.close_overdue(window_closed + timedelta(days=2))


def test_empty_catalog_has_no_coverage(catalog):
    """An empty catalog reports zero passes, no days, nothing upcoming, no failures."""
    c = catalog.coverage(None, NOW)
    assert (c.known, c.work_left, c.days, c.upcoming, c.failures) == (0, 0, (), (), ())
    assert c.generated_at == NOW and c.since is None


def test_totals_count_every_state_and_known_is_all(catalog):
    """by_state counts each state; known is every pass in the catalog."""
    _archive(catalog, 1, T0)
    _archive(catalog, 2, T0)
    _expire(catalog, 3, T0)
    catalog.upsert([PassUpsert(_id(n), "t") for n in (4, 5, 6)])
    catalog.record(OutcomeUpdate(_id(4), Outcome.FAILED, reason="api_not_found: 404"), T0)
    catalog.record(OutcomeUpdate(_id(5), Outcome.RETRY, reason="api_unavailable"), T0)
    c = catalog.coverage(None, NOW)
    assert dict(c.by_state) == {
        Outcome.ARCHIVED: 2,
        Outcome.EXPIRED: 1,
        Outcome.FAILED: 1,
        Outcome.RETRY: 1,
        Outcome.PENDING: 1,
    }
    assert c.known == 6 == sum(catalog.counts().values())
    assert (c.count(Outcome.SKIPPED), c.work_left) == (0, 2)


def test_days_are_utc_days(catalog):
    """Archivals are bucketed by the UTC day of archived_at, whatever zone the time was
    given in; images and bytes are summed per day."""
    plus2 = timezone(timedelta(hours=2))
    _archive(catalog, 1, datetime(2026, 6, 3, 23, 30, tzinfo=UTC), images=3, size=300)
    # 01:30 at UTC+2 on June 4 is 23:30 UTC on June 3.
    _archive(catalog, 2, datetime(2026, 6, 4, 1, 30, tzinfo=plus2), images=1, size=100)
    _archive(catalog, 3, datetime(2026, 6, 4, 0, 0, tzinfo=UTC), images=4, size=4000)
    c = catalog.coverage(None, NOW)
    assert c.days == (
        DayCoverage(date(2026, 6, 3), archived=2, images=4, image_bytes=400),
        DayCoverage(date(2026, 6, 4), archived=1, images=4, image_bytes=4000),
    )
    assert (c.period_archived, c.period_images, c.period_image_bytes) == (3, 8, 4400)


def test_expired_passes_count_on_the_day_their_window_closed(catalog):
    """An expired pass counts on its deadline's UTC day, not on the day a run settled it;
    archived and expired passes of one day share its row."""
    _expire(catalog, 1, datetime(2026, 6, 5, 23, 59, tzinfo=UTC))
    _expire(catalog, 2, datetime(2026, 6, 6, 0, 1, tzinfo=UTC))
    _archive(catalog, 3, datetime(2026, 6, 7, 12, tzinfo=UTC))
    c = catalog.coverage(None, NOW)
    assert [(d.day.isoformat(), d.archived, d.expired) for d in c.days] == [
        ("2026-06-06", 0, 1),
        ("2026-06-07", 1, 1),
    ]
    assert c.period_expired == 2 == c.count(Outcome.EXPIRED)


def test_since_limits_the_days_and_nothing_else(catalog):
    """--since drops days before it (inclusive from its first instant); the totals,
    deadlines and failures still cover the whole catalog."""
    since = datetime(2026, 6, 10, tzinfo=UTC)
    _archive(catalog, 1, since - timedelta(microseconds=1))
    _archive(catalog, 2, since)
    _archive(catalog, 3, since + timedelta(days=2))
    _expire(catalog, 4, datetime(2026, 6, 8, tzinfo=UTC))  # window closed on the 9th
    _expire(catalog, 5, datetime(2026, 6, 10, tzinfo=UTC))  # ... on the 11th
    c = catalog.coverage(since, NOW)
    assert [(d.day.isoformat(), d.archived, d.expired) for d in c.days] == [
        ("2026-06-10", 1, 0),
        ("2026-06-11", 0, 1),
        ("2026-06-12", 1, 0),
    ]
    assert c.since == since
    assert (c.count(Outcome.ARCHIVED), c.count(Outcome.EXPIRED), c.known) == (3, 2, 5)


def test_passes_archived_before_archived_at_was_recorded_count_on_their_last_update(
    catalog, catalog_url
):
    """A pass archived before schema version 4 (no archived_at, no image counts) counts
    on the day of its last update, with zero images."""
    _archive(catalog, 1, datetime(2026, 6, 2, 8, tzinfo=UTC))
    engine = sa.create_engine(catalog_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE passes SET archived_at = NULL, image_count = NULL, image_bytes = NULL"
                )
            )
    finally:
        engine.dispose()
    assert catalog.coverage(None, NOW).days == (DayCoverage(date(2026, 6, 2), archived=1),)


def test_upcoming_deadlines_are_work_left_earliest_first(catalog):
    """Upcoming deadlines list passes with work left and a known deadline, the earliest
    first (overdue ones still unsettled included), at most ``upcoming`` of them."""
    catalog.upsert(
        [
            PassUpsert(_id(n), "t", completed_at=NOW, image_retention_days=days)
            for n, days in ((1, 9), (2, 3), (3, 5), (4, 7))
        ]
        + [PassUpsert(_id(5), "t")]  # no deadline known yet
        + [PassUpsert(_id(6), "t", completed_at=NOW - timedelta(days=2), image_retention_days=1)]
    )
    catalog.record(OutcomeUpdate(_id(3), Outcome.ARCHIVED, image_count=1, image_bytes=1), NOW)
    catalog.record(OutcomeUpdate(_id(4), Outcome.RETRY, reason="api_unavailable"), NOW)
    c = catalog.coverage(None, NOW, upcoming=3)
    assert [(u.pass_id, u.state) for u in c.upcoming] == [
        (_id(6), Outcome.PENDING),
        (_id(2), Outcome.PENDING),
        (_id(4), Outcome.RETRY),
    ]
    assert c.upcoming[1].deadline == NOW + timedelta(days=3)


def test_failures_carry_their_reasons_latest_first(catalog):
    """Failed passes come with reason, attempts and time, the latest failure first."""
    catalog.upsert([PassUpsert(_id(n), "t") for n in (1, 2, 3)])
    catalog.record(OutcomeUpdate(_id(1), Outcome.FAILED, reason="api_not_found: 404"), T0)
    catalog.record(
        OutcomeUpdate(_id(2), Outcome.FAILED, reason="bad_image: not a JPEG"),
        T0 + timedelta(hours=1),
    )
    c = catalog.coverage(None, NOW, failures=1)
    [only] = c.failures
    assert (only.pass_id, only.reason, only.attempts) == (_id(2), "bad_image: not a JPEG", 1)
    assert only.failed_at == T0 + timedelta(hours=1)
    assert c.count(Outcome.FAILED) == 2


def test_coverage_never_reads_cipher_keys(catalog, catalog_url):
    """The report's queries never select the sealed keys: a catalog opened without the
    catalog key reports on passes that have keys, and no statement names the column."""
    catalog.upsert([PassUpsert(_id(1), "t", cipher_key=new_key(), completed_at=T0)])
    keyless = SqlCatalog(catalog_url)
    statements: list[str] = []

    def seen(conn, cursor, statement, *args):
        statements.append(statement)

    sa.event.listen(keyless._engine, "before_cursor_execute", seen)
    try:
        assert keyless.coverage(None, NOW).known == 1
    finally:
        keyless.close()
    assert statements and not [s for s in statements if "sealed_cipher_key" in s]
