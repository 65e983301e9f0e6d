"""verify on the memory store: "not there" against "could not ask".

Only the store saying an object is not there (``head`` None, ``get`` ObjectNotFound)
becomes a finding. A store that cannot be asked (here: the memory store's fault hook
raising StoreAccessDenied or StoreUnavailable, as a refused secret or an unreachable
endpoint would) raises out of verify, and no finding is recorded: it says nothing
about the archive. `tests/test_verify.py` shows the same through the CLI on SeaweedFS.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from archiver.core.format import (
    JPEG_TYPE,
    JSON_TYPE,
    MANIFEST_KIND,
    OCTET_TYPE,
    Layout,
    signature_key,
)
from archiver.errors import ObjectNotFound, StoreAccessDenied, StoreError, StoreUnavailable
from archiver.store.memory import MemoryStore
from archiver.verify import ArchiveChecker, VerifyScope, run_verify, sample
from tests.fixtures.cli import TEST_SIGNER
from tests.helpers import make_jpeg

LAYOUT = Layout("unit")
PIDS = ["1b0f3c8e-5d2a-4e7b-9c61-2f8a7d4e0b13", "9e4d2a71-0c3b-4f58-8d16-7a5b3c2e1f04"]
SEED = 3


def _put(store: MemoryStore, key: str, data: bytes, ctype: str, **more: object) -> dict[str, Any]:
    """Store ``data`` at ``key``; its entry as a manifest lists it."""
    digest = hashlib.sha256(data).hexdigest()
    put = store.put(key, data, sha256=digest, content_type=ctype)
    entry = {"key": key, "size": len(data), "sha256": digest, "content_type": ctype}
    return {**entry, "version_id": put.version_id, **more}


def _archive_pass(store: MemoryStore, pass_id: str) -> None:
    """One signed pass as the pipeline stores it: objects, signature, manifest last.
    The manifest is written out by hand in the published version-1 format."""
    image = make_jpeg(32, 24, seed=len(pass_id))
    objects = [
        _put(
            store,
            LAYOUT.image(pass_id, "selfie"),
            image,
            JPEG_TYPE,
            role="image",
            slot="selfie",
            width=32,
            height=24,
        ),
        _put(store, LAYOUT.record(pass_id), b'{"status":"complete"}', JSON_TYPE, role="record"),
    ]
    doc = {
        "manifest_version": 1,
        "kind": MANIFEST_KIND,
        "pass_id": pass_id,
        "run_id": "r-unit",
        "archived_at": "2026-06-01T12:00:00Z",
        "archiver_version": "test",
        "pass": {
            "status": "complete",
            "verification_status": "verified",
            "created_at": "2026-06-01T10:00:00Z",
            "completed_at": "2026-06-01T11:00:00Z",
            "image_retention_days": 30,
            "images_deadline": "2026-06-30T11:00:00Z",
        },
        "source": {"endpoint": "/idpass/details", "decryption": "server"},
        "encryption": {"sse": store.sse, "kms_key_id": store.kms_key_id},
        "signing": {"algorithm": "ed25519", "key_id": TEST_SIGNER.key_id},
        "objects": objects,
        "missing_slots": [],
        "image_count": 1,
        "image_bytes": len(image),
    }
    data = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    mkey = LAYOUT.manifest(pass_id)
    _put(store, signature_key(mkey), TEST_SIGNER.sign(data), OCTET_TYPE)
    _put(store, mkey, data, JSON_TYPE)


RUN_KEY = LAYOUT.runs_root() + "2026/06/01/r-unit.json"


def _run_manifest(
    store: MemoryStore, key: str, pass_ids: list[str], signer: Any, previous: str | None = None
) -> None:
    """A signed run manifest listing ``pass_ids`` (and following ``previous``), in the
    published version-1 format."""
    listed = [
        {
            "pass_id": pid,
            "manifest_key": LAYOUT.manifest(pid),
            "manifest_sha256": hashlib.sha256(store.get(LAYOUT.manifest(pid))).hexdigest(),
            "already_archived": False,
        }
        for pid in pass_ids
    ]
    doc = {
        "run_manifest_version": 1,
        "kind": "idpass-archiver/run-manifest",
        "run_id": "r-unit",
        "chain_id": "main",
        "worker_id": None,
        "archiver_version": "test",
        "config_fingerprint": "0" * 64,
        "started_at": "2026-06-01T12:00:00Z",
        "finished_at": "2026-06-01T12:05:00Z",
        "exit_code": 0,
        "stopped_early": False,
        "systemic_error": None,
        "counts": {"archived": len(listed)},
        "passes": listed,
        "not_archived": [],
        "previous": (
            {"key": previous, "sha256": hashlib.sha256(store.get(previous)).hexdigest()}
            if previous
            else None
        ),
        "signing": {"algorithm": "ed25519", "key_id": signer.key_id},
    }
    data = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    _put(store, signature_key(key), signer.sign(data), OCTET_TYPE)
    _put(store, key, data, JSON_TYPE)


@pytest.fixture
def store() -> MemoryStore:
    store = MemoryStore()
    for pid in PIDS:
        _archive_pass(store, pid)
    _run_manifest(store, RUN_KEY, PIDS, TEST_SIGNER)
    return store


def _verify_all(store: MemoryStore) -> list[tuple[str, str]]:
    report = run_verify(store, LAYOUT, [TEST_SIGNER.verifier], VerifyScope(everything=True))
    return sorted((f.kind, f.key) for f in report.findings)


def test_the_whole_archive_verifies_clean(store: MemoryStore) -> None:
    assert _verify_all(store) == []


def test_a_pass_hidden_by_delete_markers_is_listed_but_missing(store: MemoryStore) -> None:
    """Delete markers on every object of a pass hide it from the plain listing; the
    signed run manifest still lists it."""
    pid = PIDS[0]
    for o in list(store.list(LAYOUT.pass_dir(pid))):
        store.delete_marker(o.key)
    assert _verify_all(store) == [("listed_but_missing", LAYOUT.manifest(pid))]


def test_a_pass_no_run_lists_is_unlisted(store: MemoryStore) -> None:
    """A signed pass in the bucket that no signed run manifest lists."""
    store.remove(RUN_KEY)
    store.remove(signature_key(RUN_KEY))
    _run_manifest(store, RUN_KEY, PIDS[1:], TEST_SIGNER)
    assert _verify_all(store) == [("unlisted", LAYOUT.manifest(PIDS[0]))]


def test_a_hidden_run_manifest_is_a_delete_marker_and_its_passes_stay_listed(
    store: MemoryStore,
) -> None:
    """A delete marker over the (only, so newest) run manifest: named, and its passes
    are still known as listed, so they are not reported unlisted."""
    store.delete_marker(RUN_KEY)
    assert _verify_all(store) == [("delete_marker", RUN_KEY)]


def test_an_unsigned_run_manifest_is_named_and_kept_out_of_the_chain(
    store: MemoryStore,
) -> None:
    """A run manifest planted beside a real second one (both following the first),
    signed by a key that is not trusted: `untrusted_key`, and no `chain_fork` (it
    used to count as a link of the chain)."""
    from archiver.core.signing import Signer

    second = LAYOUT.runs_root() + "2026/06/02/r-second.json"
    _run_manifest(store, second, [], TEST_SIGNER, previous=RUN_KEY)
    planted = LAYOUT.runs_root() + "2026/06/02/r-planted.json"
    _run_manifest(store, planted, PIDS, Signer.generate(), previous=RUN_KEY)
    assert _verify_all(store) == [("untrusted_key", planted)]


def _checker(store: MemoryStore) -> ArchiveChecker:
    return ArchiveChecker(store, LAYOUT, [TEST_SIGNER.verifier])


def _fail(operation: str, key: str, error: StoreError) -> Callable[[str, str], None]:
    """A fault: ``operation`` on ``key`` raises ``error``; everything else answers."""

    def fault(op: str, at: str) -> None:
        if op == operation and at == key:
            raise error

    return fault


def test_an_intact_pass_verifies_clean(store: MemoryStore) -> None:
    checker = _checker(store)
    checker.check_pass(PIDS[0], deep=True)
    assert checker.report.findings == [] and checker.report.bytes_hashed > 0


MANIFEST = LAYOUT.manifest(PIDS[0])


@pytest.mark.parametrize(
    ("removed", "kind", "named"),
    [
        (MANIFEST, "missing", MANIFEST),
        (signature_key(MANIFEST), "unsigned", MANIFEST),  # named by the document it signs
        (LAYOUT.image(PIDS[0], "selfie"), "missing", LAYOUT.image(PIDS[0], "selfie")),
    ],
    ids=["manifest", "signature", "image"],
)
def test_an_object_that_is_not_there_is_a_finding(
    store: MemoryStore, removed: str, kind: str, named: str
) -> None:
    """The store answers that the manifest, its signature or a listed object is not
    there: one finding, naming it."""
    store.remove(removed)
    checker = _checker(store)
    checker.check_pass(PIDS[0], deep=True)
    assert [(f.kind, f.key) for f in checker.report.findings] == [(kind, named)]


CANNOT_ASK = [
    StoreAccessDenied("memory get: SignatureDoesNotMatch (HTTP 403)"),
    StoreUnavailable("memory get: EndpointConnectionError"),
]


@pytest.mark.parametrize("error", CANNOT_ASK, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize(
    "key",
    [
        MANIFEST,
        signature_key(MANIFEST),
        LAYOUT.image(PIDS[0], "selfie"),  # read by --deep
    ],
    ids=["manifest", "signature", "image"],
)
def test_a_get_the_store_cannot_answer_raises_and_finds_nothing(
    store: MemoryStore, key: str, error: StoreError
) -> None:
    """A refused or unreachable store on the manifest, its signature or a deep read is
    no `missing`, `unsigned` or `unreadable` finding: verify raises the store error."""
    store.fault = _fail("get", key, error)
    checker = _checker(store)
    with pytest.raises(type(error)):
        checker.check_pass(PIDS[0], deep=True)
    assert checker.report.findings == []


def test_a_version_gone_between_head_and_get_is_unreadable(store: MemoryStore) -> None:
    """--deep: the store heads the recorded version, then says it is not there."""
    image = LAYOUT.image(PIDS[0], "selfie")
    store.fault = _fail("get", image, ObjectNotFound("memory get: no such object", key=image))
    checker = _checker(store)
    checker.check_pass(PIDS[0], deep=True)
    assert [(f.kind, f.key) for f in checker.report.findings] == [("unreadable", image)]


def _not_sampled() -> str:
    """The pass a 50 % sample with SEED leaves out: --all only lists its objects."""
    [left_out] = set(PIDS) - set(sample(sorted(PIDS), 50, SEED))
    return left_out


def test_an_unsampled_manifest_the_store_cannot_read_raises(store: MemoryStore) -> None:
    """--all --sample: the manifest of a pass left out of the sample is still read, to
    account for its objects. A store that cannot answer raises; it does not leave
    that pass's objects reported as orphans."""
    key = LAYOUT.manifest(_not_sampled())
    for error in CANNOT_ASK:
        store.fault = _fail("get", key, error)
        with pytest.raises(type(error)):
            run_verify(
                store, LAYOUT, [TEST_SIGNER.verifier], VerifyScope(sample_percent=50, seed=SEED)
            )


def test_an_unsampled_manifest_gone_since_the_listing_leaves_orphans(store: MemoryStore) -> None:
    """The store listed the manifest, then says it is not there: nothing accounts for
    that pass's objects any more, which are reported as orphans."""
    pid = _not_sampled()
    key = LAYOUT.manifest(pid)
    store.fault = _fail("get", key, ObjectNotFound("memory get: no such object", key=key))
    report = run_verify(
        store, LAYOUT, [TEST_SIGNER.verifier], VerifyScope(sample_percent=50, seed=SEED)
    )
    assert sorted((f.kind, f.key) for f in report.findings) == [
        ("orphan", LAYOUT.image(pid, "selfie")),
        ("orphan", LAYOUT.record(pid)),
    ]
