"""Migration 6: which archived passes a stored run manifest lists (issue 18).

A pass committed by a run that died before storing its run manifest is archived but
listed nowhere; the next run finds it with :meth:`SqlCatalog.unlisted` and, once its
own run manifest is stored, marks it with :meth:`SqlCatalog.mark_listed`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from archiver.catalog import Outcome, OutcomeUpdate, PassUpsert, UnlistedPass
from archiver.catalog.sql import MIGRATIONS, SCHEMA_VERSION, SqlCatalog, schema_version

T0 = datetime(2026, 6, 1, tzinfo=UTC)
SHA_A, SHA_B = "a" * 64, "b" * 64


def _id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def _archive(cat: SqlCatalog, n: int, sha: str, at: datetime) -> None:
    cat.record(
        OutcomeUpdate(
            _id(n), Outcome.ARCHIVED, manifest_key=f"p/{_id(n)}/manifest.json", manifest_sha256=sha
        ),
        at,
    )


def test_archived_passes_are_unlisted_until_marked(catalog):
    catalog.upsert([PassUpsert(_id(n), "t") for n in range(1, 5)])
    for n in (1, 2, 3):
        _archive(catalog, n, SHA_A, T0)
    # archived at (or after) the run's start: the run committing it lists it
    _archive(catalog, 3, SHA_A, T0 + timedelta(hours=1))
    found = catalog.unlisted(T0 + timedelta(minutes=1), 10)
    assert found == [
        UnlistedPass(_id(1), f"p/{_id(1)}/manifest.json", SHA_A),
        UnlistedPass(_id(2), f"p/{_id(2)}/manifest.json", SHA_A),
    ]
    assert catalog.unlisted(T0 + timedelta(minutes=1), 1) == found[:1]

    # the pair must match: a pass committed again since (another hash) stays unlisted
    assert catalog.mark_listed("run-1", [(_id(1), SHA_A), (_id(2), SHA_B)]) == 1
    later = T0 + timedelta(days=1)
    assert [p.pass_id for p in catalog.unlisted(later, 10)] == [_id(2), _id(3)]

    # recorded again with the same manifest (as catalog rebuild does): still listed
    _archive(catalog, 1, SHA_A, T0 + timedelta(hours=1))
    assert [p.pass_id for p in catalog.unlisted(later, 10)] == [_id(2), _id(3)]
    # archived again (a new manifest): no run manifest lists that one yet
    _archive(catalog, 1, SHA_B, T0 + timedelta(hours=2))
    assert [p.pass_id for p in catalog.unlisted(later, 10)] == [_id(1), _id(2), _id(3)]
    assert catalog.mark_listed("run-2", [(_id(1), SHA_B), (_id(2), SHA_A), (_id(3), SHA_A)]) == 3
    assert catalog.unlisted(later, 10) == []
    assert catalog.mark_listed("run-3", [(_id(4), SHA_A)]) == 0  # pending: not marked


def test_marking_many_passes_is_chunked(catalog):
    ids = list(range(1, 1203))
    catalog.upsert([PassUpsert(_id(n), "t") for n in ids])
    for n in ids:
        _archive(catalog, n, SHA_A, T0)
    assert len(catalog.unlisted(T0 + timedelta(1), 5000)) == len(ids)
    assert catalog.mark_listed("run-1", [(_id(n), SHA_A) for n in ids]) == len(ids)
    assert catalog.unlisted(T0 + timedelta(1), 5000) == []


def test_version_5_archived_passes_start_unlisted(catalog_url):
    """After migration 6 the passes archived before it are unlisted: a catalog cannot
    tell which of them a run manifest lists, so the next runs list them again."""
    engine = sa.create_engine(catalog_url)
    with engine.begin() as conn:
        schema_version.create(conn)
        for version, migrate in MIGRATIONS[:5]:
            migrate(conn)
            conn.execute(schema_version.insert().values(version=version, applied_at=T0))
        conn.execute(
            sa.text(
                "INSERT INTO passes (pass_id, state, source, attempts, manifest_key, "
                "manifest_sha256, first_seen_at, updated_at) "
                "VALUES (:p, 'archived', 'v5', 1, 'k', :s, :t, :t)"
            ),
            {"p": _id(7), "s": SHA_A, "t": T0},
        )
    engine.dispose()
    cat = SqlCatalog(catalog_url)
    try:
        assert cat.schema_version == SCHEMA_VERSION == 6
        assert cat.unlisted(T0, 10) == [UnlistedPass(_id(7), "k", SHA_A)]  # archived_at NULL
    finally:
        cat.close()


def test_the_unlisted_query_reads_the_partial_index(tmp_path):
    """The query SqlCatalog.unlisted sends, as SQLite plans it: from the partial index,
    not a scan of every archived pass."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    cat = SqlCatalog(url)
    cat.close()
    engine = sa.create_engine(url)
    statements: list[tuple[str, tuple]] = []
    sa.event.listen(
        engine,
        "before_cursor_execute",
        lambda conn, cursor, stmt, params, ctx, many: statements.append((stmt, params)),
    )
    cat = SqlCatalog(url)
    cat._engine = engine  # the same database, through an engine that records the SQL
    try:
        cat.upsert([PassUpsert(_id(n), "t") for n in range(1, 50)])
        for n in range(1, 40):
            _archive(cat, n, SHA_A, T0)
        statements.clear()
        assert len(cat.unlisted(T0 + timedelta(1), 10)) == 10
        (stmt, params), *_ = [s for s in statements if "listed_run_id IS NULL" in s[0]]
        with engine.connect() as conn:
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {stmt}", params).all()
        assert "ix_passes_unlisted" in " ".join(str(r) for r in plan), plan
    finally:
        cat.close()
