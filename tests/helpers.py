"""Small helpers shared by tests (no fixtures here: those live in tests/fixtures/)."""

from __future__ import annotations

import io
import random

from PIL import Image


def make_jpeg(width: int = 64, height: int = 48, seed: int = 0, quality: int = 85) -> bytes:
    """A small, real baseline JPEG."""
    rng = random.Random(seed)
    img = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_png(width: int = 16, height: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()
