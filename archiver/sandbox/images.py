"""Synthetic JPEGs for sandbox passes: valid, realistic in size, cheap per request.

At first use a small pool of baseline JPEGs is rendered with Pillow (a gradient
blended with seeded noise; the noise share and quality set the size, from about
20 KB to about 1 MB). Rendering is deterministic, so the pool is the same in every
process. The image of one ``(pass, slot)`` is a pool image chosen by a hash of the
two, made unique by a JPEG comment segment (``0xFFFE``) carrying
``sandbox:<pass_id>:<slot>``. The comment goes right after the JFIF ``APP0``
segment (right after SOI if there is none), so the file stays a conforming JFIF
JPEG that Pillow and every other decoder reads, and it carries no personal data.
"""

from __future__ import annotations

import hashlib
import io
import random
import threading
from dataclasses import dataclass

from PIL import Image

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
APP0 = b"\xff\xe0"
COM = b"\xff\xfe"

# Size classes: crops are small, selfies and id photos medium, document scans large.
SMALL, MEDIUM, LARGE = "small", "medium", "large"

#: (size class, width, height, noise share, JPEG quality) of each pool image.
POOL_SPECS: tuple[tuple[str, int, int, float, int], ...] = (
    (SMALL, 300, 400, 0.10, 85),
    (SMALL, 360, 450, 0.10, 82),
    (SMALL, 400, 500, 0.14, 85),
    (SMALL, 320, 420, 0.25, 88),
    (SMALL, 480, 600, 0.12, 80),
    (MEDIUM, 640, 853, 0.18, 85),
    (MEDIUM, 720, 960, 0.22, 88),
    (MEDIUM, 768, 1024, 0.20, 90),
    (MEDIUM, 600, 800, 0.35, 90),
    (MEDIUM, 800, 1000, 0.28, 86),
    (LARGE, 1280, 800, 0.22, 88),
    (LARGE, 1400, 880, 0.30, 90),
    (LARGE, 1600, 1000, 0.40, 92),
    (LARGE, 1200, 760, 0.45, 92),
    (LARGE, 1500, 950, 0.36, 90),
    (LARGE, 1100, 700, 0.18, 85),
)

SLOT_CLASS: dict[str, str] = {
    "probe": MEDIUM,
    "id_photo": MEDIUM,
    "id_photo_cropped": SMALL,
    **{f"document_{n}_{side}": LARGE for n in (1, 2, 3) for side in ("front", "back")},
    **{f"document_{n}_photo": SMALL for n in (1, 2, 3)},
}


@dataclass(frozen=True, slots=True)
class PoolImage:
    size_class: str
    jpeg: bytes
    insert_at: int  # where the comment segment goes


def render(width: int, height: int, noise: float, quality: int, seed: int) -> bytes:
    """One deterministic baseline JPEG: an RGB gradient blended with seeded noise."""
    rng = random.Random(seed)
    size = (width, height)
    channels = (
        Image.linear_gradient("L").resize(size),
        Image.radial_gradient("L").resize(size),
        Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90).resize(size),
    )
    base = Image.merge("RGB", channels)
    grain = Image.frombytes("RGB", size, rng.randbytes(width * height * 3))
    img = Image.blend(base, grain, noise)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, progressive=False, optimize=False)
    return buf.getvalue()


def comment_offset(jpeg: bytes) -> int:
    """The offset just after SOI and, if present, the JFIF APP0 segment."""
    if not jpeg.startswith(SOI):
        raise ValueError("not a JPEG")
    if jpeg[2:4] == APP0:
        return 4 + int.from_bytes(jpeg[4:6], "big")
    return 2


def comment_segment(text: str) -> bytes:
    """A JPEG COM segment carrying ``text`` (ASCII, < 64 KiB)."""
    payload = text.encode("ascii")
    if len(payload) > 0xFFFF - 2:
        raise ValueError("comment too long")
    return COM + (len(payload) + 2).to_bytes(2, "big") + payload


def with_comment(jpeg: bytes, text: str, at: int | None = None) -> bytes:
    """The JPEG with a COM segment carrying ``text`` inserted."""
    pos = comment_offset(jpeg) if at is None else at
    return b"".join((jpeg[:pos], comment_segment(text), jpeg[pos:]))


_pool: tuple[PoolImage, ...] | None = None
_pool_lock = threading.Lock()


def pool() -> tuple[PoolImage, ...]:
    """The rendered pool, built once per process on first use (thread-safe)."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                images = []
                for i, (cls, w, h, noise, quality) in enumerate(POOL_SPECS):
                    jpeg = render(w, h, noise, quality, seed=i)
                    images.append(PoolImage(cls, jpeg, comment_offset(jpeg)))
                _pool = tuple(images)
    return _pool


def image_for(pass_id: str, slot: str) -> bytes:
    """The JPEG of one (pass, slot): stable across calls, unique across pairs."""
    candidates = [p for p in pool() if p.size_class == SLOT_CLASS.get(slot, MEDIUM)]
    digest = hashlib.blake2b(f"{pass_id}:{slot}".encode(), digest_size=4).digest()
    chosen = candidates[int.from_bytes(digest, "big") % len(candidates)]
    return with_comment(chosen.jpeg, f"sandbox:{pass_id}:{slot}", chosen.insert_at)


def not_a_jpeg() -> bytes:
    """A small, valid PNG: served where a JPEG was expected (the ``not_jpeg`` fault)."""
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()
