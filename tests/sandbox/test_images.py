"""The synthetic JPEG pool and the per-(pass, slot) images built from it."""

from __future__ import annotations

import io
import time

from PIL import Image

from archiver.idpass.models import SLOTS
from archiver.sandbox import images


def test_pool_is_deterministic_and_spans_the_size_range() -> None:
    """The pool renders the same bytes every time, from tens of KB to about 1 MB."""
    pool = images.pool()
    assert len(pool) == len(images.POOL_SPECS)
    first = pool[0]
    _, w, h, noise, quality = images.POOL_SPECS[0]
    assert images.render(w, h, noise, quality, seed=0) == first.jpeg
    sizes = sorted(len(p.jpeg) for p in pool)
    assert 10_000 <= sizes[0] < 50_000
    assert 900_000 <= sizes[-1] <= 1_200_000


def test_pool_renders_quickly() -> None:
    """Rendering the whole pool from scratch stays well under two seconds."""
    start = time.perf_counter()
    for _, w, h, noise, quality in images.POOL_SPECS:
        images.render(w, h, noise, quality, seed=1)
    assert time.perf_counter() - start < 2.0


def test_comment_keeps_the_jpeg_valid_and_jfif_first() -> None:
    """The COM tag goes after the JFIF APP0 segment and the file still decodes."""
    jpeg = images.image_for("0b6f3c9e-6a55-4a43-9d8f-2f0a8f7e3c11", "document_1_front")
    assert jpeg[:4] == b"\xff\xd8\xff\xe0" and jpeg[6:11] == b"JFIF\x00"
    com = jpeg.index(b"\xff\xfe")
    assert com == 4 + int.from_bytes(jpeg[4:6], "big")
    assert b"sandbox:0b6f3c9e-6a55-4a43-9d8f-2f0a8f7e3c11:document_1_front" in jpeg[:200]
    with Image.open(io.BytesIO(jpeg)) as img:
        img.load()
        assert img.format == "JPEG"


def test_images_are_stable_per_pass_and_slot_and_unique_across_them() -> None:
    """The same (pass, slot) always gives the same bytes; different pairs differ."""
    a = [images.image_for("pass-a", slot) for slot in SLOTS]
    assert a == [images.image_for("pass-a", slot) for slot in SLOTS]
    b = [images.image_for("pass-b", slot) for slot in SLOTS]
    assert len(set(a) | set(b)) == 2 * len(SLOTS)


def test_crops_are_small_and_scans_large() -> None:
    """Document scans come from the large pool images, face crops from the small ones."""
    for n in range(20):
        crop = images.image_for(f"p{n}", "id_photo_cropped")
        scan = images.image_for(f"p{n}", "document_1_front")
        assert len(crop) < 100_000 < len(scan)
