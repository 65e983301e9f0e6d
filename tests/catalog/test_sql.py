"""SqlCatalog, the same tests on SQLite (embedded) and on a real PostgreSQL."""

from __future__ import annotations

import multiprocessing
import re
import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from archiver.catalog import WORK_STATES, Outcome, OutcomeUpdate, PassUpsert, Scope
from archiver.catalog.keys import KeySealer, new_catalog_secret
from archiver.catalog.sql import (
    DUE_STATES,
    SCHEMA_VERSION,
    SqlCatalog,
    _migration_1,
    _v1_pass_columns,
    schema_version,
)
from archiver.errors import CatalogError
from archiver.idpass.crypto import new_key

T0 = datetime(2026, 6, 1, tzinfo=UTC)


def _id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def _raw(url: str, sql: str) -> list[tuple]:
    """Rows of a query on the database itself, around the catalog."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(sql))
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()


# -- schema and migrations -------------------------------------------------------------


def test_schema_is_versioned_and_reopen_keeps_data(catalog_url):
    """A new catalog records its schema version; reopening migrates nothing and keeps rows."""
    cat = SqlCatalog(catalog_url)
    assert cat.schema_version == SCHEMA_VERSION
    cat.upsert([PassUpsert(_id(1), "t")])
    cat.close()
    again = SqlCatalog(catalog_url)
    assert again.get(_id(1)) is not None
    assert again.schema_version == SCHEMA_VERSION
    again.close()
    versions = _raw(catalog_url, "SELECT version FROM schema_version ORDER BY version")
    assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    assert _indexes(catalog_url) == {
        "ix_passes_state_deadline",
        "ix_passes_due",
        "ix_passes_unlisted",
    }


def _indexes(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return {ix["name"] for ix in sa.inspect(engine).get_indexes("passes")}
    finally:
        engine.dispose()


def test_the_due_index_covers_exactly_the_work_states():
    """ix_passes_due's predicate (frozen in migration 3) names the states with work
    left; if those change, a new migration must rebuild the index."""
    assert tuple(s.value for s in WORK_STATES) == DUE_STATES


def test_newer_schema_is_refused(catalog_url):
    """A catalog written by a newer archiver is refused with a clear message."""
    SqlCatalog(catalog_url).close()
    _raw(catalog_url, "INSERT INTO schema_version VALUES (99, '2026-01-01 00:00:00')")
    with pytest.raises(CatalogError, match="newer than this archiver"):
        SqlCatalog(catalog_url)


def test_version_1_catalog_is_migrated_without_losing_data(catalog_url):
    """A catalog at schema version 1, with passes and runs in it, is migrated to the
    latest version on open; every row and value survives and the new columns work."""
    engine = sa.create_engine(catalog_url)
    v1_passes = sa.Table("passes", sa.MetaData(), *_v1_pass_columns())
    with engine.begin() as conn:
        _migration_1(conn)
        schema_version.create(conn)
        conn.execute(schema_version.insert().values(version=1, applied_at=T0))
        conn.execute(
            v1_passes.insert(),
            [
                {
                    "pass_id": _id(n),
                    "state": state,
                    "source": "v1",
                    "completed_at": T0,
                    "image_retention_days": 30,
                    "deadline": T0 + timedelta(days=30),
                    "attempts": n,
                    "last_reason": f"reason {n}",
                    "manifest_key": f"k/{n}" if state == "archived" else None,
                    "first_seen_at": T0,
                    "updated_at": T0,
                }
                for n, state in ((1, "archived"), (2, "pending"), (3, "retry"))
            ],
        )
        conn.execute(
            sa.text(
                "INSERT INTO runs VALUES ('r1', '2026-06-01 00:00:00', "
                "'2026-06-01 00:01:00', 0, '{\"counts\": {}}')"
            )
        )
    engine.dispose()

    cat = SqlCatalog(catalog_url)
    try:
        assert cat.schema_version == SCHEMA_VERSION
        rows = {e.pass_id: e for e in cat.all()}
        assert set(rows) == {_id(1), _id(2), _id(3)}
        assert rows[_id(1)].state is Outcome.ARCHIVED and rows[_id(1)].manifest_key == "k/1"
        assert rows[_id(3)].attempts == 3 and rows[_id(3)].last_reason == "reason 3"
        assert rows[_id(2)].deadline == T0 + timedelta(days=30)
        assert rows[_id(2)].key_ref is None and rows[_id(2)].lease_owner is None
        assert cat.last_run()["run_id"] == "r1"
        claimed = cat.claim("w1", T0, 10, 60)
        assert [e.pass_id for e in claimed] == [_id(2), _id(3)]
        assert {e.lease_owner for e in claimed} == {"w1"}
    finally:
        cat.close()
    versions = _raw(catalog_url, "SELECT version FROM schema_version ORDER BY version")
    assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    assert _indexes(catalog_url) == {
        "ix_passes_state_deadline",
        "ix_passes_due",
        "ix_passes_unlisted",
    }


def test_a_failing_migration_leaves_the_previous_version_intact(catalog_url, monkeypatch):
    """A migration that fails halfway is rolled back whole (DDL included): the catalog
    stays at the previous version with its data, and the next open applies it."""
    from archiver.catalog import sql

    first = SqlCatalog(catalog_url)
    first.upsert([PassUpsert(_id(1), "t")])
    first.close()
    state = {"fail": True}

    def _migration_next(conn):
        conn.execute(sa.text("ALTER TABLE passes ADD COLUMN extra_note TEXT"))
        conn.execute(sa.text("UPDATE passes SET extra_note = 'x'"))
        if state["fail"]:
            raise sa.exc.OperationalError("ALTER", {}, Exception("disk full"))

    nxt = SCHEMA_VERSION + 1
    monkeypatch.setattr(sql, "MIGRATIONS", [*sql.MIGRATIONS, (nxt, _migration_next)])
    monkeypatch.setattr(sql, "SCHEMA_VERSION", nxt)
    with pytest.raises(CatalogError, match="cannot open the catalog"):
        SqlCatalog(catalog_url)
    assert _raw(catalog_url, "SELECT MAX(version) FROM schema_version") == [(SCHEMA_VERSION,)]
    with pytest.raises(sa.exc.DBAPIError):
        _raw(catalog_url, "SELECT extra_note FROM passes")
    state["fail"] = False
    cat = SqlCatalog(catalog_url)
    assert cat.schema_version == nxt and cat.get(_id(1)) is not None
    cat.close()
    assert _raw(catalog_url, "SELECT pass_id, extra_note FROM passes") == [(_id(1), "x")]


def _open_catalog(url: str, barrier) -> None:  # runs in a child process
    barrier.wait(timeout=60)
    SqlCatalog(url).close()


def test_processes_opening_a_fresh_catalog_together_migrate_once(catalog_url):
    """Four processes opening the same empty catalog at the same moment all succeed,
    and each migration is applied exactly once (the schema lock serialises them)."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_open_catalog, args=(catalog_url, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0], "a process failed to open the catalog"
    counts = _raw(
        catalog_url, "SELECT version, COUNT(*) FROM schema_version GROUP BY version ORDER BY 1"
    )
    assert counts == [(v, 1) for v in range(1, SCHEMA_VERSION + 1)]


# -- selection -------------------------------------------------------------------------


def test_due_orders_by_deadline_unknown_first(catalog):
    """Due passes come earliest deadline first; unknown deadlines lead."""
    catalog.upsert(
        [
            PassUpsert(_id(1), "t", completed_at=T0, image_retention_days=30),
            PassUpsert(_id(2), "t", completed_at=T0, image_retention_days=2),
            PassUpsert(_id(3), "t"),
            PassUpsert(_id(4), "t", completed_at=T0 - timedelta(days=1), image_retention_days=2),
        ]
    )
    order = [e.pass_id for e in catalog.due(T0, 10)]
    assert order == [_id(3), _id(4), _id(2), _id(1)]
    assert catalog.get(_id(2)).deadline == T0 + timedelta(days=2)
    assert [e.pass_id for e in catalog.due(T0, 2)] == [_id(3), _id(4)]


def test_final_outcomes_leave_the_queue_and_retry_waits(catalog):
    """Archived passes are not due; retries become due at next_attempt_at."""
    catalog.upsert([PassUpsert(_id(1), "t"), PassUpsert(_id(2), "t")])
    catalog.record(
        OutcomeUpdate(_id(1), Outcome.ARCHIVED, manifest_key="k", manifest_sha256="a" * 64), T0
    )
    catalog.record(
        OutcomeUpdate(
            _id(2),
            Outcome.RETRY,
            reason="api_server_error",
            next_attempt_at=T0 + timedelta(minutes=5),
        ),
        T0,
    )
    assert catalog.due(T0, 10) == []
    later = catalog.due(T0 + timedelta(minutes=5), 10)
    assert [e.pass_id for e in later] == [_id(2)]
    assert later[0].attempts == 1 and later[0].last_reason == "api_server_error"
    assert catalog.counts() == {"archived": 1, "retry": 1}


def test_datetimes_come_back_as_utc_whatever_the_offset_given(catalog):
    """A deadline given with another offset is stored as UTC and read back aware."""
    plus10 = T0.astimezone(ZoneInfo("Australia/Sydney"))
    catalog.upsert([PassUpsert(_id(1), "t", completed_at=plus10, image_retention_days=1)])
    entry = catalog.get(_id(1))
    assert entry.completed_at == T0 and entry.completed_at.tzinfo is UTC
    assert entry.deadline == T0 + timedelta(days=1)


# -- leases ----------------------------------------------------------------------------


def _seed(catalog, n: int) -> list[str]:
    ids = [_id(i) for i in range(1, n + 1)]
    catalog.upsert(
        [
            PassUpsert(pid, "t", completed_at=T0, image_retention_days=10 + i)
            for i, pid in enumerate(ids)
        ]
    )
    return ids


def test_claim_leases_the_most_urgent_passes_to_one_worker(catalog):
    """A claim takes the most urgent due passes and leases them: they are no longer due
    and another worker's claim gets the next ones."""
    ids = _seed(catalog, 5)
    first = catalog.claim("w1", T0, 2, 60)
    assert [e.pass_id for e in first] == ids[:2]
    assert {e.lease_owner for e in first} == {"w1"}
    assert [e.pass_id for e in catalog.due(T0, 10)] == ids[2:]
    second = catalog.claim("w2", T0, 10, 60)
    assert [e.pass_id for e in second] == ids[2:]
    assert catalog.claim("w3", T0, 10, 60) == []
    assert catalog.get(ids[0]).lease_owner == "w1"


def test_an_expired_lease_makes_the_pass_due_again(catalog):
    """A dead worker's lease holds until it expires; then anyone may claim the pass."""
    ids = _seed(catalog, 2)
    catalog.claim("dead", T0, 10, 30)
    assert catalog.claim("w2", T0 + timedelta(seconds=29), 10, 30) == []
    taken = catalog.claim("w2", T0 + timedelta(seconds=30), 10, 30)
    assert [e.pass_id for e in taken] == ids
    assert {catalog.get(pid).lease_owner for pid in ids} == {"w2"}


def test_record_clears_the_lease_and_release_gives_back_only_ones_own(catalog):
    """Recording an outcome ends the lease; a worker can release only its own leases."""
    ids = _seed(catalog, 3)
    catalog.claim("w1", T0, 2, 60)
    catalog.claim("w2", T0, 1, 60)
    catalog.record(
        OutcomeUpdate(ids[0], Outcome.ARCHIVED, manifest_key="k", manifest_sha256="a" * 64), T0
    )
    assert catalog.get(ids[0]).lease_owner is None
    catalog.release("w1", [ids[1], ids[2]])
    assert catalog.get(ids[1]).lease_owner is None
    assert catalog.get(ids[2]).lease_owner == "w2"
    assert [e.pass_id for e in catalog.claim("w3", T0, 10, 60)] == [ids[1]]


def test_close_overdue_leaves_leased_passes_alone(catalog):
    """Overdue passes are settled without a fetch, except those a live lease holds."""
    catalog.upsert(
        [
            PassUpsert(_id(1), "t", completed_at=T0, image_retention_days=1),
            PassUpsert(_id(2), "t", completed_at=T0, image_retention_days=1),
            PassUpsert(_id(3), "t", completed_at=T0, image_retention_days=0),
        ]
    )
    catalog.claim("w1", T0, 1, 7 * 86_400)
    expired, gone = catalog.close_overdue(T0 + timedelta(days=2))
    assert (expired, gone) == ([_id(2)], [_id(3)])
    assert catalog.get(_id(1)).state is Outcome.PENDING
    assert catalog.counts() == {"pending": 1, "expired": 1, "no_images": 1}


def test_a_scoped_claim_takes_only_passes_in_scope(catalog):
    """A backfill scope limits a claim to a completed_at range ([from, to)) or to named
    passes, may waive the retry time of passes last touched before it began, and
    still respects other workers' leases."""
    catalog.upsert(
        [
            PassUpsert(_id(n), "t", completed_at=T0 + timedelta(days=n), image_retention_days=30)
            for n in range(1, 6)
        ]
    )
    catalog.record(OutcomeUpdate(_id(2), Outcome.RETRY, next_attempt_at=T0 + timedelta(days=9)), T0)
    catalog.claim("other", T0, 1, 600, Scope(pass_ids=(_id(3),)))
    window = Scope(
        completed_from=T0 + timedelta(days=2),
        completed_to=T0 + timedelta(days=4),
        waive_backoff_before=T0 + timedelta(seconds=1),
    )
    assert catalog.count_due(T0, window) == 1  # _id(2) (retry waived); _id(3) is leased
    assert [e.pass_id for e in catalog.claim("w", T0, 10, 600, window)] == [_id(2)]
    catalog.release("w", [_id(2)])
    named = Scope(pass_ids=(_id(1), _id(2), _id(4)))
    assert catalog.count_due(T0, named) == 2
    assert [e.pass_id for e in catalog.claim("w", T0, 10, 600, named)] == [_id(1), _id(4)]
    assert catalog.count_due(T0) == 1  # _id(5)


def test_concurrent_claims_never_hand_a_pass_to_two_workers(catalog_url):
    """Eight workers claiming small batches at the same time from 300 due passes get
    disjoint sets that together cover every pass."""
    seed = SqlCatalog(catalog_url)
    ids = _seed(seed, 300)
    seed.close()
    barrier = threading.Barrier(8)
    got: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        cat = SqlCatalog(catalog_url)
        mine: list[str] = []
        try:
            barrier.wait(timeout=30)
            while batch := cat.claim(name, T0, 7, 600):
                mine.extend(e.pass_id for e in batch)
        except BaseException as exc:
            errors.append(exc)
        finally:
            cat.close()
            got[name] = mine

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    claimed = [pid for mine in got.values() for pid in mine]
    assert len(claimed) == len(set(claimed)), "a pass was claimed by two workers"
    assert sorted(claimed) == ids
    owners = dict(_raw(catalog_url, "SELECT pass_id, lease_owner FROM passes"))
    assert all(owners[pid] == name for name, mine in got.items() for pid in mine)


# -- keys and runs ---------------------------------------------------------------------


def test_cipher_keys_are_sealed_at_rest(catalog, catalog_url, tmp_path):
    """A cipher key is stored sealed, read back intact, and absent from the database."""
    key = new_key()
    catalog.upsert([PassUpsert(_id(1), "t", cipher_key=key)])
    assert catalog.get(_id(1)).cipher_key == key
    assert key not in repr(catalog.get(_id(1)))
    stored = _raw(catalog_url, "SELECT sealed_cipher_key FROM passes")
    assert len(stored) == 1 and stored[0][0] and key not in stored[0][0]
    if catalog_url.startswith("sqlite"):
        raw = (tmp_path / "c.db").read_bytes()
        wal = tmp_path / "c.db-wal"
        raw += wal.read_bytes() if wal.exists() else b""
        assert key.encode() not in raw


def test_keys_without_a_catalog_key_are_refused(catalog_url):
    """Without a catalog key, a cipher key is refused rather than stored in plaintext."""
    cat = SqlCatalog(catalog_url)
    with pytest.raises(CatalogError, match="never stored in plaintext"):
        cat.upsert([PassUpsert(_id(1), "t", cipher_key=new_key())])
    cat.close()


def test_sealed_key_bound_to_its_pass():
    """A sealed key cannot be opened as another pass's key."""
    sealer = KeySealer(new_catalog_secret())
    sealed = sealer.seal(_id(1), new_key())
    with pytest.raises(CatalogError, match="wrong catalog key"):
        sealer.open(_id(2), sealed)


def test_upsert_fills_in_but_never_overwrites(catalog):
    """A later source fills unknown fields, never replaces known ones."""
    assert catalog.upsert([PassUpsert(_id(1), "t")]).added == 1
    stats = catalog.upsert([PassUpsert(_id(1), "t", completed_at=T0, image_retention_days=5)])
    assert stats.updated == 1
    stats = catalog.upsert(
        [PassUpsert(_id(1), "t", completed_at=T0 + timedelta(days=9), image_retention_days=9)]
    )
    assert stats.unchanged == 1
    assert catalog.get(_id(1)).deadline == T0 + timedelta(days=5)


def test_record_unknown_pass_is_an_error(catalog):
    """Recording an outcome for a pass the catalog lacks is an error."""
    with pytest.raises(CatalogError, match="not in the catalog"):
        catalog.record(OutcomeUpdate(_id(9), Outcome.FAILED), T0)


def test_runs_are_recorded(catalog):
    """A recorded run is returned as the last run."""
    catalog.record_run("r1", T0, T0 + timedelta(seconds=3), 0, {"counts": {"archived": 2}})
    last = catalog.last_run()
    assert last["run_id"] == "r1" and last["summary"]["counts"]["archived"] == 2


def test_an_unreachable_catalog_is_a_catalog_error_without_the_password():
    """A PostgreSQL catalog that cannot be reached is a CatalogError that does not
    repeat the URL's password."""
    with pytest.raises(CatalogError) as info:
        SqlCatalog("postgresql+psycopg://u:s3cret-pw@127.0.0.1:9/x?connect_timeout=2")
    assert "s3cret-pw" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is not None


def test_a_missing_sqlite_directory_is_created(tmp_path):
    """A SQLite catalog in a directory that does not exist yet creates the directory."""
    cat = SqlCatalog(f"sqlite:///{tmp_path / 'a' / 'b' / 'c.db'}")
    assert (tmp_path / "a" / "b" / "c.db").exists()
    cat.close()


def test_release_all_leases_frees_passes_of_a_dead_run(catalog):
    """Clearing all leases (done under the SQLite run lock) makes leased passes due again."""
    catalog.upsert([PassUpsert(_id(n), "t") for n in range(1, 4)])
    assert len(catalog.claim("dead-run", T0, 3, 3600)) == 3
    assert catalog.claim("next-run", T0, 3, 3600) == []
    assert catalog.release_all_leases() == 3
    assert len(catalog.claim("next-run", T0, 3, 3600)) == 3


# -- the run-manifest chain's head -------------------------------------------------------


def _link(n: int) -> tuple[str, str]:
    return f"archive/runs/2026/06/01/run{n}.json", f"{n:064x}"


def test_the_chain_head_moves_only_from_the_head_expected(catalog):
    """chain_move is a compare-and-set: it moves the head to the new manifest only
    from the head the caller expects (None: a chain not begun), per chain."""
    assert catalog.chain_head("main") is None
    assert catalog.chain_move("main", _link(1), _link(2)) is False  # no head yet
    assert catalog.chain_move("main", None, _link(1)) is True
    assert catalog.chain_move("main", None, _link(2)) is False  # begun meanwhile
    assert catalog.chain_move("main", _link(2), _link(3)) is False  # not the head
    assert catalog.chain_move("main", (_link(1)[0], _link(2)[1]), _link(3)) is False
    assert catalog.chain_head("main") == _link(1)
    assert catalog.chain_move("main", _link(1), _link(2)) is True
    assert catalog.chain_head("main") == _link(2)
    assert catalog.chain_head("worker-b") is None  # chains are separate
    assert catalog.chain_move("worker-b", None, _link(9)) is True
    assert catalog.chain_head("main") == _link(2)


def test_runs_moving_the_head_together_move_it_once(catalog_url):
    """Eight processes' catalogs moving the same head at the same time: exactly one
    moves it, the others are told it moved."""
    seed = SqlCatalog(catalog_url)
    assert seed.chain_move("main", None, _link(0))
    seed.close()
    barrier = threading.Barrier(8)
    moved: dict[int, bool] = {}
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        cat = SqlCatalog(catalog_url)
        try:
            barrier.wait(timeout=30)
            moved[n] = cat.chain_move("main", _link(0), _link(n))
        except BaseException as exc:
            errors.append(exc)
        finally:
            cat.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    winners = [n for n, ok in moved.items() if ok]
    assert len(moved) == 8 and len(winners) == 1
    check = SqlCatalog(catalog_url)
    assert check.chain_head("main") == _link(winners[0])
    check.close()


# -- database failures -------------------------------------------------------------------


def _break(url: str) -> None:
    """Drop every table behind an open catalog's back: each statement it runs from now
    on fails in the database itself (SQLite: no such table; PostgreSQL: undefined table)."""
    for table in ("passes", "runs", "run_chain", "source_watermarks", "schema_version"):
        _raw(url, f"DROP TABLE {table}")


def _assert_translated(call, operation: str) -> None:
    """``call()`` raises a CatalogError naming ``operation`` and the failure's type, and
    nothing of the statement, the tables or the URL."""
    with pytest.raises(CatalogError) as info:
        call()
    message = str(info.value)
    pattern = rf"{re.escape(operation)} \((OperationalError|ProgrammingError)\)"
    assert re.fullmatch(pattern, message), message
    assert info.value.__cause__ is None  # the SQLAlchemy error (with SQL) is not chained


def test_a_failing_database_under_chain_head_and_last_run_is_a_catalog_error(catalog, catalog_url):
    """Reading the run chain's head or the last run from a database that fails raises a
    CatalogError (exit 3 with one line), not SQLAlchemy's exception (an internal error)."""
    catalog.record_run("r1", T0, T0 + timedelta(seconds=1), 0, {})
    _break(catalog_url)
    _assert_translated(lambda: catalog.chain_head("main"), "cannot read the run chain's head")
    _assert_translated(catalog.last_run, "cannot read the last run")


def test_every_catalog_operation_on_a_failing_database_is_a_catalog_error(catalog, catalog_url):
    """One helper translates database failures: each operation says what it was doing."""
    update = OutcomeUpdate(_id(1), Outcome.ARCHIVED)
    operations = [
        (lambda: catalog.upsert([PassUpsert(_id(1), "t")]), "cannot add or update passes"),
        (lambda: catalog.due(T0, 10), "cannot read the due passes"),
        (lambda: catalog.count_due(T0), "cannot count the due passes"),
        (lambda: catalog.claim("w1", T0, 10, 60), "cannot claim passes"),
        (lambda: catalog.release("w1", [_id(1)]), "cannot release leases"),
        (catalog.release_all_leases, "cannot release leases"),
        (lambda: catalog.close_overdue(T0), "cannot settle overdue passes"),
        (lambda: catalog.at_risk(T0, T0 + timedelta(days=1)), "cannot read the passes at risk"),
        (lambda: catalog.get(_id(1)), "cannot read a pass"),
        (catalog.all, "cannot read the passes"),
        (lambda: catalog.record(update, T0), "cannot record the outcome of a pass"),
        (catalog.counts, "cannot count the passes"),
        (lambda: catalog.record_run("r1", T0, T0, 0, {}), "cannot record the run"),
        (lambda: catalog.get_watermark("src"), "cannot read the watermark"),
        (lambda: catalog.set_watermark("src", T0), "cannot store the watermark"),
        (lambda: catalog.chain_head("main"), "cannot read the run chain's head"),
        (
            lambda: catalog.chain_move("main", None, ("k", "0" * 64)),
            "cannot move the run chain's head",
        ),
        (catalog.last_run, "cannot read the last run"),
        (lambda: catalog.coverage(None, T0), "cannot read the coverage"),
    ]
    _break(catalog_url)
    for call, operation in operations:
        _assert_translated(call, operation)
