"""Faults and wire variants applied on top of a details document, before and after
encryption: spoiled images, slots answered ``null``, ``images: {}``, the other forms
``images`` may travel in, and where to cut a body off mid-image.

Each function changes only the ``images`` of the document it is given, in place
(or returns its new form), so the rest of the answer stays what
:func:`archiver.sandbox.details.build_details` made.
"""

from __future__ import annotations

import random
from typing import Any

import pybase64

from archiver.sandbox import images as sandbox_images

DATA_URI_PREFIX = "data:image/jpeg;base64,"


def _first_image_slot(doc: dict[str, Any]) -> str | None:
    images = doc.get("images")
    if not isinstance(images, dict):
        return None
    return next((k for k, v in images.items() if isinstance(v, str) and v), None)


def spoil_image(doc: dict[str, Any], kind: str) -> None:
    """Spoil the first image: ``not_jpeg`` puts a PNG in its place (call it before
    encryption, so the PNG is encrypted like a JPEG); ``invalid_base64`` and
    ``truncated_base64`` spoil the text that travels (call them after encryption)."""
    slot = _first_image_slot(doc)
    if slot is None:
        return
    images: dict[str, Any] = doc["images"]
    text: str = images[slot]
    if kind == "not_jpeg":
        images[slot] = pybase64.b64encode(sandbox_images.not_a_jpeg()).decode("ascii")
    elif kind == "invalid_base64":
        half = len(text) // 2
        images[slot] = text[:half] + "*%$!" + text[half + 4 :]
    elif kind == "truncated_base64":
        cut = len(text) // 2
        images[slot] = text[: cut - cut % 4 + 2]


def null_slots(doc: dict[str, Any], rng: random.Random, slots: tuple[str, ...] | None) -> None:
    """Answer ``null`` for slots that hold an image: ``slots`` if given (those among
    them that hold one), else one or more drawn from ``rng``."""
    images = doc.get("images")
    if not isinstance(images, dict):
        return
    held = [k for k, v in images.items() if isinstance(v, str) and v]
    if slots is not None:
        chosen = [s for s in held if s in slots]
    elif held:
        chosen = rng.sample(held, rng.randint(1, len(held)))
    else:
        chosen = []
    for slot in chosen:
        images[slot] = None


def empty_images(doc: dict[str, Any]) -> None:
    """``images: {}``, as if the window were closed (only where images were asked for)."""
    if "images" in doc:
        doc["images"] = {}


def reshape_images(doc: dict[str, Any], form: str) -> None:
    """Put ``images`` in ``form`` (``map`` leaves it as it is; see
    :data:`archiver.sandbox.state.IMAGE_FORMS`)."""
    images = doc.get("images")
    if form == "map" or not isinstance(images, dict):
        return
    if form == "data_uri":
        doc["images"] = {
            slot: DATA_URI_PREFIX + v if isinstance(v, str) else v for slot, v in images.items()
        }
    elif form == "image_list":
        doc["images"] = [{"slot": slot, "data": v} for slot, v in images.items()]


def mid_image(body: bytes, doc: dict[str, Any]) -> int:
    """How many bytes of ``body`` (``doc`` serialised) to send so that the cut falls in
    the middle of its first image; half the body if it has none."""
    images = doc.get("images")
    values = images.values() if isinstance(images, dict) else []
    if isinstance(images, list):
        values = [item.get("data") for item in images]
    first = next((v for v in values if isinstance(v, str) and v), None)
    start = body.find(first.encode("ascii")) if first is not None else -1
    if start < 0 or first is None:
        return len(body) // 2
    return start + len(first) // 2


__all__ = [
    "DATA_URI_PREFIX",
    "empty_images",
    "mid_image",
    "null_slots",
    "reshape_images",
    "spoil_image",
]
