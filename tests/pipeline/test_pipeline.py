"""The archival cycle against the real sandbox over HTTP and an in-memory store."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from archiver.catalog import Outcome, OutcomeUpdate
from archiver.core import manifest as mf
from archiver.idpass.models import SLOTS
from archiver.idpass.transport import BodySlot, Urllib3Transport
from archiver.results import EXIT_EXPIRED, EXIT_INCOMPLETE, EXIT_OK
from archiver.sandbox.state import DEFAULT_SLOTS as SANDBOX_DEFAULT_SLOTS
from tests.helpers import manifest_doc

DEFAULT_SLOTS = list(SANDBOX_DEFAULT_SLOTS["complete"])


def _outcomes(summary):
    return {r.pass_id: r.outcome for r in summary.results}


def test_archives_images_record_sums_and_manifest(harness):
    """A complete pass gets its images, record, SHA256SUMS and a valid manifest."""
    [p] = harness.seed(image_retention_days=30)
    harness.import_ledger()
    summary = harness.run()
    assert _outcomes(summary) == {p["id"]: Outcome.ARCHIVED}
    assert summary.exit_code == EXIT_OK
    lay, store = harness.layout, harness.store
    doc = manifest_doc(store.get(lay.manifest(p["id"])))
    images = {o["slot"]: o for o in doc["objects"] if o["role"] == "image"}
    assert sorted(images) == sorted(DEFAULT_SLOTS)
    for slot, entry in images.items():
        assert store.get(entry["key"]) == harness.image(p["id"], slot)
    missing = sorted(set(SLOTS) - set(DEFAULT_SLOTS))
    assert sorted(doc["absent_slots"] + doc["null_slots"]) == missing
    answer = harness.http.post(
        "/idpass/details",
        json={"id": p["id"], "return_images": True},
        headers={"Authorization": f"Bearer {harness.sandbox.token}"},
    ).json()["images"]
    assert doc["null_slots"] == sorted(s for s in missing if s in answer)
    assert doc["absent_slots"] == sorted(s for s in missing if s not in answer)
    assert doc["null_slots"] and doc["reads"] == 3  # null slots: confirmed by two more reads
    record = orjson.loads(store.get(lay.record(p["id"])))
    assert record["id"] == p["id"] and "images" not in record
    sums = store.get(lay.sums(p["id"])).decode()
    assert "  images/probe.jpg\n" in sums and "  record.json\n" in sums
    entry = harness.catalog.get(p["id"])
    assert entry.state is Outcome.ARCHIVED
    assert entry.manifest_sha256 == mf.sha256_hex(store.get(lay.manifest(p["id"])))
    assert entry.deadline is not None and entry.api_status == "complete"


def test_requests_wait_on_the_api_while_few_bodies_are_held(harness, monkeypatch):
    """``requests`` details requests wait on a slow API at once, yet at most
    ``concurrency`` response bodies are held: the transport reads a body only once
    its pass has a body slot, and the pass keeps it until its images are decoded."""
    harness.options = dataclasses.replace(harness.options, concurrency=1, requests=4)
    passes = harness.seed(8, image_retention_days=30)
    harness.import_ledger()
    held, in_flight = Gauge(), Gauge()
    acquire, release, start = BodySlot.acquire, BodySlot.release, Urllib3Transport._start

    async def counted_acquire(self):
        was = self.held
        await acquire(self)
        if not was:
            held.add(1)

    def counted_release(self):
        if self.held:
            held.add(-1)
        release(self)

    def counted_start(self, *args):
        in_flight.add(1)
        try:
            return start(self, *args)
        finally:
            in_flight.add(-1)

    monkeypatch.setattr(BodySlot, "acquire", counted_acquire)
    monkeypatch.setattr(BodySlot, "release", counted_release)
    monkeypatch.setattr(Urllib3Transport, "_start", counted_start)
    summary = _run_with_slow_details(harness, 0.4, 0.4)
    assert _outcomes(summary) == {p["id"]: Outcome.ARCHIVED for p in passes}
    assert in_flight.most == 4  # every request waited on the API together
    assert held.most == 1 and held.now == 0


def test_a_worker_leases_only_the_passes_it_is_working_on(harness, monkeypatch):
    """A worker of a shared catalog holds at most ``requests + 2 x concurrency``
    leases (its passes waiting on the API, holding a body, uploading): it does not
    claim further ahead, where passes would sit leased and idle while other workers
    have nothing to do. The backlog is still worked through in batches."""
    # one read per pass (no confirming reads of null slots): one lease each
    harness.options = dataclasses.replace(
        harness.options, concurrency=1, requests=2, confirm_reads=0
    )
    width = 2 + 2 * 1
    passes = harness.seed(24, image_retention_days=30)
    harness.import_ledger()
    leases, claims = Gauge(), []
    catalog = harness.catalog
    claim, record = catalog.claim, catalog.record

    def counted_claim(*args, **kwargs):
        batch = claim(*args, **kwargs)
        claims.append(len(batch))
        leases.add(len(batch))
        return batch

    def counted_record(*args, **kwargs):
        record(*args, **kwargs)
        leases.add(-1)

    monkeypatch.setattr(catalog, "claim", counted_claim)
    monkeypatch.setattr(catalog, "record", counted_record)
    summary = _run_with_slow_details(harness, 0.05, 0.1)
    assert _outcomes(summary) == {p["id"]: Outcome.ARCHIVED for p in passes}
    assert leases.most == width and leases.now == 0
    assert sum(claims) == 24 and claims[-1] == 0  # the last claim found nothing left
    assert len(claims) < 24  # batches: a claim for one pass only when that is all there is


def _run_with_slow_details(harness, low: float, high: float):
    """One run while the sandbox answers every details request after low-high seconds."""
    slow = {"paths": ["/idpass/details"], "rates": {"latency": 1.0}}
    rates = {**slow, "latency_seconds": [low, high]}
    assert harness.http.post("/_sandbox/fault-rates", json=rates).status_code == 200
    try:
        return harness.run()
    finally:
        harness.http.delete("/_sandbox/fault-rates")


class Gauge:
    """A count that goes up and down (from several threads), and its highest value."""

    def __init__(self) -> None:
        self.now = self.most = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.now += n
            self.most = max(self.most, self.now)


def test_outcomes_for_every_kind_of_pass(harness):
    """Retention 0, closed windows, unfinished and unarchived statuses get their outcomes."""
    now = datetime.now(UTC)
    ok = harness.seed(image_retention_days=10)[0]["id"]
    zero = harness.seed(image_retention_days=0)[0]["id"]
    expired = harness.seed(
        image_retention_days=2,
        completed_at=(now - timedelta(days=5)).isoformat().replace("+00:00", "Z"),
    )[0]["id"]
    busy = harness.seed(status="in_progress")[0]["id"]
    cancelled = harness.seed(status="cancelled")[0]["id"]
    harness.import_ledger()
    summary = harness.run()
    got = _outcomes(summary)
    assert got == {
        ok: Outcome.ARCHIVED,
        zero: Outcome.NO_IMAGES,
        expired: Outcome.EXPIRED,
        busy: Outcome.NOT_READY,
        cancelled: Outcome.SKIPPED,
    }
    assert summary.exit_code == EXIT_EXPIRED
    for pid in (zero, expired, busy, cancelled):
        assert list(harness.store.list(harness.layout.pass_dir(pid))) == []
    assert "retention window closed" in harness.catalog.get(expired).last_reason
    assert harness.catalog.get(zero).last_reason == "image_retention_days is 0"
    busy_entry = harness.catalog.get(busy)
    assert busy_entry.next_attempt_at is not None and busy_entry.next_attempt_at > now
    assert summary.to_json()["expired_ids"] == [expired]


def test_absent_slots_are_recorded_missing_not_errors(harness):
    """A pass with only two images is archived with the other slots listed as missing."""
    [p] = harness.seed(image_retention_days=5, slots=["probe", "document_2_back"])
    harness.import_ledger()
    summary = harness.run()
    assert _outcomes(summary)[p["id"]] is Outcome.ARCHIVED
    doc = manifest_doc(harness.store.get(harness.layout.manifest(p["id"])))
    assert doc["image_count"] == 2
    missing = doc["absent_slots"] + doc["null_slots"]
    assert "document_1_front" in missing and "probe" not in missing
    assert len(missing) == len(SLOTS) - 2 and doc["reads"] == 3


def test_rerun_fetches_nothing_and_writes_nothing(harness):
    """A second run finds nothing due; a forced re-check reuses the manifest."""
    harness.seed(count=3, image_retention_days=5)
    harness.import_ledger()
    first = harness.run()
    assert first.counts["archived"] == 3
    before = harness.store.versions_per_key()
    second = harness.run()
    assert second.results == []
    ids = [r.pass_id for r in first.results]
    third = harness.run(pass_ids=ids)
    assert all(r.already_archived and r.outcome is Outcome.ARCHIVED for r in third.results)
    assert harness.store.versions_per_key() == before
    assert all(n == 1 for n in before.values())


def test_interrupted_pass_is_finished_with_reuse(harness):
    """If a crash left images but no manifest, the rerun reuses them and commits."""
    [p] = harness.seed(image_retention_days=5)
    harness.import_ledger()
    harness.run()
    pid = p["id"]
    store = harness.store
    store.remove(harness.layout.manifest(pid))
    harness.catalog.record(
        OutcomeUpdate(pid, Outcome.RETRY, reason="simulated crash", count_attempt=False),
        datetime.now(UTC) - timedelta(days=1),
    )
    summary = harness.run(pass_ids=[pid])
    [r] = summary.results
    assert r.outcome is Outcome.ARCHIVED and not r.already_archived
    assert r.objects_reused == len(DEFAULT_SLOTS) + 2  # images, record, sums
    assert r.objects_written == 2  # the manifest and a new version of its signature
    assert store.get(harness.layout.manifest(pid))


def test_dry_run_lists_and_writes_nothing(harness):
    """A dry run lists due passes with deadlines and writes nothing anywhere."""
    harness.seed(count=2, image_retention_days=5)
    harness.import_ledger()
    summary = harness.run(dry_run=True)
    assert len(summary.planned) == 2
    assert all(p["deadline"] for p in summary.planned)
    assert harness.store.versions_per_key() == {}
    assert harness.catalog.counts() == {"pending": 2}


def test_limit_takes_the_most_urgent(harness):
    """--limit archives the passes with the earliest deadlines."""
    later = harness.seed(image_retention_days=30)[0]["id"]
    sooner = harness.seed(image_retention_days=2)[0]["id"]
    harness.import_ledger()
    summary = harness.run(limit=1)
    assert [r.pass_id for r in summary.results] == [sooner]
    assert harness.catalog.get(later).state is Outcome.PENDING


def test_unknown_pass_fails_without_stopping_the_run(harness):
    """A pass the API does not know fails with a reason; the others are archived."""
    from archiver.catalog import PassUpsert

    good = harness.seed(image_retention_days=5)[0]["id"]
    harness.import_ledger()
    ghost = "00000000-0000-4000-8000-000000000001"
    harness.catalog.upsert([PassUpsert(ghost, "test")])
    summary = harness.run()
    got = _outcomes(summary)
    assert got[good] is Outcome.ARCHIVED
    assert got[ghost] is Outcome.FAILED
    assert "api_not_found" in harness.catalog.get(ghost).last_reason
    assert summary.exit_code == EXIT_INCOMPLETE


def test_bad_token_stops_the_run_as_systemic(harness):
    """A refused token stops the run with the systemic exit code and records nothing."""
    from archiver.results import EXIT_SYSTEMIC

    harness.seed(count=3, image_retention_days=5)
    harness.import_ledger()
    summary = harness.run(token="wrong-token")
    assert summary.exit_code == EXIT_SYSTEMIC
    assert "api_auth_error" in summary.systemic_error
    assert harness.catalog.counts() == {"pending": 3}


def test_keyless_pass_with_encrypted_images_fails_clearly(harness):
    """Without a cipher key the images arrive encrypted: the pass fails with that reason."""
    from archiver.catalog import PassUpsert

    pid = harness.seed(image_retention_days=5)[0]["id"]
    harness.catalog.upsert([PassUpsert(pid, "enqueue")])  # no key known
    summary = harness.run()
    assert _outcomes(summary)[pid] is Outcome.FAILED
    assert "arrived encrypted" in harness.catalog.get(pid).last_reason
    assert list(harness.store.list(harness.layout.pass_dir(pid))) == []


def test_local_decryption_archives_the_same_bytes(harness):
    """With decryption = local the key never leaves the process and the bytes match."""
    import dataclasses

    pid = harness.seed(image_retention_days=5)[0]["id"]
    harness.import_ledger()
    harness.options = dataclasses.replace(harness.options, decryption="local")
    summary = harness.run()
    assert _outcomes(summary)[pid] is Outcome.ARCHIVED
    doc = manifest_doc(harness.store.get(harness.layout.manifest(pid)))
    assert doc["source"]["decryption"] == "local"
    for o in doc["objects"]:
        if o["role"] == "image":
            assert harness.store.get(o["key"]) == harness.image(pid, o["slot"])
    record = orjson.loads(harness.store.get(harness.layout.record(pid)))
    assert "payload_encryption" not in record
    assert isinstance(record["verified_identity"], dict)


def test_passthrough_archives_the_ciphertext_as_received(harness):
    """Passthrough needs no key: ciphertext is stored, hashed and marked; it opens with the key."""
    import base64

    from archiver.catalog import PassUpsert
    from archiver.idpass import crypto

    [p] = harness.seed(image_retention_days=5, slots=["probe", "id_photo"])
    harness.catalog.upsert([PassUpsert(p["id"], "enqueue")])  # no key anywhere
    harness.options = dataclasses.replace(harness.options, decryption="passthrough")
    [result] = harness.run().results
    assert result.outcome is Outcome.ARCHIVED, result.reason
    doc = manifest_doc(harness.store.get(harness.layout.manifest(p["id"])))
    assert doc["source"]["decryption"] == "passthrough"
    images = [o for o in doc["objects"] if o["role"] == "image"]
    assert {o["slot"] for o in images} == {"probe", "id_photo"}
    raw_key = crypto.parse_key(p["cipher_key"])
    for o in images:
        assert o["payload"] == "aes-256-gcm" and "width" not in o
        assert o["key"].endswith(".jpg.aes256gcm")
        stored = harness.store.get(o["key"])
        assert mf.sha256_hex(stored) == o["sha256"]
        token = base64.b64encode(stored).decode()
        assert crypto.decrypt_value(raw_key, token) == harness.image(p["id"], o["slot"])
    record = orjson.loads(harness.store.get(harness.layout.record(p["id"])))
    assert record["payload_encryption"] == "aes-256-gcm"


@pytest.mark.parametrize(
    ("mode", "fragment"),
    [("local", "wrong cipher key"), ("server", "cipher_key_mismatch")],
)
def test_wrong_cipher_key_fails_the_pass_cleanly(harness, mode, fragment):
    """A wrong key gives that pass `failed` with a clear reason and writes nothing."""
    from archiver.catalog import PassUpsert
    from archiver.idpass import crypto

    [p] = harness.seed(image_retention_days=5)
    harness.catalog.upsert([PassUpsert(p["id"], "test", cipher_key=crypto.new_key())])
    harness.options = dataclasses.replace(harness.options, decryption=mode)
    [result] = harness.run().results
    assert result.outcome is Outcome.FAILED
    assert fragment in result.reason
    assert list(harness.store.list(harness.layout.pass_dir(p["id"]))) == []


def test_a_pass_handled_twice_in_a_run_counts_once():
    """A retry that comes due again in the same run keeps only its last result."""
    from datetime import UTC, datetime

    from archiver.results import PassResult, RunSummary

    summary = RunSummary(run_id="r", started_at=datetime.now(UTC))
    summary.add(PassResult("a", Outcome.RETRY, "api_server_error"))
    summary.add(PassResult("b", Outcome.ARCHIVED))
    summary.add(PassResult("a", Outcome.ARCHIVED))
    assert [(r.pass_id, r.outcome) for r in summary.results] == [
        ("a", Outcome.ARCHIVED),
        ("b", Outcome.ARCHIVED),
    ]
    assert summary.counts["retry"] == 0 and summary.exit_code == 0
    summary.stopped_early = True
    assert summary.exit_code == 1  # a stopped run left due work behind
