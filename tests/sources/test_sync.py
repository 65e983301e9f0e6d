"""Syncing configured sources into a real SQLite catalog, from a real SQLite KYC database."""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pybase64
import pytest
from structlog.testing import capture_logs

from archiver import config
from archiver.app import open_catalog
from archiver.catalog.keys import new_catalog_secret
from archiver.catalog.sql import SqlCatalog
from archiver.clock import ManualClock
from archiver.core.retention import images_deadline
from archiver.errors import ConfigError, SourceError
from archiver.idpass.crypto import new_key
from archiver.sources.sync import SourcePool, key_lookup, sync_sources
from tests.sources.conftest import KEY_QUERY, QUERY

T = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
NOW = T + timedelta(days=1)


def _id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def _settings(
    tmp_path: Path,
    kyc_url: str,
    *,
    store_cipher_keys: bool = False,
    extra_sources: tuple[dict[str, Any], ...] = (),
    catalog_key: str | None = None,
    **sql: Any,
) -> config.Settings:
    source: dict[str, Any] = {
        "kind": "sql",
        "name": "kyc",
        "url_env": "KYC_URL",
        "query": QUERY,
        "overlap_seconds": 300,
        "store_cipher_keys": store_cipher_keys,
    }
    if not store_cipher_keys:
        source["key_query"] = KEY_QUERY
    source.update(sql)
    data = {
        "api": {"base_url": "https://api.example.test"},
        "storage": {"bucket": "my-archive", "kms_key_id": "alias/a"},
        "catalog": {"url": f"sqlite:///{tmp_path / 'catalog' / 'catalog.db'}"},
        "sources": [source, *extra_sources],
    }
    env = {"KYC_URL": kyc_url}
    if catalog_key is not None:
        env["IDPASS_ARCHIVER_CATALOG_KEY"] = catalog_key
    return config.from_mapping(data, env)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def settings(tmp_path, kyc) -> config.Settings:
    return _settings(tmp_path, kyc.url)


@pytest.fixture
def catalog(settings):
    cat = open_catalog(settings)
    yield cat
    cat.close()


def _catalog_bytes(catalog: SqlCatalog, tmp_path: Path) -> bytes:
    """Every byte the catalog wrote to disk (database, WAL and shared-memory files)."""
    catalog.close()
    files = sorted((tmp_path / "catalog").iterdir())
    assert files, "the catalog wrote nothing"
    return b"".join(f.read_bytes() for f in files)


def test_first_sync_reads_every_row(kyc, settings, catalog, clock):
    """The first sync reads the whole table, adds each pass and stores the largest updated_at."""
    kyc.put(_id(1), key=new_key(), completed_at=T - timedelta(days=2), retention=30, updated_at=T)
    kyc.put(_id(2), updated_at=T - timedelta(hours=1))
    kyc.put(_id(3), completed_at=T, updated_at=T - timedelta(hours=2))
    (report,) = sync_sources(settings, catalog, clock=clock)
    assert (report.name, report.kind, report.error) == ("kyc", "sql", None)
    assert (report.read, report.added, report.updated, report.unchanged) == (3, 3, 0, 0)
    assert report.watermark_before is None and report.watermark_after == T
    assert catalog.get_watermark("kyc") == T
    one = catalog.get(_id(1))
    assert one is not None
    assert one.completed_at == T - timedelta(days=2) and one.image_retention_days == 30
    assert one.deadline == images_deadline(T - timedelta(days=2), 30)
    assert one.key_ref == "kyc" and one.cipher_key is None


def test_second_sync_without_changes_reads_only_the_overlap(kyc, settings, catalog, clock):
    """With nothing changed, a second sync reads only rows inside the overlap and adds nothing."""
    for n, minutes_before in enumerate([60, 10, 2, 0]):
        kyc.put(_id(n), updated_at=T - timedelta(minutes=minutes_before))
    sync_sources(settings, catalog, clock=clock)
    (report,) = sync_sources(settings, catalog, clock=clock)
    assert report.read == 2  # T-2min and T: inside the 300 s overlap
    assert (report.added, report.updated, report.unchanged) == (0, 0, 2)
    assert report.watermark_before == report.watermark_after == T
    assert len(catalog.all()) == 4


def test_rows_updated_after_the_watermark_are_picked_up(kyc, settings, catalog, clock):
    """A row updated after the last sync is read again and fills in what the catalog lacked."""
    kyc.put(_id(1), updated_at=T)
    sync_sources(settings, catalog, clock=clock)
    entry = catalog.get(_id(1))
    assert entry is not None and entry.completed_at is None and entry.deadline is None

    completed = T + timedelta(minutes=5)
    later = T + timedelta(minutes=20)
    kyc.put(_id(1), completed_at=completed, retention=7, updated_at=later)
    (report,) = sync_sources(settings, catalog, clock=clock)
    assert (report.read, report.added, report.updated) == (1, 0, 1)
    assert report.watermark_after == later
    entry = catalog.get(_id(1))
    assert entry is not None and entry.completed_at == completed
    assert entry.deadline == images_deadline(completed, 7)


def test_overlap_catches_a_row_committed_late(kyc, settings, catalog, clock):
    """A row committed after the sync with an older updated_at inside the overlap is still read;
    one older than the overlap is not (the window is the guarantee's limit)."""
    kyc.put(_id(1), updated_at=T)
    sync_sources(settings, catalog, clock=clock)
    kyc.put(_id(2), updated_at=T - timedelta(seconds=60))
    kyc.put(_id(3), updated_at=T - timedelta(seconds=600))
    (report,) = sync_sources(settings, catalog, clock=clock)
    assert report.added == 1
    assert catalog.get(_id(2)) is not None
    assert catalog.get(_id(3)) is None
    assert catalog.get_watermark("kyc") == T


def test_bad_rows_are_rejected_by_row_number_without_values(kyc, settings, catalog, clock):
    """Bad rows are reported by row number and reason; no value reaches the report or the log."""
    kyc.put(_id(1), updated_at=T)
    kyc.put("Quillon-Marrowby", updated_at=T + timedelta(seconds=1))
    kyc.put(_id(3), retention=9000, updated_at=T + timedelta(seconds=2))
    kyc.put(_id(4), key="short", updated_at=T + timedelta(seconds=3))
    kyc.put(_id(5), completed_at="31/12/2025", updated_at=T + timedelta(seconds=4))
    kyc.put(_id(6), updated_at="yesterday")
    with capture_logs() as logs:
        (report,) = sync_sources(settings, catalog, clock=clock)
    assert (report.read, report.added, report.rejected) == (6, 1, 5)
    assert dict(report.rejections) == {
        2: "id is not a UUID",
        3: "image_retention_days is outside 0..5000",
        4: "cipher key is not valid Base64",
        5: "completed_at is not an ISO 8601 timestamp",
        6: "updated_at is not an ISO 8601 timestamp",
    }
    # Rejected rows still advance the watermark: a fixed row gets a new updated_at.
    assert report.watermark_after == T + timedelta(seconds=4)
    text = repr(report.to_json()) + repr(logs)
    for value in ("Quillon", "9000", "short", "31/12/2025", "yesterday"):
        assert value not in text
    assert [e["event"] for e in logs] == ["source_synced"]
    assert logs[0]["rejected"] == 5


def test_keys_stay_in_the_source_and_are_looked_up(kyc, settings, catalog, clock, tmp_path):
    """With store_cipher_keys false the catalog keeps a reference, the pool returns the key,
    and the key appears nowhere in the catalog's files."""
    key = new_key()
    kyc.put(_id(1), key=key, updated_at=T)
    sync_sources(settings, catalog, clock=clock)
    entry = catalog.get(_id(1))
    assert entry is not None and entry.cipher_key is None and entry.key_ref == "kyc"
    with key_lookup(settings) as lookup:
        assert lookup("kyc", _id(1)) == key
        assert lookup("kyc", _id(2)) is None
        with pytest.raises(SourceError, match="not a configured sql source"):
            lookup("gone", _id(1))
    on_disk = _catalog_bytes(catalog, tmp_path)
    assert key.encode() not in on_disk
    assert pybase64.b64decode(key) not in on_disk


def test_stored_keys_are_sealed_in_the_catalog(kyc, tmp_path, clock):
    """With store_cipher_keys true the catalog returns the key but holds it only sealed."""
    settings = _settings(
        tmp_path, kyc.url, store_cipher_keys=True, catalog_key=new_catalog_secret()
    )
    key = new_key()
    kyc.put(_id(1), key=key, updated_at=T)
    catalog = open_catalog(settings)
    sync_sources(settings, catalog, clock=clock)
    entry = catalog.get(_id(1))
    assert entry is not None and entry.cipher_key == key and entry.key_ref is None
    on_disk = _catalog_bytes(catalog, tmp_path)
    assert key.encode() not in on_disk
    assert pybase64.b64decode(key) not in on_disk


def test_a_failing_source_is_reported_and_the_others_still_sync(kyc, tmp_path, clock):
    """A source that errors keeps its watermark and is reported; the file source still syncs."""
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text(f'{{"id": "{_id(9)}"}}\nnot json\n')
    file_source = {"kind": "file", "name": "ledger", "path": str(ledger)}
    settings = _settings(tmp_path, kyc.url, extra_sources=(file_source,))
    catalog = open_catalog(settings)
    kyc.put(_id(1), updated_at=T)
    sync_sources(settings, catalog, only="kyc", clock=clock)
    kyc.execute("DROP TABLE kyc_passes")
    with capture_logs() as logs:
        sql_report, file_report = sync_sources(settings, catalog, clock=clock)
    assert sql_report.error == "source kyc: reading changes failed (OperationalError)"
    assert sql_report.error_reason == "source_error" and not sql_report.ok
    assert sql_report.watermark_before == sql_report.watermark_after == T
    assert catalog.get_watermark("kyc") == T
    assert (file_report.kind, file_report.added, file_report.rejected) == ("file", 1, 1)
    assert file_report.rejections == ((2, "line is not valid JSON"),)
    assert [e["event"] for e in logs] == ["source_failed", "source_synced"]
    assert str(kyc.path) not in repr(logs)
    catalog.close()


def test_missing_file_is_a_source_error(tmp_path, kyc, clock):
    """A file source whose file is missing is reported, not raised."""
    missing = {"kind": "file", "name": "ledger", "path": str(tmp_path / "nope.csv")}
    settings = _settings(tmp_path, kyc.url, extra_sources=(missing,))
    catalog = open_catalog(settings)
    (report,) = sync_sources(settings, catalog, only="ledger", clock=clock)
    assert report.error is not None and "cannot read" in report.error
    catalog.close()


def test_watermark_never_moves_past_now(kyc, settings, catalog, clock):
    """A row stamped in the future cannot push the watermark beyond the current time."""
    kyc.put(_id(1), updated_at=datetime(2099, 1, 1, tzinfo=UTC))
    (report,) = sync_sources(settings, catalog, clock=clock)
    assert report.watermark_after == NOW
    (again,) = sync_sources(settings, catalog, clock=clock)
    assert again.read == 1  # the future row is re-read (harmlessly) until its time comes


def test_sync_in_small_chunks_gives_the_same_result(kyc, settings, catalog, clock):
    """Upserting chunk by chunk counts every row once and stores the overall largest watermark."""
    for n in range(7):
        kyc.put(_id(n), updated_at=T - timedelta(minutes=n))
    (report,) = sync_sources(settings, catalog, clock=clock, chunk_rows=3)
    assert (report.read, report.added) == (7, 7)
    assert report.watermark_after == T


def test_only_syncs_the_named_source(kyc, settings, catalog, clock):
    """only= limits the sync to one source; an unknown name is a configuration error."""
    kyc.put(_id(1), updated_at=T)
    assert [r.name for r in sync_sources(settings, catalog, only="kyc", clock=clock)] == ["kyc"]
    with pytest.raises(ConfigError, match="no source named 'other' \\(known: kyc\\)"):
        sync_sources(settings, catalog, only="other", clock=clock)


def test_pool_shares_one_source_per_name(settings):
    """The pool opens each sql source once and hands the same one to sync and look-ups."""
    with SourcePool(settings) as pool:
        assert pool.sql("kyc") is pool.sql("kyc")
