"""The ObjectStore contract, run against MemoryStore and against S3Store on SeaweedFS.

Each backend comes with a back door that writes around the store (as another writer
could: unconditionally, without a checksum, or unencrypted), one that deletes a key
around it, a count of the versions each key holds (the number of writes that
happened), and a way to open another store on the same bucket.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import pytest

from archiver.config import StorageSettings
from archiver.errors import (
    EncryptionRefused,
    ObjectConflict,
    ObjectNotFound,
    StoreAccessDenied,
    StoreError,
    StoreUnavailable,
)
from archiver.sandbox.seaweedfs import SeaweedFS
from archiver.store import ObjectStore, PutResult
from archiver.store.memory import MemoryStore
from archiver.store.s3 import S3Store

Sse = Literal["aws:kms", "AES256"]
JPEG = "image/jpeg"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Backend:
    store: ObjectStore
    make: Callable[[Sse], ObjectStore]  # another store on the same bucket, other encryption
    versions: Callable[[str], int]
    backdoor_put: Callable[[str, bytes, bool], str]  # (key, data, encrypted) -> version id
    backdoor_delete: Callable[[str], None]  # delete the key (S3: a delete marker over it)
    reopen: Callable[[], ObjectStore]  # another store on the same bucket


@pytest.fixture(params=["memory", pytest.param("s3", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        memory = MemoryStore(sse="aws:kms", kms_key_id="archive-key")
        yield Backend(
            store=memory,
            make=lambda sse: MemoryStore(sse=sse, kms_key_id="archive-key"),
            versions=lambda key: memory.versions_per_key(key).get(key, 0),
            backdoor_put=lambda key, data, encrypted: memory.backdoor_put(
                key, data, checksum=False, encrypted=encrypted
            ),
            backdoor_delete=memory.delete_marker,
            reopen=lambda: memory,  # its dict is the bucket: the same store is the only other
        )
        return
    seaweedfs: SeaweedFS = request.getfixturevalue("seaweedfs")
    settings: StorageSettings = request.getfixturevalue("s3_settings")
    stores: list[S3Store] = []

    def make(sse: Sse) -> S3Store:
        changed = settings.model_copy(update={"sse": sse})
        stores.append(S3Store(changed, credentials=seaweedfs.credentials))
        return stores[-1]

    def backdoor_put(key: str, data: bytes, encrypted: bool) -> str:
        extra = {"ServerSideEncryption": "AES256"} if encrypted else {}
        resp = seaweedfs.client().put_object(
            Bucket=settings.bucket,
            Key=key,
            Body=data,
            **extra,  # type: ignore[arg-type]
        )
        return resp["VersionId"]

    yield Backend(
        store=make("aws:kms"),
        make=make,
        versions=lambda key: seaweedfs.versions_per_key(settings.bucket, key).get(key, 0),
        backdoor_put=backdoor_put,
        backdoor_delete=lambda key: seaweedfs.client().delete_object(
            Bucket=settings.bucket, Key=key
        ),
        reopen=lambda: make("aws:kms"),
    )
    for store in stores:
        store.close()


def test_put_then_head_and_get_return_the_bytes_and_sha256(backend: Backend) -> None:
    """A new key is written once, and head and get give back its size, SHA-256 and bytes."""
    data = b"\xff\xd8 first image \xff\xd9" * 100
    result = backend.store.put(
        "test/passes/p1/images/front.jpg", data, sha256=sha(data), content_type=JPEG
    )

    assert result == PutResult(
        key="test/passes/p1/images/front.jpg",
        size=len(data),
        sha256=sha(data),
        version_id=result.version_id,
        reused=False,
    )
    assert result.version_id
    info = backend.store.head("test/passes/p1/images/front.jpg")
    assert info is not None
    assert (info.key, info.size, info.sha256) == (result.key, len(data), sha(data))
    assert info.version_id == result.version_id
    assert info.content_type == JPEG
    assert info.last_modified is not None and info.last_modified.utcoffset() is not None
    assert backend.store.get("test/passes/p1/images/front.jpg") == data
    assert backend.versions("test/passes/p1/images/front.jpg") == 1


@pytest.mark.parametrize("sse", ["aws:kms", "AES256"])
def test_head_shows_the_configured_server_side_encryption(backend: Backend, sse: Sse) -> None:
    """Every write is encrypted as configured: aws:kms with its key id, or AES256."""
    store = backend.make(sse)
    data = f"encrypted with {sse}".encode()
    store.put(f"test/{sse}.json", data, sha256=sha(data), content_type="application/json")

    info = store.head(f"test/{sse}.json")
    assert info is not None
    assert info.encryption == sse
    assert info.kms_key_id == ("archive-key" if sse == "aws:kms" else None)
    assert store.get(f"test/{sse}.json") == data


def test_second_put_of_the_same_bytes_is_reused_without_a_new_version(backend: Backend) -> None:
    """Putting the same bytes again writes nothing and returns the existing version."""
    data = b"record" * 50
    first = backend.store.put("test/record.json", data, sha256=sha(data), content_type=JPEG)
    again = backend.store.put("test/record.json", data, sha256=sha(data), content_type=JPEG)

    assert again.reused and not first.reused
    assert (again.version_id, again.sha256, again.size) == (first.version_id, sha(data), len(data))
    assert backend.versions("test/record.json") == 1


def test_put_of_different_bytes_conflicts_and_leaves_the_original(backend: Backend) -> None:
    """Other bytes under an existing key raise ObjectConflict with both hashes; nothing changes."""
    original, other = b"original bytes", b"other bytes"
    first = backend.store.put("test/m.json", original, sha256=sha(original), content_type=JPEG)

    with pytest.raises(ObjectConflict) as caught:
        backend.store.put("test/m.json", other, sha256=sha(other), content_type=JPEG)

    assert caught.value.key == "test/m.json"
    assert caught.value.existing_sha256 == sha(original)
    assert caught.value.new_sha256 == sha(other)
    assert backend.store.get("test/m.json") == original
    info = backend.store.head("test/m.json")
    assert info is not None and info.version_id == first.version_id
    assert backend.versions("test/m.json") == 1


def test_head_of_a_missing_key_is_none(backend: Backend) -> None:
    """head answers None for a key that was never written."""
    assert backend.store.head("test/nothing/here") is None


def test_get_of_a_missing_key_raises_object_not_found_with_the_key(backend: Backend) -> None:
    """get of a key that was never written raises ObjectNotFound (a StoreError, not
    retryable, not systemic) naming the key."""
    with pytest.raises(ObjectNotFound) as caught:
        backend.store.get("test/nothing/here")

    assert isinstance(caught.value, StoreError)
    assert caught.value.key == "test/nothing/here"
    assert not caught.value.retryable and not caught.value.systemic
    assert "test/nothing/here" in str(caught.value)


def test_a_missing_version_of_an_existing_key_is_not_found(backend: Backend) -> None:
    """A version id the key does not hold (here: another key's): head None, get
    ObjectNotFound; the key's own version still reads."""
    data, other = b"the key's own bytes", b"another key"
    own = backend.store.put("test/versioned.json", data, sha256=sha(data), content_type=JPEG)
    elsewhere = backend.store.put("test/other.json", other, sha256=sha(other), content_type=JPEG)

    assert backend.store.head("test/versioned.json", version_id=elsewhere.version_id) is None
    with pytest.raises(ObjectNotFound) as caught:
        backend.store.get("test/versioned.json", version_id=elsewhere.version_id)

    assert caught.value.key == "test/versioned.json"
    assert backend.store.get("test/versioned.json", version_id=own.version_id) == data


def test_a_deleted_key_is_not_found(backend: Backend) -> None:
    """A key deleted around the store (in S3: a delete marker over its versions): head
    None, get ObjectNotFound."""
    data = b"deleted by someone else"
    backend.store.put("test/deleted.json", data, sha256=sha(data), content_type=JPEG)
    backend.backdoor_delete("test/deleted.json")

    assert backend.store.head("test/deleted.json") is None
    with pytest.raises(ObjectNotFound):
        backend.store.get("test/deleted.json")


def test_close_may_be_called_twice_and_what_was_stored_stays(backend: Backend) -> None:
    """close() releases the store; a second close() is harmless, and what was written
    before reads back through another store on the same bucket."""
    data = b"written before close"
    backend.store.put("test/kept.json", data, sha256=sha(data), content_type=JPEG)

    backend.store.close()
    backend.store.close()

    assert backend.reopen().get("test/kept.json") == data


def test_list_yields_the_objects_under_a_prefix_in_key_order(backend: Backend) -> None:
    """list gives every object under the prefix, sorted by key, with sizes; nothing else."""
    objects = {
        "test/passes/b/manifest.json": b"bb",
        "test/passes/a/images/front.jpg": b"a-front",
        "test/passes/a/manifest.json": b"a-manifest",
        "test/passesX/not-under-the-prefix": b"x",
        "test/runs/2026/01/01/r.json": b"run",
    }
    for key, data in objects.items():
        backend.store.put(key, data, sha256=sha(data), content_type=JPEG)

    listed = list(backend.store.list("test/passes/"))

    assert [(o.key, o.size) for o in listed] == [
        ("test/passes/a/images/front.jpg", 7),
        ("test/passes/a/manifest.json", 10),
        ("test/passes/b/manifest.json", 2),
    ]
    assert all(o.last_modified is not None for o in listed)
    assert list(backend.store.list("test/none/")) == []


def test_list_versions_shows_what_a_delete_marker_hides(backend: Backend) -> None:
    """A key deleted without a version id (a delete marker, which Object Lock allows)
    is gone from list, but list_versions still shows its version, under a marker that
    is the latest entry; an untouched key shows its one version, latest."""
    kept, hidden = b"kept", b"hidden"
    backend.store.put("test/v/kept.json", kept, sha256=sha(kept), content_type=JPEG)
    put = backend.store.put("test/v/hidden.json", hidden, sha256=sha(hidden), content_type=JPEG)
    backend.backdoor_delete("test/v/hidden.json")

    assert [o.key for o in backend.store.list("test/v/")] == ["test/v/kept.json"]
    versions = list(backend.store.list_versions("test/v/"))
    by_key = {
        key: sorted((v.delete_marker, v.is_latest, v.version_id) for v in versions if v.key == key)
        for key in {v.key for v in versions}
    }
    assert set(by_key) == {"test/v/kept.json", "test/v/hidden.json"}
    [(kept_marker, kept_latest, _)] = by_key["test/v/kept.json"]
    assert (kept_marker, kept_latest) == (False, True)
    [(v_marker, v_latest, v_id), (m_marker, m_latest, _)] = by_key["test/v/hidden.json"]
    assert (v_marker, v_latest, v_id) == (False, False, put.version_id)
    assert (m_marker, m_latest) == (True, True)
    assert [v.key for v in versions] == sorted(v.key for v in versions)
    assert list(backend.store.list_versions("test/none/")) == []


def test_a_put_over_a_delete_marker_writes_a_new_version(backend: Backend) -> None:
    """A key whose latest entry is a delete marker is free again: put writes."""
    data = b"written again"
    backend.store.put("test/again.json", data, sha256=sha(data), content_type=JPEG)
    backend.backdoor_delete("test/again.json")
    again = backend.store.put("test/again.json", data, sha256=sha(data), content_type=JPEG)
    assert not again.reused
    assert backend.store.get("test/again.json") == data


def test_a_wrong_sha256_is_refused_and_nothing_is_stored(backend: Backend) -> None:
    """A put whose SHA-256 does not match the bytes is refused (BadDigest: retryable)."""
    with pytest.raises(StoreUnavailable) as caught:
        backend.store.put("test/bad.jpg", b"the bytes", sha256=sha(b"other"), content_type=JPEG)

    assert caught.value.key == "test/bad.jpg"
    assert "BadDigest" in str(caught.value)
    assert backend.store.head("test/bad.jpg") is None


def test_an_existing_object_without_checksum_is_hashed_to_decide(backend: Backend) -> None:
    """When the stored object has no checksum, its bytes are read to tell reuse from conflict."""
    data = b"written by someone else, without a checksum"
    version = backend.backdoor_put("test/foreign.jpg", data, True)

    reused = backend.store.put("test/foreign.jpg", data, sha256=sha(data), content_type=JPEG)
    with pytest.raises(ObjectConflict) as caught:
        backend.store.put("test/foreign.jpg", b"mine", sha256=sha(b"mine"), content_type=JPEG)

    assert reused.reused and reused.version_id == version
    assert caught.value.existing_sha256 == sha(data)
    assert backend.versions("test/foreign.jpg") == 1


def test_an_existing_unencrypted_copy_of_our_bytes_is_not_reused(backend: Backend) -> None:
    """Our bytes already stored unencrypted are refused with EncryptionRefused, not reused."""
    data = b"stored in the clear by someone else"
    backend.backdoor_put("test/clear.jpg", data, False)

    with pytest.raises(EncryptionRefused) as caught:
        backend.store.put("test/clear.jpg", data, sha256=sha(data), content_type=JPEG)

    assert caught.value.key == "test/clear.jpg"


def test_an_older_version_stays_readable_by_its_version_id(backend: Backend) -> None:
    """head and get with a version id return that version, not the latest."""
    data = b"first version"
    first = backend.store.put("test/v.json", data, sha256=sha(data), content_type=JPEG)
    backend.backdoor_put("test/v.json", b"overwritten around the store", True)

    assert backend.store.get("test/v.json", version_id=first.version_id) == data
    info = backend.store.head("test/v.json", version_id=first.version_id)
    assert info is not None and info.sha256 == sha(data)
    assert backend.versions("test/v.json") == 2


def test_concurrent_puts_of_one_key_write_it_exactly_once(backend: Backend) -> None:
    """From many threads at once, one put writes; the same bytes are reused, others conflict."""
    same, results, conflicts = b"same bytes for everyone", [], []
    lock = threading.Lock()

    def put(i: int) -> None:
        data = same if i % 2 else f"other bytes {i}".encode()
        try:
            result = backend.store.put("test/race.jpg", data, sha256=sha(data), content_type=JPEG)
        except ObjectConflict as exc:
            with lock:
                conflicts.append(exc)
        else:
            with lock:
                results.append(result)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert backend.versions("test/race.jpg") == 1
    assert sum(not r.reused for r in results) == 1
    assert len(results) + len(conflicts) == 12
    assert len({r.version_id for r in results}) == 1


def test_put_async_from_an_event_loop_has_the_outcomes_of_put(backend: Backend) -> None:
    """put_async (the pipeline's way in): concurrent puts of one key from one event loop
    write it once and reuse it; other bytes then conflict, a wrong SHA-256 is refused,
    and what was written reads back with its SHA-256."""
    same, other = b"async bytes" * 100, b"other async bytes"
    store = backend.store

    async def offload(fn: Callable[..., object], *args: object, **kwargs: object) -> object:
        return await asyncio.to_thread(fn, *args, **kwargs)

    def put(key: str, data: bytes, digest: str) -> Awaitable[PutResult]:
        return store.put_async(key, data, sha256=digest, content_type=JPEG, offload=offload)

    async def scenario() -> tuple[list[PutResult], BaseException | None, BaseException | None]:
        racing = await asyncio.gather(*(put("test/async.jpg", same, sha(same)) for _ in range(4)))
        conflict = refused = None
        try:
            await put("test/async.jpg", other, sha(other))
        except ObjectConflict as exc:
            conflict = exc
        try:
            await put("test/bad.jpg", same, sha(other))
        except StoreError as exc:
            refused = exc
        return racing, conflict, refused

    racing, conflict, refused = asyncio.run(scenario())

    assert sum(not r.reused for r in racing) == 1
    assert len({r.version_id for r in racing}) == 1
    assert isinstance(conflict, ObjectConflict) and conflict.existing_sha256 == sha(same)
    assert refused is not None and not isinstance(refused, ObjectConflict)
    assert backend.versions("test/async.jpg") == 1 and backend.versions("test/bad.jpg") == 0
    assert store.get("test/async.jpg") == same
    info = store.head("test/async.jpg")
    assert info is not None and info.sha256 == sha(same)


# --- S3 only: credentials and the network ----------------------------------------------


def test_the_s3_store_offers_the_contract_and_nothing_more() -> None:
    """Bucket-level operations (settings, deleting) are not on the archive store: they
    are doctor's, in archiver.store.bucket."""
    methods = {n for n in dir(S3Store) if not n.startswith("_") and callable(getattr(S3Store, n))}
    assert methods == {"put", "put_async", "head", "get", "list", "list_versions", "close"}
    assert {n for n in dir(ObjectStore) if not n.startswith("_")} == methods


def _connections_to(port: int) -> int:
    """How many TCP sockets this process holds open to ``port`` on any host (Linux)."""
    ours = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed since it was listed
            continue
        if link.startswith("socket:["):
            ours.add(link.removeprefix("socket:[").removesuffix("]"))
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table, encoding="ascii") as rows:
            next(rows)  # the header
            for row in rows:
                fields = row.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                count += remote_port == port and fields[9] in ours
    return count


@pytest.mark.parametrize("put_client", ["crt", "botocore"])
def test_close_releases_the_connections(
    seaweedfs: SeaweedFS, s3_settings: StorageSettings, put_client: str
) -> None:
    """After close() the store holds no connection to the server: neither botocore's
    pool (HEAD, GET, LIST) nor the CRT client's (puts)."""
    port = seaweedfs.ports["s3"]
    before = _connections_to(port)
    settings = s3_settings.model_copy(update={"put_client": put_client})
    store = S3Store(settings, credentials=seaweedfs.credentials)
    data = b"x" * 100
    try:
        store.put("test/close.json", data, sha256=sha(data), content_type=JPEG)
        assert store.get("test/close.json") == data and list(store.list("test/"))
        assert _connections_to(port) > before
    finally:
        store.close()
    deadline = time.monotonic() + 10  # the CRT closes its connections on its own threads
    while _connections_to(port) > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _connections_to(port) == before


def test_wrong_credentials_are_access_denied(
    seaweedfs: SeaweedFS, s3_settings: StorageSettings
) -> None:
    """A wrong secret or an unknown access key makes every call raise StoreAccessDenied;
    never ObjectNotFound, though the key asked for does not exist: a store that refused
    to answer has said nothing about the key."""
    data = b"x"
    for credentials in [(seaweedfs.access_key, "wrong-secret"), ("unknown-key", "whatever")]:
        with S3Store(s3_settings, credentials=credentials, max_attempts=1) as store:
            calls: list[Callable[[], object]] = [
                lambda: store.put("test/k", data, sha256=sha(data), content_type=JPEG),
                lambda: store.head("test/k"),
                lambda: store.get("test/k"),
                lambda: list(store.list("test/")),
            ]
            for call in calls:
                with pytest.raises(StoreAccessDenied) as caught:
                    call()
                assert caught.value.systemic and not caught.value.retryable


def test_a_missing_bucket_is_a_systemic_error(
    seaweedfs: SeaweedFS, s3_settings: StorageSettings
) -> None:
    """A bucket that does not exist raises StoreAccessDenied (tests/store/test_bucket.py:
    the bucket inspector's check() says so up front)."""
    settings = s3_settings.model_copy(update={"bucket": "no-such-bucket-here"})
    data = b"x"
    with S3Store(settings, credentials=seaweedfs.credentials, max_attempts=1) as store:
        with pytest.raises(StoreAccessDenied, match="NoSuchBucket"):
            store.put("test/k", data, sha256=sha(data), content_type=JPEG)
        with pytest.raises(StoreAccessDenied, match="NoSuchBucket"):
            list(store.list("test/"))


def test_an_unreachable_endpoint_is_unavailable() -> None:
    """Nothing listening on the endpoint raises the retryable StoreUnavailable, quickly."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    settings = StorageSettings(
        bucket="unreachable",
        endpoint_url=f"http://127.0.0.1:{closed_port}",
        kms_key_id="archive-key",
        connect_timeout_seconds=0.5,
        read_timeout_seconds=1.0,
    )
    data = b"x"
    started = time.monotonic()
    with S3Store(settings, credentials=("k", "s"), max_attempts=2) as store:
        calls: list[Callable[[], object]] = [
            lambda: store.put("test/k", data, sha256=sha(data), content_type=JPEG),
            lambda: store.head("test/k"),
            lambda: store.get("test/k"),
            lambda: list(store.list("test/")),
        ]
        for call in calls:
            with pytest.raises(StoreUnavailable) as caught:
                call()
            assert caught.value.retryable
            assert "EndpointConnectionError" in str(caught.value)
    assert time.monotonic() - started < 10
