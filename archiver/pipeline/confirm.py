"""Confirmed absence: one answer never decides that an image is not there.

Inside the retention window, an answer with no images, or with a slot null, is read
again (``confirm_reads`` times, ``confirm_spacing`` apart, possibly in a later run)
before the pass settles. Confirming reads spend no error attempts. Each read's
checked images are stored at once (same keys as the final plan), and what every read
saw per slot is kept in the catalog (``seen_slots``), so that the commit lists every
slot seen in any read: a slot a later read answers null is still archived.

The memory per slot is the image's plaintext SHA-256, size and dimensions, or
``None`` for a slot answered null. The same bytes again are the same object; other
bytes for the same slot are a conflict for a person (``slot_conflict``). Sealed
payloads (passthrough) carry a fresh nonce per answer and cannot be compared: the
first one stored is kept.

Confirmation never pushes a pass past its deadline: when the next confirming read
(or the next scheduled run, when one is known) would fall after the deadline minus
``confirm_margin``, the pass settles now with what was seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import orjson

from archiver.catalog import CatalogEntry, Outcome
from archiver.clock import isoformat
from archiver.core.images import CheckedImage, valid_slot_name
from archiver.pipeline.options import PipelineOptions
from archiver.results import Learned, PassResult


@dataclass(frozen=True, slots=True)
class SlotSeen:
    """An image a read returned for a slot, as the commit needs to list it."""

    sha256: str  # of the plaintext (the checked JPEG, or the sealed payload as received)
    size: int
    width: int | None
    height: int | None


#: slot -> the image seen, or None: answered null (and no read returned an image)
Seen = dict[str, SlotSeen | None]


def load_seen(text: str | None) -> Seen:
    """The catalog's ``seen_slots`` column, read back (unreadable or absent: empty)."""
    if not text:
        return {}
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    seen: Seen = {}
    if not isinstance(doc, dict):
        return seen
    for slot, v in doc.items():
        if not isinstance(slot, str) or not valid_slot_name(slot):
            continue
        if isinstance(v, list) and len(v) == 4:
            seen[slot] = SlotSeen(str(v[0]), int(v[1]), v[2], v[3])
        elif v is None:
            seen[slot] = None
    return seen


def dump_seen(seen: Seen) -> str:
    doc = {
        s: None if v is None else [v.sha256, v.size, v.width, v.height]
        for s, v in sorted(seen.items())
    }
    return orjson.dumps(doc).decode()


def merge(earlier: Seen, images: list[CheckedImage], null_slots: list[str]) -> Seen:
    """What the reads so far saw: an image seen once stays seen; a slot is null only
    while no read returned an image for it."""
    seen = dict(earlier)
    for slot in null_slots:
        seen.setdefault(slot, None)
    for img in images:
        if seen.get(img.slot) is None:
            dims = (None, None) if img.sealed else (img.width, img.height)
            seen[img.slot] = SlotSeen(img.sha256, len(img.data), *dims)
    return seen


def conflicts(earlier: Seen, images: list[CheckedImage]) -> list[str]:
    """Slots for which this read returned other bytes than an earlier read (sealed
    payloads are not comparable and never conflict)."""
    out = []
    for img in images:
        before = earlier.get(img.slot)
        if before is not None and not img.sealed and before.sha256 != img.sha256:
            out.append(img.slot)
    return sorted(out)


def earlier_only(seen: Seen, images: list[CheckedImage]) -> dict[str, SlotSeen]:
    """Images an earlier read stored that this read did not return."""
    now = {img.slot for img in images}
    return {s: v for s, v in sorted(seen.items()) if v is not None and s not in now}


def needs_confirming(images: list[CheckedImage], null_slots: list[str]) -> bool:
    """An answer that says an image is not there: none at all, or a slot null."""
    return not images or bool(null_slots)


def next_read_at(
    entry: CatalogEntry, now: datetime, deadline: datetime | None, opt: PipelineOptions
) -> datetime | None:
    """When to read the pass again to confirm, or None: settle now (the confirming
    reads are done, or the next one would come too close to the deadline)."""
    if entry.confirmations >= opt.confirm_reads:
        return None
    at = now + opt.confirm_spacing
    if deadline is None:
        return at
    # a read further ahead than a run waits may happen only in the next scheduled run
    later = opt.next_run is not None and opt.confirm_spacing > opt.confirm_wait
    latest = max(at, opt.next_run) if later and opt.next_run is not None else at
    if latest > deadline - opt.confirm_margin:
        return None
    return at


def absent_result(
    pass_id: str,
    learned: Learned,
    *,
    field_present: bool,
    reads: int,
    now: datetime,
    opt: PipelineOptions,
) -> PassResult:
    """The outcome of a pass no read returned an image for: ``expired`` once the
    window has closed, else ``images_absent`` (counted apart from ``no_images``, the
    passes that keep none by design)."""
    deadline = learned.deadline
    if deadline is not None and now >= deadline:
        return PassResult(
            pass_id, Outcome.EXPIRED, f"retention window closed at {isoformat(deadline)}"
        )
    what = "no images" if field_present else "no images field"
    how = "" if reads > opt.confirm_reads else ", too close to the deadline to confirm further"
    reason = (
        f"{what} in {reads} read(s) inside the window{how} "
        "(the API may judge the window by another clock)"
    )
    return PassResult(pass_id, Outcome.IMAGES_ABSENT, reason)
