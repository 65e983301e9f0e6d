"""Confirmed absence: one answer never loses an image (issue 17).

The sandbox holds every image; a reader around the real client alters some of its
real answers the way a flaky proxy did (a slot null, ``images: {}``, other bytes for a
slot), so each test knows what the archive must still hold.
"""

from __future__ import annotations

import base64
import dataclasses
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from archiver.catalog import Outcome
from archiver.clock import isoformat
from archiver.core.images import check_image
from archiver.idpass.client import PassRead
from archiver.metrics import write_textfile
from archiver.pipeline import DetailsReader
from archiver.results import EXIT_EXPIRED, EXIT_OK
from tests.helpers import make_jpeg, manifest_doc

Alter = Callable[[PassRead], PassRead]


class Altering:
    """A details reader around the real client: the n-th answer for a pass goes
    through ``plan[pass_id][n]`` when there is one (None: as the sandbox sent it)."""

    def __init__(self, api: DetailsReader, plan: dict[str, list[Alter | None]]) -> None:
        self.api, self.plan = api, plan
        self.reads: Counter[str] = Counter()

    async def details(self, pass_id: str, cipher_key: str | None = None, **kw: Any) -> PassRead:
        read = await self.api.details(pass_id, cipher_key, **kw)
        steps = self.plan.get(pass_id, [])
        n = self.reads[pass_id]
        self.reads[pass_id] += 1
        step = steps[n] if n < len(steps) else None
        return step(read) if step is not None else read


def null(slot: str) -> Alter:
    """The answer with ``slot`` null (as a proxy that lost it would send it)."""

    def alter(read: PassRead) -> PassRead:
        assert slot in read.images, "the sandbox sent this slot: the test nulls a real image"
        images = {s: v for s, v in read.images.items() if s != slot}
        return dataclasses.replace(read, images=images, null_slots=(*read.null_slots, slot))

    return alter


def empty(read: PassRead) -> PassRead:
    """``images: {}``: what the API answered with its clock a month ahead."""
    assert read.images, "the sandbox sent images: the test hides real ones"
    return dataclasses.replace(read, images={}, null_slots=())


def other_image(slot: str) -> Alter:
    def alter(read: PassRead) -> PassRead:
        jpeg = base64.b64encode(make_jpeg(seed=99)).decode()
        return dataclasses.replace(read, images={**read.images, slot: jpeg})

    return alter


def _wrap(plan: dict[str, list[Alter | None]]) -> tuple[Callable[[DetailsReader], Any], list]:
    made: list[Altering] = []

    def wrap(api: DetailsReader) -> Altering:
        made.append(Altering(api, plan))
        return made[-1]

    return wrap, made


def _image_slots(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["slot"]: o for o in doc["objects"] if o["role"] == "image"}


def test_a_slot_null_in_one_answer_is_read_again_and_archived(s3_harness):
    """The first answer has ``probe`` null; the confirming read returns it: archived
    with it (69a6b5a archived the pass without it, for good)."""
    h = s3_harness
    [p] = h.seed(image_retention_days=30, slots=["id_photo", "probe"])
    h.import_ledger()
    wrap, made = _wrap({p["id"]: [null("probe")]})
    summary = h.run(wrap=wrap)
    [result] = summary.results
    assert result.outcome is Outcome.ARCHIVED, result.reason
    doc = manifest_doc(h.store.get(h.layout.manifest(p["id"])))
    images = _image_slots(doc)
    assert sorted(images) == ["id_photo", "probe"]
    assert h.store.get(images["probe"]["key"]) == h.image(p["id"], "probe")
    assert "probe" not in doc["null_slots"] + doc["absent_slots"]
    assert made[0].reads[p["id"]] == doc["reads"] == 3  # the sandbox's own null slots too
    assert h.catalog.get(p["id"]).attempts == 1  # the reads that confirmed spent none


def test_an_image_seen_once_survives_later_answers_with_its_slot_null(s3_harness):
    """Seen in the first read only, then null in every later one: the image the first
    read stored is part of the commit, listed and hashed as SeaweedFS holds it."""
    h = s3_harness
    [p] = h.seed(image_retention_days=30, slots=["id_photo", "probe"])
    h.import_ledger()
    wrap, _ = _wrap({p["id"]: [None, null("probe"), null("probe")]})
    [result] = h.run(wrap=wrap).results
    assert result.outcome is Outcome.ARCHIVED, result.reason
    assert result.images == 2
    doc = manifest_doc(h.store.get(h.layout.manifest(p["id"])))
    images = _image_slots(doc)
    assert sorted(images) == ["id_photo", "probe"]
    probe = images["probe"]
    assert h.store.get(probe["key"]) == h.image(p["id"], "probe")
    real = check_image("probe", h.image(p["id"], "probe"))
    assert (probe["width"], probe["height"], probe["sha256"]) == (
        real.width,
        real.height,
        real.sha256,
    )
    sums = h.store.get(h.layout.sums(p["id"])).decode()
    assert f"{probe['sha256']}  images/probe.jpg\n" in sums
    assert "probe" not in doc["null_slots"]


def test_images_empty_inside_the_window_is_confirmed_then_archived(harness):
    """``images: {}`` while the window is open (the API's clock ahead) is read again;
    the next answer has the images (69a6b5a: no_images, exit 0, never read again)."""
    [p] = harness.seed(image_retention_days=30, slots=["probe"])
    harness.import_ledger()
    wrap, _ = _wrap({p["id"]: [empty]})
    summary = harness.run(wrap=wrap)
    assert [r.outcome for r in summary.results] == [Outcome.ARCHIVED]
    doc = manifest_doc(harness.store.get(harness.layout.manifest(p["id"])))
    assert sorted(_image_slots(doc)) == ["probe"]


def test_images_absent_in_every_read_is_counted_apart_from_retention_zero(harness):
    """No read returns an image: ``images_absent`` after the confirming reads, apart
    from ``no_images`` (retention 0) in the summary, the catalog and the metrics."""
    [p] = harness.seed(image_retention_days=30, slots=["probe"])
    zero = harness.seed(image_retention_days=0)[0]["id"]
    harness.import_ledger()
    wrap, made = _wrap({p["id"]: [empty, empty, empty]})
    summary = harness.run(wrap=wrap)
    got = {r.pass_id: r for r in summary.results}
    assert got[p["id"]].outcome is Outcome.IMAGES_ABSENT
    assert "no images in 3 read(s) inside the window" in got[p["id"]].reason
    assert "another clock" in got[p["id"]].reason
    assert got[zero].outcome is Outcome.NO_IMAGES
    assert made[0].reads[p["id"]] == 3
    assert summary.counts["images_absent"] == 1 and summary.counts["no_images"] == 1
    assert summary.exit_code == EXIT_OK
    assert harness.catalog.counts() == {"images_absent": 1, "no_images": 1}
    prom = harness.tmp / "absent.prom"
    write_textfile(summary, prom, labels={})
    assert 'idpass_archiver_passes{outcome="images_absent"} 1.0' in prom.read_text()
    assert list(harness.store.list(harness.layout.pass_dir(p["id"]))) == []


def test_confirmation_carries_over_to_a_later_run(travel):
    """With a spacing longer than a run waits, the confirming read is the next run's;
    it spends none of the error attempts."""
    travel.options = dataclasses.replace(travel.options, confirm_spacing=timedelta(minutes=10))
    [p] = travel.seed(image_retention_days=30, slots=["id_photo", "probe"])
    travel.import_ledger()
    wrap, _ = _wrap({p["id"]: [null("id_photo")]})
    first = travel.run(wrap=wrap)
    assert [r.outcome for r in first.results] == [Outcome.CONFIRMING]
    entry = travel.catalog.get(p["id"])
    assert entry.state is Outcome.CONFIRMING and entry.attempts == 0
    assert entry.confirmations == 1
    assert entry.next_attempt_at == travel.clock.now() + timedelta(minutes=10)
    stored = list(travel.store.list(travel.layout.pass_dir(p["id"])))
    assert [i.key.rsplit("/", 1)[-1] for i in stored] == ["probe.jpg"]  # no manifest yet
    assert travel.run().results == []  # not due yet
    outcomes = []
    for _ in range(2):  # two confirming reads, each in its own run
        travel.advance(timedelta(minutes=10))
        wrap, _ = _wrap({p["id"]: [null("probe")]})
        [result] = travel.run(wrap=wrap).results
        outcomes.append(result.outcome)
    assert outcomes == [Outcome.CONFIRMING, Outcome.ARCHIVED] and result.images == 2
    assert travel.catalog.get(p["id"]).attempts == 1
    doc = manifest_doc(travel.store.get(travel.layout.manifest(p["id"])))
    assert sorted(_image_slots(doc)) == ["id_photo", "probe"]
    assert doc["reads"] == 3


def test_confirmation_never_pushes_a_pass_past_its_deadline(travel):
    """A pass whose window closes within the margin settles at once with what the
    one read saw (here: nothing), and says why."""
    now = travel.clock.now()
    [p] = travel.seed(
        image_retention_days=1,
        slots=["probe"],
        completed_at=isoformat(now - timedelta(hours=23, minutes=30)),
    )
    travel.import_ledger()
    wrap, made = _wrap({p["id"]: [empty]})
    [result] = travel.run(wrap=wrap).results
    assert result.outcome is Outcome.IMAGES_ABSENT
    assert "too close to the deadline" in result.reason
    assert made[0].reads[p["id"]] == 1


def test_other_bytes_for_a_slot_in_a_later_read_are_a_slot_conflict(harness):
    """Two reads returning different images for one slot: ``failed`` with reason
    slot_conflict, nothing overwritten, nothing committed."""
    [p] = harness.seed(image_retention_days=30, slots=["id_photo", "probe"])
    harness.import_ledger()
    wrap, _ = _wrap({p["id"]: [null("id_photo"), other_image("probe")]})
    summary = harness.run(wrap=wrap)
    [result] = summary.results
    assert result.outcome is Outcome.FAILED
    assert result.reason.startswith("slot_conflict:") and "probe" in result.reason
    assert harness.store.head(harness.layout.manifest(p["id"])) is None
    kept = harness.store.get(harness.layout.image(p["id"], "probe"))
    assert kept == harness.image(p["id"], "probe")  # the first read's image, untouched
    assert summary.to_json()["slot_conflicts"] == 1


def test_passthrough_keeps_the_first_sealed_payload_of_a_slot(harness):
    """Sealed payloads carry a fresh nonce per answer: not comparable. A confirming
    read in passthrough mode keeps the payload stored first, no conflict."""
    harness.options = dataclasses.replace(harness.options, decryption="passthrough")
    [p] = harness.seed(image_retention_days=30, slots=["probe"])
    harness.import_ledger()
    wrap, _ = _wrap({p["id"]: [None, None]})
    [result] = harness.run(wrap=wrap).results
    assert result.outcome is Outcome.ARCHIVED, result.reason
    doc = manifest_doc(harness.store.get(harness.layout.manifest(p["id"])))
    [probe] = _image_slots(doc).values()
    assert probe["payload"] == "aes-256-gcm"


def test_not_ready_rechecks_spend_no_attempts(travel):
    """Four in-progress re-checks, then a 503 after it completes: retry, not failed
    (69a6b5a: "attempts exhausted (5)"). Re-checks back off by their own count."""
    pid = travel.seed(status="in_progress", link_validity_days=14)[0]["id"]
    travel.import_ledger()
    for n in range(4):
        [result] = travel.run().results
        assert result.outcome is Outcome.NOT_READY
        entry = travel.catalog.get(pid)
        assert entry.attempts == 0 and entry.checks == n + 1
        wait = timedelta(hours=min(2**n, 6))  # doubling per check, up to retry_cap
        assert entry.next_attempt_at == travel.clock.now() + wait
        travel.advance(wait)
    r = travel.http.post(f"/_sandbox/passes/{pid}/complete", json={})
    assert r.status_code == 200, r.text
    r = travel.http.post(
        "/_sandbox/faults", json={"kind": "status", "status": 503, "count": 1, "pass_id": pid}
    )
    assert r.status_code == 200, r.text
    [result] = travel.run().results
    assert result.outcome is Outcome.RETRY, result.reason
    assert travel.catalog.get(pid).attempts == 1


def test_a_deadline_passing_during_a_run_is_expired_in_that_run(travel):
    """A pass waiting to retry whose window closes while the run works on another is
    ``expired`` in that run's summary and exit code (69a6b5a: only in the next run)."""
    wait = timedelta(days=2)  # the retry is due only after the window has closed
    travel.options = dataclasses.replace(travel.options, retry_base=wait, retry_cap=wait)
    closing = travel.seed(image_retention_days=1, slots=["probe"])[0]["id"]
    travel.import_ledger()
    r = travel.http.post(
        "/_sandbox/faults", json={"kind": "status", "status": 503, "count": 1, "pass_id": closing}
    )
    assert r.status_code == 200, r.text
    assert [r.outcome for r in travel.run().results] == [Outcome.RETRY]
    travel.advance(timedelta(hours=23, minutes=55))
    slow = travel.seed(image_retention_days=30, slots=["probe"])[0]["id"]
    travel.import_ledger()

    def time_passes(read: PassRead) -> PassRead:
        travel.clock.advance(timedelta(minutes=10))  # this read is slow: the window closes
        return read

    wrap, _ = _wrap({slow: [time_passes]})
    summary = travel.run(wrap=wrap)
    got = {r.pass_id: r.outcome for r in summary.results}
    assert got == {slow: Outcome.ARCHIVED, closing: Outcome.EXPIRED}
    assert summary.exit_code == EXIT_EXPIRED
    assert summary.to_json()["expired_ids"] == [closing]


def test_a_reimport_that_completes_a_not_ready_pass_makes_it_due_now(travel):
    """A source that now knows the completion time clears the re-check backoff."""
    pid = travel.seed(status="in_progress")[0]["id"]
    travel.import_ledger()
    assert travel.run().results[0].outcome is Outcome.NOT_READY
    assert travel.catalog.get(pid).next_attempt_at is not None
    r = travel.http.post(f"/_sandbox/passes/{pid}/complete", json={})
    assert r.status_code == 200, r.text
    travel.import_ledger()  # the ledger now has completed_at
    entry = travel.catalog.get(pid)
    assert entry.completed_at is not None and entry.next_attempt_at is None
    [result] = travel.run().results
    assert result.outcome is Outcome.ARCHIVED
