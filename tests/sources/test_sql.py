"""The sql source on its own, against a real SQLite KYC database."""

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from archiver.config import SqlSourceSettings
from archiver.errors import SourceError
from archiver.idpass.crypto import new_key
from archiver.sources.sql import EPOCH, SourceBatch, SqlSource
from tests.sources.conftest import KEY_QUERY, QUERY

T = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _read_changes(
    source: SqlSource, watermark: datetime | None, *, chunk_rows: int = 1000
) -> SourceBatch:
    """Every row changed since ``watermark`` (minus the overlap), as one batch."""
    batches = list(source.iter_changes(watermark, chunk_rows=chunk_rows))
    return SourceBatch(
        items=[i for b in batches for i in b.items],
        rejected=[r for b in batches for r in b.rejected],
        new_watermark=max((b.new_watermark for b in batches if b.new_watermark), default=None),
        read=sum(b.read for b in batches),
    )


def _id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def _settings(url: str, **changes: object) -> SqlSourceSettings:
    values: dict[str, object] = {
        "kind": "sql",
        "name": "kyc",
        "url_env": "KYC_URL",
        "query": QUERY,
        "key_query": KEY_QUERY,
        "url": SecretStr(url),
    }
    values.update(changes)
    return SqlSourceSettings.model_validate(values)


def test_rows_are_handed_out_in_chunks_with_a_running_watermark(kyc):
    """iter_changes yields chunk_rows rows at a time; each chunk knows its largest watermark."""
    for n in range(5):
        kyc.put(_id(n), updated_at=T + timedelta(minutes=n))
    with SqlSource(_settings(kyc.url)) as source:
        batches = list(source.iter_changes(None, chunk_rows=2))
        whole = _read_changes(source, None, chunk_rows=2)
    assert [b.read for b in batches] == [2, 2, 1]
    assert [b.new_watermark for b in batches] == [
        T + timedelta(minutes=1),
        T + timedelta(minutes=3),
        T + timedelta(minutes=4),
    ]
    assert [i.pass_id for i in whole.items] == [_id(n) for n in range(5)]
    assert whole.new_watermark == T + timedelta(minutes=4) and whole.read == 5


def test_watermark_is_bound_minus_the_overlap(kyc):
    """:watermark is the epoch on the first read, then the watermark minus overlap_seconds."""
    source = SqlSource(_settings(kyc.url, overlap_seconds=120))
    assert source.since(None) == EPOCH
    assert source.since(T) == T - timedelta(seconds=120)
    kyc.put(_id(1), updated_at=T - timedelta(seconds=119))
    kyc.put(_id(2), updated_at=T - timedelta(seconds=121))
    assert [i.pass_id for i in _read_changes(source, T).items] == [_id(1)]
    source.close()


def test_row_values_are_parsed_and_naive_times_taken_as_utc(kyc):
    """Text ids, naive UTC text times and integer retention become a typed pass."""
    key = new_key()
    kyc.put(_id(1).upper(), key=key, completed_at="2026-05-30 08:00:00", retention=30, updated_at=T)
    with SqlSource(_settings(kyc.url)) as source:
        (item,) = _read_changes(source, None).items
    assert item.pass_id == _id(1)
    assert item.completed_at == datetime(2026, 5, 30, 8, tzinfo=UTC)
    assert item.image_retention_days == 30
    assert item.source == "kyc"


def test_keys_stay_in_the_source_unless_stored(kyc):
    """With store_cipher_keys false a pass with a key carries key_ref, never the key."""
    key = new_key()
    kyc.put(_id(1), key=key, updated_at=T)
    kyc.put(_id(2), updated_at=T)
    with SqlSource(_settings(kyc.url)) as source:
        by_id = {i.pass_id: i for i in _read_changes(source, None).items}
    assert by_id[_id(1)].cipher_key is None and by_id[_id(1)].key_ref == "kyc"
    assert by_id[_id(2)].cipher_key is None and by_id[_id(2)].key_ref is None
    with SqlSource(_settings(kyc.url, store_cipher_keys=True, key_query=None)) as source:
        by_id = {i.pass_id: i for i in _read_changes(source, None).items}
    assert by_id[_id(1)].cipher_key == key and by_id[_id(1)].key_ref is None


def test_without_a_key_column_every_pass_refers_to_key_query(kyc):
    """A query returning no cipher_key column gives every pass a key_ref when key_query is set."""
    kyc.put(_id(1), updated_at=T)
    query = "SELECT id, updated_at FROM kyc_passes WHERE updated_at > :watermark"
    with SqlSource(_settings(kyc.url, query=query)) as source:
        assert [i.key_ref for i in _read_changes(source, None).items] == ["kyc"]
    with SqlSource(_settings(kyc.url, query=query, key_query=None)) as source:
        assert [i.key_ref for i in _read_changes(source, None).items] == [None]


def test_lookup_key_reads_the_key_now(kyc):
    """lookup_key runs key_query for one pass: its key, or None when it has none."""
    key = new_key()
    kyc.put(_id(1), key=key, updated_at=T)
    kyc.put(_id(2), updated_at=T)
    with SqlSource(_settings(kyc.url)) as source:
        assert source.lookup_key(_id(1)) == key
        assert source.lookup_key(_id(2)) is None
        assert source.lookup_key(_id(3)) is None


def test_lookup_key_refuses_unusable_answers_without_echoing_them(kyc):
    """An invalid key or two rows for one pass is a permanent error that names no value."""
    kyc.put(_id(1), key="not-a-key-Quillon", updated_at=T)
    with SqlSource(_settings(kyc.url)) as source, pytest.raises(SourceError) as info:
        source.lookup_key(_id(1))
    assert not info.value.retryable and info.value.pass_id == _id(1)
    assert "Quillon" not in str(info.value)
    assert "cipher key is not valid Base64" in str(info.value)

    kyc.put(_id(2), updated_at=T)
    two_rows = "SELECT cipher_key FROM kyc_passes WHERE id = :id OR 1 = 1"
    source = SqlSource(_settings(kyc.url, key_query=two_rows))
    with source, pytest.raises(SourceError, match="more than one row"):
        source.lookup_key(_id(2))


def test_query_shape_problems_are_permanent_source_errors(kyc):
    """No id or watermark column, or keys returned without key_query: a permanent error."""
    kyc.put(_id(1), key=new_key(), updated_at=T)
    cases = {
        "SELECT updated_at FROM kyc_passes WHERE updated_at > :watermark": "no 'id' column",
        "SELECT id FROM kyc_passes WHERE updated_at > :watermark": "no 'updated_at' column",
        QUERY: "the query returns cipher_key but store_cipher_keys = false",
    }
    for query, message in cases.items():
        source = SqlSource(_settings(kyc.url, query=query, key_query=None))
        with pytest.raises(SourceError, match=message) as info:
            _read_changes(source, None)
        assert not info.value.retryable
        source.close()


def test_database_errors_are_translated_without_the_url(tmp_path):
    """An unreachable database is a retryable SourceError naming no URL or driver detail."""
    url = f"sqlite:///{tmp_path}/missing-dir/kyc-hunter2.db"
    with SqlSource(_settings(url)) as source, pytest.raises(SourceError) as info:
        _read_changes(source, None)
    assert info.value.retryable and info.value.source == "kyc"
    assert str(info.value) == "source kyc: reading changes failed (OperationalError)"
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_failing_queries_are_translated_without_values(kyc):
    """A query or key lookup the database rejects becomes a SourceError without SQL or ids."""
    query = "SELECT id, updated_at FROM no_such_table WHERE updated_at > :watermark"
    key_query = "SELECT cipher_key FROM no_such_table WHERE id = :id"
    with SqlSource(_settings(kyc.url, query=query, key_query=key_query)) as source:
        with pytest.raises(SourceError) as changes:
            _read_changes(source, None)
        with pytest.raises(SourceError) as lookup:
            source.lookup_key(_id(7))
    assert str(changes.value) == "source kyc: reading changes failed (OperationalError)"
    assert str(lookup.value) == "source kyc: key lookup failed (OperationalError)"
    assert lookup.value.pass_id == _id(7)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url://hunter2", "not a valid SQLAlchemy URL"),
        ("nosuchdb://user:hunter2@host/db", "dialect SQLAlchemy does not know"),
        ("mysql+mysqldb://user:hunter2@host/db", "driver is not installed (module MySQLdb)"),
    ],
)
def test_bad_urls_are_permanent_errors_without_the_url(url, message):
    """A malformed URL, unknown dialect or missing driver says so without echoing the URL."""
    with SqlSource(_settings(url)) as source, pytest.raises(SourceError) as info:
        source.lookup_key(_id(1))
    assert message in str(info.value)
    assert "hunter2" not in str(info.value)
    assert not info.value.retryable
