from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from archiver.catalog import Outcome, OutcomeUpdate, PassUpsert
from archiver.catalog.keys import KeySealer, new_catalog_secret
from archiver.catalog.sql import SCHEMA_VERSION, SqlCatalog
from archiver.errors import CatalogError
from archiver.idpass.crypto import new_key

T0 = datetime(2026, 6, 1, tzinfo=UTC)


def _id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


@pytest.fixture
def catalog(tmp_path):
    cat = SqlCatalog(f"sqlite:///{tmp_path / 'c.db'}", sealer=KeySealer(new_catalog_secret()))
    yield cat
    cat.close()


def test_schema_is_versioned_and_reopen_keeps_data(tmp_path):
    """A new catalog records its schema version; reopening migrates nothing and keeps rows."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    cat = SqlCatalog(url)
    assert cat.schema_version == SCHEMA_VERSION
    cat.upsert([PassUpsert(_id(1), "t")])
    cat.close()
    again = SqlCatalog(url)
    assert again.get(_id(1)) is not None
    assert again.schema_version == SCHEMA_VERSION
    again.close()


def test_newer_schema_is_refused(tmp_path):
    """A catalog written by a newer archiver is refused with a clear message."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    SqlCatalog(url).close()
    eng = sa.create_engine(url)
    with eng.begin() as conn:
        conn.execute(sa.text("INSERT INTO schema_version VALUES (99, '2026-01-01 00:00:00')"))
    eng.dispose()
    with pytest.raises(CatalogError, match="newer than this archiver"):
        SqlCatalog(url)


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


def test_cipher_keys_are_sealed_at_rest(catalog, tmp_path):
    """A cipher key is stored sealed, read back intact, and absent from the database file."""
    key = new_key()
    catalog.upsert([PassUpsert(_id(1), "t", cipher_key=key)])
    assert catalog.get(_id(1)).cipher_key == key
    assert key not in repr(catalog.get(_id(1)))
    raw = (tmp_path / "c.db").read_bytes()
    wal = tmp_path / "c.db-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    assert key.encode() not in raw


def test_keys_without_a_catalog_key_are_refused(tmp_path):
    """Without a catalog key, a cipher key is refused rather than stored in plaintext."""
    cat = SqlCatalog(f"sqlite:///{tmp_path / 'c.db'}")
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
