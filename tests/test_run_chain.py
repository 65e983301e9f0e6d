"""The run-manifest chain: each run stores its manifest, then moves the chain's head
in the catalog with a compare-and-set, holding no catalog transaction while it talks
to the store. A run killed in between is chained after by the next run, not forked;
runs of one chain that end together sort out which follows which. On SQLite and on
a real PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from archiver import config as config_mod
from archiver.app import CHAIN_ATTEMPTS, Runtime, chain_id, open_catalog, write_run_manifest
from archiver.catalog.sql import CHAIN_LOCK_KEY
from archiver.clock import ManualClock
from archiver.core.format import Layout
from archiver.core.images import sha256_hex
from archiver.core.signing import Signer
from archiver.errors import CatalogError
from archiver.results import RunSummary
from archiver.store import ObjectInfo, PutResult
from archiver.store.memory import MemoryStore
from archiver.verify import VerifyScope, run_verify

T0 = datetime(2026, 11, 26, 23, 50, tzinfo=UTC)


class Killed(Exception):
    """Stands for the process dying: nothing after it runs."""


class HookedStore(MemoryStore):
    """The memory store, calling ``on(event, key)`` before each put (``put``), after it
    (``stored``), and before each head, get and list (the prefix for a list)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.on: Callable[[str, str], None] = _nothing

    def put(self, key: str, data: bytes, **kwargs: Any) -> PutResult:
        self.on("put", key)
        result = super().put(key, data, **kwargs)
        self.on("stored", key)
        return result

    def head(self, key: str, **kwargs: Any) -> ObjectInfo | None:
        self.on("head", key)
        return super().head(key, **kwargs)

    def get(self, key: str, **kwargs: Any) -> bytes:
        self.on("get", key)
        return super().get(key, **kwargs)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self.on("list", prefix)
        return super().list(prefix)


def _nothing(event: str, key: str) -> None:
    pass


def _once(rt: Runtime, event: str, key: str, action: Callable[[], object]) -> None:
    """Run ``action`` (another run) the first time ``event`` happens to ``key``."""
    store = rt.store
    assert isinstance(store, HookedStore)

    def on(e: str, k: str) -> None:
        if (e, k) == (event, key):
            store.on = _nothing
            action()

    store.on = on


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def rt(tmp_path: Path, catalog_url: str) -> Iterator[Runtime]:
    cfg = tmp_path / "archiver.toml"
    cfg.write_text(
        f"""[storage]
bucket = "archive-bucket"
prefix = "archive"
kms_key_id = "archive-key"

[catalog]
url = "{catalog_url}"
"""
    )
    settings = config_mod.load(cfg, environ={})
    clock = ManualClock(T0)
    catalog = open_catalog(settings)
    store = HookedStore(sse="aws:kms", kms_key_id="archive-key", clock=clock)
    yield Runtime(settings, catalog, store, clock)
    catalog.close()


@pytest.fixture
def other(rt: Runtime) -> Iterator[Runtime]:
    """Another process extending the same chain: its own catalog connections, the same
    bucket and clock."""
    catalog = open_catalog(rt.settings)
    yield Runtime(rt.settings, catalog, rt.store, rt.clock)
    catalog.close()


def _summary(rt: Runtime, n: int) -> RunSummary:
    started = rt.clock.now()
    return RunSummary(
        run_id=f"{started:%Y%m%dT%H%M%SZ}-run{n:04d}",
        started_at=started,
        finished_at=started + timedelta(minutes=1),
    )


def _doc(rt: Runtime, key: str) -> dict[str, object]:
    doc = orjson.loads(rt.store.get(key))
    assert isinstance(doc, dict)
    return doc


def _killed_after_storing(rt: Runtime) -> Callable[[], None]:
    """Make the next run die after its manifest is stored, before the head moves (the
    catalog's compare-and-set never happens, as for a dead process)."""
    real = rt.catalog.chain_move

    def move(*args: object) -> bool:
        raise Killed()

    rt.catalog.chain_move = move  # type: ignore[method-assign]

    def restore() -> None:
        rt.catalog.chain_move = real  # type: ignore[method-assign]

    return restore


def _advance(rt: Runtime, delta: timedelta) -> None:
    assert isinstance(rt.clock, ManualClock)
    rt.clock.advance(delta)


def test_a_run_killed_before_the_head_moved_is_chained_not_forked(rt: Runtime) -> None:
    signer = Signer.generate()
    first, _ = write_run_manifest(rt, signer, _summary(rt, 1))

    _advance(rt, timedelta(minutes=5))
    restore = _killed_after_storing(rt)
    with pytest.raises(Killed):
        write_run_manifest(rt, signer, _summary(rt, 2))
    restore()
    orphan = Layout("archive").run(_summary(rt, 2).run_id, _summary(rt, 2).started_at)
    assert rt.store.head(orphan) is not None  # stored ...
    assert rt.catalog.chain_head(chain_id(rt.settings))[0] == first  # ... but not the head

    # the next run starts after midnight: the orphan is in the previous day's folder
    _advance(rt, timedelta(minutes=30))
    third, third_sha = write_run_manifest(rt, signer, _summary(rt, 3))

    assert _doc(rt, third)["previous"]["key"] == orphan  # type: ignore[index]
    assert _doc(rt, orphan)["previous"]["key"] == first  # type: ignore[index]
    assert rt.catalog.chain_head(chain_id(rt.settings)) == (third, third_sha)
    report = run_verify(
        rt.store, Layout("archive"), [signer.verifier], VerifyScope(everything=True)
    )
    assert report.run_manifests_checked == 3
    assert not [f for f in report.findings if f.kind.startswith("chain")], report.to_json()


def test_another_chains_newer_manifest_is_not_adopted(rt: Runtime) -> None:
    """A manifest of another chain (another worker id) stored after the head, even one
    naming the same previous, is left alone: only this chain's successor is adopted."""
    signer = Signer.generate()
    first, first_sha = write_run_manifest(rt, signer, _summary(rt, 1))
    _advance(rt, timedelta(minutes=1))
    other = dict(_doc(rt, first))
    other["chain_id"] = "worker-b"
    other["run_id"] = "20261126T235100Z-other"
    other["previous"] = {"key": first, "sha256": first_sha}
    data = orjson.dumps(other, option=orjson.OPT_SORT_KEYS)
    other_key = Layout("archive").run(other["run_id"], rt.clock.now())  # type: ignore[arg-type]
    rt.store.put(other_key, data, sha256=sha256_hex(data), content_type="application/json")

    _advance(rt, timedelta(minutes=1))
    second, _ = write_run_manifest(rt, signer, _summary(rt, 2))

    assert _doc(rt, second)["previous"]["key"] == first  # type: ignore[index]


# -- no catalog transaction across the store's calls ------------------------------------


def _chain_lock_is_free(url: str) -> bool:
    """Whether another connection can take the catalog's chain lock right now, without
    waiting: SQLite's write lock (``BEGIN IMMEDIATE``), PostgreSQL's advisory lock."""
    if url.startswith("sqlite"):
        database = sa.make_url(url).database
        assert database
        conn = sqlite3.connect(database, timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:  # database is locked
            return False
        finally:
            conn.close()
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            query = sa.select(sa.func.pg_try_advisory_xact_lock(CHAIN_LOCK_KEY))
            return bool(conn.execute(query).scalar())
    finally:
        engine.dispose()


def test_no_catalog_lock_is_held_while_the_run_manifest_is_stored(
    rt: Runtime, catalog_url: str
) -> None:
    """Every store call of a run-manifest write (the look for an orphan, the puts of the
    signature and the manifest) happens while another connection can take the chain
    lock at once: the head moves afterwards, in a short transaction of its own. (The
    lock used to be held across the S3 round trips: on SQLite that is the database's
    write lock, which every other writer waits for.)"""
    signer = Signer.generate()
    probes: list[tuple[str, str, bool]] = []
    assert isinstance(rt.store, HookedStore)
    rt.store.on = lambda event, key: probes.append((event, key, _chain_lock_is_free(catalog_url)))
    first, _ = write_run_manifest(rt, signer, _summary(rt, 1))
    _advance(rt, timedelta(minutes=1))
    second, _ = write_run_manifest(rt, signer, _summary(rt, 2))
    rt.store.on = _nothing

    puts = [key for event, key, _ in probes if event == "put"]
    assert puts == [first + ".sig", first, second + ".sig", second]
    assert {"head", "list"} <= {event for event, _, _ in probes}  # the second looked for orphans
    assert [p for p in probes if not p[2]] == []
    assert rt.catalog.chain_head(chain_id(rt.settings))[0] == second


# -- runs of one chain that end together ------------------------------------------------


def _key(rt: Runtime, n: int) -> str:
    summary = _summary(rt, n)
    return Layout("archive").run(summary.run_id, summary.started_at)


def _chain(rt: Runtime) -> list[str]:
    """The chain's run manifests from its start to the head, along the previous links."""
    head = rt.catalog.chain_head(chain_id(rt.settings))
    keys = []
    key = head[0] if head else None
    while key is not None:
        keys.append(key)
        previous = _doc(rt, key)["previous"]
        key = previous["key"] if previous else None  # type: ignore[index]
    return keys[::-1]


def _assert_verified(rt: Runtime, signer: Signer, runs: int) -> None:
    """verify finds every run manifest signed, linked by SHA-256, and no fork."""
    report = run_verify(
        rt.store, Layout("archive"), [signer.verifier], VerifyScope(everything=True)
    )
    assert report.run_manifests_checked == runs
    assert report.findings == [], report.to_json()


def _chain_events(logs: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in logs if e["event"].startswith("run_")]


def test_a_run_that_lost_the_race_stores_its_manifest_again_after_the_winner(
    rt: Runtime, other: Runtime
) -> None:
    """B ends while A is storing its manifest: both name the head as previous, B moves
    the head first. A's compare-and-set fails; A stores a new version of its manifest,
    following B's, and moves the head to it. One chain, no fork."""
    signer = Signer.generate()
    first, _ = write_run_manifest(rt, signer, _summary(rt, 1))
    _advance(rt, timedelta(minutes=1))
    a_key, b_key = _key(rt, 2), _key(rt, 3)
    _once(rt, "put", a_key, lambda: write_run_manifest(other, signer, _summary(other, 3)))
    with capture_logs() as logs:
        a = write_run_manifest(rt, signer, _summary(rt, 2))

    assert _chain(rt) == [first, b_key, a_key]
    assert (
        rt.catalog.chain_head(chain_id(rt.settings))
        == a
        == (a_key, sha256_hex(rt.store.get(a_key)))
    )
    assert _chain_events(logs) == ["run_chain_head_moved", "run_manifest_rechained"]
    assert isinstance(rt.store, MemoryStore)
    assert rt.store.versions_per_key(a_key) == {a_key: 2, a_key + ".sig": 2}
    _assert_verified(rt, signer, 3)


def test_a_run_another_chained_after_is_left_where_it_is(rt: Runtime, other: Runtime) -> None:
    """A has stored its manifest and not yet moved the head when B ends: B finds A's
    manifest, chains after it and moves the head past it. A's compare-and-set fails;
    A finds its manifest behind the head and is done, rewriting nothing."""
    signer = Signer.generate()
    first, _ = write_run_manifest(rt, signer, _summary(rt, 1))
    _advance(rt, timedelta(minutes=1))
    a_key, b_key = _key(rt, 2), _key(rt, 3)
    b: list[tuple[str, str]] = []
    _once(
        rt, "stored", a_key, lambda: b.append(write_run_manifest(other, signer, _summary(other, 3)))
    )
    with capture_logs() as logs:
        a = write_run_manifest(rt, signer, _summary(rt, 2))

    assert _chain(rt) == [first, a_key, b_key]
    assert a == (a_key, sha256_hex(rt.store.get(a_key)))
    assert rt.catalog.chain_head(chain_id(rt.settings)) == b[0]
    assert _chain_events(logs) == ["run_manifest_adopted", "run_chain_head_moved"]
    assert isinstance(rt.store, MemoryStore)
    assert rt.store.versions_per_key(a_key) == {a_key: 1, a_key + ".sig": 1}
    _assert_verified(rt, signer, 3)


def test_a_run_that_chained_after_a_newer_head_moves_the_head_on(
    rt: Runtime, other: Runtime
) -> None:
    """B is looking for orphans when A ends (stores and moves the head): B finds A's
    manifest and chains after it, but its compare-and-set (from the head it read) fails.
    B reads the new head, A's, finds its own manifest following it, and moves the head
    to it without storing anything again."""
    signer = Signer.generate()
    first, _ = write_run_manifest(rt, signer, _summary(rt, 1))
    _advance(rt, timedelta(minutes=1))
    a_key, b_key = _key(rt, 2), _key(rt, 3)
    _once(
        other,
        "list",
        f"archive/runs/{T0 - timedelta(days=2):%Y/%m/%d}/",
        lambda: write_run_manifest(rt, signer, _summary(rt, 2)),
    )
    with capture_logs() as logs:
        b = write_run_manifest(other, signer, _summary(other, 3))

    assert _chain(rt) == [first, a_key, b_key]
    assert rt.catalog.chain_head(chain_id(rt.settings)) == b
    assert _chain_events(logs) == ["run_manifest_adopted", "run_chain_head_moved"]
    assert isinstance(rt.store, MemoryStore)
    assert rt.store.versions_per_key(b_key) == {b_key: 1, b_key + ".sig": 1}
    _assert_verified(rt, signer, 3)


def test_a_run_that_keeps_losing_the_race_gives_up_with_a_catalog_error(
    rt: Runtime, other: Runtime
) -> None:
    """If another run moves the head before each of A's compare-and-sets, A gives up
    after CHAIN_ATTEMPTS tries with a CatalogError that names the chain and the run
    manifest (which is stored, off the chain: verify reports the fork)."""
    signer = Signer.generate()
    write_run_manifest(rt, signer, _summary(rt, 1))
    _advance(rt, timedelta(minutes=1))
    a_key = _key(rt, 2)
    others = iter(range(3, 3 + CHAIN_ATTEMPTS))
    assert isinstance(rt.store, HookedStore)

    def on(event: str, key: str) -> None:
        if (event, key) == ("put", a_key):
            write_run_manifest(other, signer, _summary(other, next(others)))

    rt.store.on = on
    with pytest.raises(CatalogError) as info:
        write_run_manifest(rt, signer, _summary(rt, 2))
    rt.store.on = _nothing

    assert next(others, None) is None  # a run ended before each of A's tries
    assert f"run chain main: other runs moved its head {CHAIN_ATTEMPTS} times" in str(info.value)
    assert a_key in str(info.value)
    assert a_key not in _chain(rt) and len(_chain(rt)) == 1 + CHAIN_ATTEMPTS
    report = run_verify(
        rt.store, Layout("archive"), [signer.verifier], VerifyScope(everything=True)
    )
    assert [f.kind for f in report.findings] == ["chain_fork"]


# -- only run manifests signed by a trusted key are adopted ------------------------------


def _orphan(rt: Runtime, signer: Signer, n: int) -> str:
    """Run ``n`` dies after storing its manifest (signed by ``signer``): an orphan."""
    restore = _killed_after_storing(rt)
    with pytest.raises(Killed):
        write_run_manifest(rt, signer, _summary(rt, n))
    restore()
    return _key(rt, n)


def _trusting(rt: Runtime, *keys: Path) -> Runtime:
    signing = rt.settings.signing.model_copy(update={"public_key_files": keys})
    return Runtime(
        rt.settings.model_copy(update={"signing": signing}), rt.catalog, rt.store, rt.clock
    )


@pytest.mark.parametrize("listed", [True, False])
def test_an_orphan_signed_by_a_rotated_key_is_adopted_only_if_listed(
    rt: Runtime, tmp_path: Path, listed: bool
) -> None:
    """After a key rotation, the next run (new key) adopts an orphan signed by the old
    key when signing.public_key_files lists the old public key; when it does not, the
    orphan is passed over, logged with its reason, and the run follows the head."""
    old, new = Signer.generate(), Signer.generate()
    first, _ = write_run_manifest(rt, old, _summary(rt, 1))
    _advance(rt, timedelta(minutes=1))
    orphan = _orphan(rt, old, 2)
    _advance(rt, timedelta(minutes=1))
    pub = tmp_path / "old.pub.pem"
    pub.write_bytes(old.verifier.public_pem())

    with capture_logs() as logs:
        third, _ = write_run_manifest(_trusting(rt, pub) if listed else rt, new, _summary(rt, 3))

    refused = [(e["key"], e["reason"]) for e in logs if e["event"] == "run_manifest_not_adopted"]
    if listed:
        assert _doc(rt, third)["previous"]["key"] == orphan  # type: ignore[index]
        assert refused == []
    else:
        assert _doc(rt, third)["previous"]["key"] == first  # type: ignore[index]
        assert refused == [(orphan, "bad_signature")]


def test_a_signed_object_that_is_no_run_manifest_is_not_adopted(rt: Runtime) -> None:
    """An object under runs/ that names the head as previous and carries a good
    signature, but is not a run manifest of the published schema, is passed over
    (invalid_run_manifest)."""
    signer = Signer.generate()
    first, first_sha = write_run_manifest(rt, signer, _summary(rt, 1))
    _advance(rt, timedelta(minutes=1))
    odd = {"chain_id": "main", "previous": {"key": first, "sha256": first_sha}}
    data = orjson.dumps(odd)
    key = _key(rt, 2)
    sig = signer.sign(data)
    rt.store.put(key + ".sig", sig, sha256=sha256_hex(sig), content_type="application/octet-stream")
    rt.store.put(key, data, sha256=sha256_hex(data), content_type="application/json")
    _advance(rt, timedelta(minutes=1))
    with capture_logs() as logs:
        second, _ = write_run_manifest(rt, signer, _summary(rt, 3))
    assert _doc(rt, second)["previous"]["key"] == first  # type: ignore[index]
    assert [(e["key"], e["reason"]) for e in logs if e["event"] == "run_manifest_not_adopted"] == [
        (key, "invalid_run_manifest")
    ]
