"""The commit protocol on the in-memory store, with hand-built reads (no HTTP).

Objects first, ``SHA256SUMS`` beside them, the signature, then ``manifest.json``
last; a crash before the manifest leaves the pass uncommitted and a rerun finishes
it; an earlier attempt's adoptable objects are kept and listed as they are.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pyrage
import pytest
from pyrage import x25519

from archiver.catalog import Outcome
from archiver.clock import ManualClock
from archiver.core.format import (
    AGE_TYPE,
    JPEG_TYPE,
    OCTET_TYPE,
    SEALED_PAYLOAD,
    Layout,
    PassFacts,
    PassManifest,
    signature_key,
)
from archiver.core.images import CheckedImage, check_image, sealed_payload
from archiver.core.manifest import SlotReport
from archiver.errors import ObjectConflict, StoreUnavailable, UntrustedManifest
from archiver.pipeline.commit import Committer
from archiver.pipeline.options import PipelineOptions
from archiver.pipeline.plan import ObjectSpec, plan_objects
from archiver.results import PassResult
from archiver.store.memory import MemoryStore
from tests.fixtures.cli import TEST_SIGNER
from tests.helpers import make_jpeg

PID = "6f1d0c3a-2b7e-4c59-9a41-0d3e5b7f9a12"
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
LAYOUT = Layout("unit")
FACTS = PassFacts(
    status="complete",
    verification_status="verified",
    created_at=T0 - timedelta(hours=2),
    completed_at=T0 - timedelta(hours=1),
    image_retention_days=30,
    images_deadline=T0 + timedelta(days=29),
)


async def _inline(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


def _images() -> list[CheckedImage]:
    return [
        check_image("document_front", make_jpeg(64, 40, seed=1)),
        check_image("selfie", make_jpeg(48, 48, seed=2)),
    ]


def _record(version: int = 1) -> bytes:
    return orjson.dumps({"id": PID, "status": "complete", "read": version})


def _committer(store: MemoryStore, clock: ManualClock, **over: Any) -> Committer:
    age = over.pop("age_recipients", ())
    options = PipelineOptions(kms_key_id="archive-key", **over)
    return Committer(
        store=store,
        layout=LAYOUT,
        signer=TEST_SIGNER,
        opt=options,
        clock=clock,
        offload=_inline,
        age_recipients=age,
    )


def _commit(committer: Committer, specs: list[ObjectSpec]) -> PassResult:
    present = {s.slot for s in specs if s.slot}
    return asyncio.run(
        committer.commit(
            PID,
            run_id="r-unit",
            facts=FACTS,
            specs=specs,
            slots=SlotReport(
                absent_slots=tuple(sorted({"document_back", "document_front", "selfie"} - present))
            ),
        )
    )


def _stored_manifest(store: MemoryStore) -> PassManifest:
    mkey = LAYOUT.manifest(PID)
    data = store.get(mkey)
    assert TEST_SIGNER.verifier.verify(data, store.get(signature_key(mkey)))
    return PassManifest.parse(data)


def _sums_match_objects(store: MemoryStore, manifest: PassManifest) -> None:
    """SHA256SUMS lists exactly the stored objects the manifest lists, by hash."""
    listed = {
        LAYOUT.relative(PID, o.key): o.sha256 for o in manifest.objects if o.role != "checksums"
    }
    sums = store.get(LAYOUT.sums(PID)).decode("ascii").splitlines()
    assert dict(reversed(line.split("  ", 1)) for line in sums) == listed
    for o in manifest.objects:
        body = store.get(o.key, version_id=o.version_id)
        assert hashlib.sha256(body).hexdigest() == o.sha256


def _fail_on(suffix: str, store_ref: list[MemoryStore]) -> Any:
    """A fault that fails the first put of a key ending in ``suffix`` (the process
    dying at that point leaves what is stored before it)."""
    tripped: list[str] = []

    def fault(op: str, key: str) -> None:
        if op == "put" and key.endswith(suffix) and not tripped:
            tripped.append(key)
            raise StoreUnavailable(f"injected failure on {key}", key=key)

    return fault


def test_plain_commit_lists_every_object_and_writes_the_manifest_last():
    store, clock = MemoryStore(), ManualClock(T0)
    order: list[str] = []
    store.fault = lambda op, key: order.append(key) if op == "put" else None
    specs = plan_objects(LAYOUT, PID, _images(), _record(), age=False)
    result = _commit(_committer(store, clock), specs)
    assert result.outcome is Outcome.ARCHIVED and not result.already_archived
    assert result.images == 2 and result.objects_written == 6 and result.objects_reused == 0
    assert order[-2:] == [signature_key(LAYOUT.manifest(PID)), LAYOUT.manifest(PID)]
    manifest = _stored_manifest(store)
    assert result.manifest_sha256 == hashlib.sha256(store.get(LAYOUT.manifest(PID))).hexdigest()
    images = {o.slot: o for o in manifest.objects if o.role == "image"}
    assert images["document_front"].content_type == JPEG_TYPE
    assert (images["document_front"].width, images["document_front"].height) == (64, 40)
    assert manifest.missing_slots == ("document_back",)
    assert manifest.facts == FACTS and manifest.run_id == "r-unit"
    _sums_match_objects(store, manifest)


def test_a_crash_before_the_manifest_leaves_no_commit_and_a_rerun_finishes_it():
    store, clock = MemoryStore(), ManualClock(T0)
    store.fault = _fail_on("manifest.json", [store])
    specs = plan_objects(LAYOUT, PID, _images(), _record(), age=False)
    with pytest.raises(StoreUnavailable):
        _commit(_committer(store, clock), specs)
    assert store.head(LAYOUT.manifest(PID)) is None  # not committed
    assert store.head(LAYOUT.image(PID, "selfie")) is not None  # the objects are there

    clock.advance(timedelta(minutes=30))  # the rerun's manifest has other timestamps
    result = _commit(_committer(store, clock), specs)
    assert result.outcome is Outcome.ARCHIVED
    assert result.objects_reused == 4  # two images, the record, SHA256SUMS
    versions = store.versions_per_key(LAYOUT.pass_dir(PID))
    assert versions[LAYOUT.manifest(PID)] == 1
    assert versions[LAYOUT.image(PID, "selfie")] == 1  # nothing uploaded twice
    # the first attempt's signature was for a manifest never written: replaced
    assert versions[signature_key(LAYOUT.manifest(PID))] == 2
    _sums_match_objects(store, _stored_manifest(store))


def test_an_earlier_attempts_record_is_adopted_and_the_sums_rewritten():
    store, clock = MemoryStore(), ManualClock(T0)
    store.fault = _fail_on(".sig", [store])
    first = plan_objects(LAYOUT, PID, _images(), _record(1), age=False)
    with pytest.raises(StoreUnavailable):
        _commit(_committer(store, clock), first)
    store.fault = None

    # the rerun read the pass again: its record differs (a later read)
    second = plan_objects(LAYOUT, PID, _images(), _record(2), age=False)
    result = _commit(_committer(store, clock), second)
    manifest = _stored_manifest(store)
    record = next(o for o in manifest.objects if o.role == "record")
    assert store.get(record.key, version_id=record.version_id) == _record(1)  # kept
    assert record.sha256 == hashlib.sha256(_record(1)).hexdigest()
    assert store.versions_per_key()[LAYOUT.record(PID)] == 1
    assert store.versions_per_key()[LAYOUT.sums(PID)] == 1  # the first list was right
    assert result.objects_reused == 4
    _sums_match_objects(store, manifest)


def test_sums_are_rewritten_when_an_adopted_object_differs_from_the_first_list():
    """SHA256SUMS of an attempt killed after its record but before its own sums was
    written by an even earlier attempt: the stored list names another record hash."""
    store, clock = MemoryStore(), ManualClock(T0)
    specs = plan_objects(LAYOUT, PID, _images(), _record(1), age=False)
    # an attempt stored the record and a SHA256SUMS listing a record that never landed
    store.put(LAYOUT.record(PID), _record(1), sha256=specs[-1].sha256, content_type="x")
    wrong = f"{'0' * 64}  record.json\n".encode()
    store.put(LAYOUT.sums(PID), wrong, sha256=hashlib.sha256(wrong).hexdigest(), content_type="x")
    result = _commit(_committer(store, clock), specs)
    assert result.outcome is Outcome.ARCHIVED
    assert store.versions_per_key()[LAYOUT.sums(PID)] == 2  # rewritten as a new version
    manifest = _stored_manifest(store)
    sums_entry = next(o for o in manifest.objects if o.role == "checksums")
    assert sums_entry.version_id == store.head(LAYOUT.sums(PID)).version_id
    _sums_match_objects(store, manifest)


def test_a_conflicting_image_refuses_the_commit():
    """In plain mode an image key holding other bytes is not adopted: a JPEG that
    differs from what the API serves is a conflict, and no manifest is written."""
    store, clock = MemoryStore(), ManualClock(T0)
    other = make_jpeg(64, 40, seed=99)
    store.put(
        LAYOUT.image(PID, "selfie"),
        other,
        sha256=hashlib.sha256(other).hexdigest(),
        content_type=JPEG_TYPE,
    )
    specs = plan_objects(LAYOUT, PID, _images(), _record(), age=False)
    with pytest.raises(ObjectConflict) as caught:
        _commit(_committer(store, clock), specs)
    assert caught.value.key == LAYOUT.image(PID, "selfie")
    assert store.head(LAYOUT.manifest(PID)) is None
    assert store.get(LAYOUT.image(PID, "selfie")) == other  # nothing replaced


def test_another_worker_that_committed_first_stands():
    store, clock = MemoryStore(), ManualClock(T0)
    specs = plan_objects(LAYOUT, PID, _images(), _record(), age=False)
    first = _commit(_committer(store, clock), specs)
    clock.advance(timedelta(minutes=5))
    second = _commit(_committer(store, clock), specs)
    assert second.already_archived and second.manifest_sha256 == first.manifest_sha256
    assert store.versions_per_key()[LAYOUT.manifest(PID)] == 1


def test_a_worker_committing_between_our_signature_and_manifest_wins():
    """Another worker's signature and manifest land after our signature was put (its
    signature as a new version, as :meth:`Committer._publish` writes it): ours is not
    written, theirs is reported."""
    theirs_store, clock = MemoryStore(), ManualClock(T0)
    specs = plan_objects(LAYOUT, PID, _images(), _record(), age=False)
    theirs = _commit(_committer(theirs_store, clock), specs)
    mkey = LAYOUT.manifest(PID)
    their_bytes, their_sig = theirs_store.get(mkey), theirs_store.get(signature_key(mkey))

    store = MemoryStore()

    def race(op: str, key: str) -> None:
        if op == "put" and key == mkey and store.head(mkey) is None:
            store.backdoor_put(signature_key(mkey), their_sig, content_type=OCTET_TYPE)
            store.backdoor_put(mkey, their_bytes, content_type="application/json")

    store.fault = race
    clock.advance(timedelta(minutes=5))
    ours = _commit(_committer(store, clock), specs)
    assert ours.already_archived and ours.manifest_sha256 == theirs.manifest_sha256
    assert store.get(mkey) == their_bytes and store.versions_per_key()[mkey] == 1


def test_a_worker_whose_signature_we_replaced_wins_and_gets_its_signature_back():
    """Another worker put its signature first, then we replaced it (no manifest was
    there yet), then its manifest landed: the signature stored was ours, not of its
    manifest. Its signature is put back and its manifest reported as the commit."""
    theirs_store, clock = MemoryStore(), ManualClock(T0)
    specs = plan_objects(LAYOUT, PID, _images(), _record(), age=False)
    theirs = _commit(_committer(theirs_store, clock), specs)
    mkey, skey = LAYOUT.manifest(PID), signature_key(LAYOUT.manifest(PID))
    their_bytes, their_sig = theirs_store.get(mkey), theirs_store.get(skey)

    store = MemoryStore()
    store.backdoor_put(skey, their_sig, content_type=OCTET_TYPE)

    def race(op: str, key: str) -> None:
        if op == "put" and key == mkey and store.head(mkey) is None:
            store.backdoor_put(mkey, their_bytes, content_type="application/json")

    store.fault = race
    clock.advance(timedelta(minutes=5))
    ours = _commit(_committer(store, clock), specs)
    assert ours.already_archived and ours.manifest_sha256 == theirs.manifest_sha256
    assert store.get(mkey) == their_bytes and store.get(skey) == their_sig
    assert TEST_SIGNER.verifier.verify(store.get(mkey), store.get(skey))


def test_age_mode_encrypts_every_object_and_a_rerun_adopts_the_ciphertexts():
    identity = x25519.Identity.generate()
    store, clock = MemoryStore(), ManualClock(T0)
    store.fault = _fail_on("manifest.json", [store])
    specs = plan_objects(LAYOUT, PID, _images(), _record(), age=True)
    assert all(s.key.endswith(".age") and s.content_type == AGE_TYPE for s in specs)
    committer = _committer(store, clock, age_recipients=[identity.to_public()])
    with pytest.raises(StoreUnavailable):
        _commit(committer, specs)
    first_cipher = store.get(LAYOUT.image(PID, "selfie") + ".age")

    # age output is randomised: the rerun's ciphertexts differ and are adopted
    result = _commit(committer, specs)
    assert result.objects_reused == 4
    manifest = _stored_manifest(store)
    assert manifest.age_recipients == (str(identity.to_public()),)
    by_key = {o.key: o for o in manifest.objects}
    selfie = by_key[LAYOUT.image(PID, "selfie") + ".age"]
    assert store.get(selfie.key, version_id=selfie.version_id) == first_cipher
    plain = pyrage.decrypt(first_cipher, [identity])
    assert hashlib.sha256(plain).hexdigest() == selfie.plaintext_sha256
    assert selfie.plaintext_size == len(plain) and selfie.content_type == AGE_TYPE
    record = by_key[LAYOUT.record(PID) + ".age"]
    assert pyrage.decrypt(store.get(record.key), [identity]) == _record()
    _sums_match_objects(store, manifest)


def test_passthrough_mode_stores_the_sealed_payloads_as_received():
    payload = os.urandom(12) + os.urandom(300) + os.urandom(16)
    token = base64.b64encode(payload)
    sealed = [sealed_payload("selfie", token, max_bytes=10_000)]
    store, clock = MemoryStore(), ManualClock(T0)
    specs = plan_objects(LAYOUT, PID, sealed, _record(), age=False)
    result = _commit(_committer(store, clock, decryption="passthrough"), specs)
    assert result.outcome is Outcome.ARCHIVED
    manifest = _stored_manifest(store)
    image = next(o for o in manifest.objects if o.role == "image")
    assert image.key == LAYOUT.image(PID, "selfie", sealed=True)
    assert image.key.endswith("/images/selfie.jpg.aes256gcm")
    assert image.content_type == OCTET_TYPE and image.payload == SEALED_PAYLOAD
    assert image.width is None and image.height is None
    assert store.get(image.key) == payload and manifest.decryption == "passthrough"
    _sums_match_objects(store, manifest)


def test_a_failed_put_leaves_no_sibling_put_unobserved():
    """Every put of the round trip is awaited before the failure is raised: none is
    left running (on the event loop's shutdown it would be an unobserved error)."""
    store, clock = MemoryStore(), ManualClock(T0)
    failing = LAYOUT.image(PID, "document_front")
    seen: list[str] = []

    def fault(op: str, key: str) -> None:
        if op == "put":
            seen.append(key)
            if key in (failing, LAYOUT.record(PID)):
                raise StoreUnavailable(f"injected failure on {key}", key=key)

    store.fault = fault
    specs = plan_objects(LAYOUT, PID, _images(), _record(), age=False)
    with pytest.raises(StoreUnavailable, match="document_front"):
        _commit(_committer(store, clock), specs)
    assert set(seen) == {s.key for s in specs} | {LAYOUT.sums(PID)}


def test_a_manifest_planted_between_our_signature_and_manifest_fails_the_pass():
    """An object put at the manifest's key while we publish (anyone who can write to
    the bucket can) is not taken as another worker's commit: no trusted key signed
    it, so the commit raises UntrustedManifest and nothing is overwritten."""
    clock = ManualClock(T0)
    specs = plan_objects(LAYOUT, PID, _images(), _record(), age=False)
    store = MemoryStore()
    mkey = LAYOUT.manifest(PID)
    planted = b'{"pass_id": "planted"}'

    def race(op: str, key: str) -> None:
        if op == "put" and key == mkey and store.head(mkey) is None:
            store.backdoor_put(mkey, planted, content_type="application/json")

    store.fault = race
    with pytest.raises(UntrustedManifest) as caught:
        _commit(_committer(store, clock), specs)
    assert caught.value.problem == "bad_signature" and caught.value.reason == "untrusted_manifest"
    assert store.get(mkey) == planted and store.versions_per_key()[mkey] == 1
