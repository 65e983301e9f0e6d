"""The pipeline benchmark's data: realistic JPEGs, unique per (pass, slot), served cheaply.

A pool of 12 baseline JPEGs (80 KB to 1.2 MB, about 5.2 MB a pass) is rendered once per
process with the sandbox's deterministic renderer. The image of one (pass, slot) is a
pool image chosen by a hash of the two, with a JPEG comment segment carrying
``bench:<pass_id>:<slot>`` inserted after the JFIF header: every archived object is
distinct and its bytes are a pure function of the pass id and slot, so the benchmark
can check any key afterwards (:func:`image_bytes`, :func:`image_sha256`).

The comment is padded so that the header plus comment is a multiple of 3 bytes long.
Base64 then encodes the two parts independently: the Base64 of an image is
``b64(header + comment) + b64(rest)``, where ``b64(rest)`` is computed once per pool
image. A details body is thus a list of byte chunks (the record JSON, a ~100-byte head
per image and the shared pre-encoded tails), built once per pass and written with one
``sendmsg``: the server costs next to nothing per request and holds only the pool
(~6.5 MB of Base64) plus a few KB per pass, at any N.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

import orjson
import pybase64

from archiver.idpass.models import SLOTS
from archiver.sandbox.details import build_details
from archiver.sandbox.images import (
    LARGE,
    MEDIUM,
    SLOT_CLASS,
    SMALL,
    comment_offset,
    comment_segment,
    render,
)
from archiver.sandbox.state import PassRecord, SandboxState

#: (size class, width, height, noise share, JPEG quality): 80 KB ... 1.2 MB
POOL_SPECS: tuple[tuple[str, int, int, float, int], ...] = (
    (SMALL, 440, 560, 0.19, 86),
    (SMALL, 480, 600, 0.22, 88),
    (SMALL, 520, 640, 0.26, 89),
    (MEDIUM, 640, 853, 0.20, 88),
    (MEDIUM, 768, 1024, 0.22, 88),
    (MEDIUM, 800, 1000, 0.25, 90),
    (LARGE, 1100, 720, 0.26, 90),
    (LARGE, 1200, 800, 0.26, 90),
    (LARGE, 1300, 850, 0.30, 91),
    (LARGE, 1400, 900, 0.29, 91),
    (LARGE, 1600, 1000, 0.33, 92),
    (LARGE, 1650, 1050, 0.42, 92),
)
RETENTION_DAYS = 30


@dataclass(frozen=True, slots=True)
class PoolImage:
    size_class: str
    jpeg: bytes
    at: int  # where the comment segment goes
    tail_b64: bytes  # Base64 of jpeg[at:], shared by every pass


@cache
def pool() -> tuple[PoolImage, ...]:
    out = []
    for i, (cls, w, h, noise, quality) in enumerate(POOL_SPECS):
        jpeg = render(w, h, noise, quality, seed=1000 + i)
        at = comment_offset(jpeg)
        out.append(PoolImage(cls, jpeg, at, pybase64.b64encode(jpeg[at:])))
    return tuple(out)


def _pick(pass_id: str, slot: str) -> PoolImage:
    candidates = [p for p in pool() if p.size_class == SLOT_CLASS[slot]]
    digest = hashlib.blake2b(f"{pass_id}:{slot}".encode(), digest_size=4).digest()
    return candidates[int.from_bytes(digest, "big") % len(candidates)]


def _head(img: PoolImage, pass_id: str, slot: str) -> bytes:
    """JFIF header + a COM segment, padded to a multiple of 3 bytes in all."""
    text = f"bench:{pass_id}:{slot}"
    text += " " * ((-(img.at + 4 + len(text))) % 3)
    head = img.jpeg[: img.at] + comment_segment(text)
    assert len(head) % 3 == 0
    return head


def image_bytes(pass_id: str, slot: str) -> bytes:
    img = _pick(pass_id, slot)
    return _head(img, pass_id, slot) + img.jpeg[img.at :]


def image_sha256(pass_id: str, slot: str) -> str:
    img = _pick(pass_id, slot)
    h = hashlib.sha256(_head(img, pass_id, slot))
    h.update(img.jpeg[img.at :])
    return h.hexdigest()


def image_b64_parts(pass_id: str, slot: str) -> tuple[bytes, bytes]:
    """(head, tail): ``head + tail`` is the Base64 of :func:`image_bytes`."""
    img = _pick(pass_id, slot)
    return pybase64.b64encode(_head(img, pass_id, slot)), img.tail_b64


def make_passes(n: int, seed: int, now: datetime) -> list[PassRecord]:
    """``n`` complete passes with all 12 slots, completed an hour ago, retention 30 days.

    Pass ids are a function of ``seed``; cipher keys are random (read them from the
    ledger the server writes)."""
    state = SandboxState(seed=seed)
    return state.create(
        count=n,
        status="complete",
        image_retention_days=RETENTION_DAYS,
        completed_at=now - timedelta(hours=1),
        slots=SLOTS,
    )


def details_chunks(record: PassRecord, now: datetime) -> list[bytes]:
    """The ``/idpass/details`` body (``return_images: true``) of ``record`` as chunks."""
    doc = orjson.dumps(build_details(record, now, return_images=False))
    assert doc.endswith(b"}")
    chunks = []
    pending = doc[:-1] + b',"images":{'
    for i, slot in enumerate(SLOTS):
        head, tail = image_b64_parts(record.id, slot)
        sep = b"," if i else b""
        chunks += [pending + sep + b'"' + slot.encode() + b'":"' + head, tail]
        pending = b'"'
    chunks.append(pending + b"}}")
    return chunks


def image_size(pass_id: str, slot: str) -> int:
    img = _pick(pass_id, slot)
    return len(_head(img, pass_id, slot)) + len(img.jpeg) - img.at
