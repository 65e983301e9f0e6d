"""The object plan of one pass: which objects to store, under which keys, as what.

Pure: no I/O, no clock. The three ways a pass is stored differ only here:

* plain: checked JPEGs at ``images/{slot}.jpg`` and ``record.json``;
* passthrough: each image as the API sealed it (``images/{slot}.jpg.aes256gcm``),
  stored as received, with no JPEG check possible;
* age: every image and the record encrypted to the configured age recipients before
  the put, each key ending in ``.age``.

The commit protocol (:mod:`archiver.pipeline.commit`) stores what the plan lists,
then ``SHA256SUMS`` and the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from archiver.core.format import (
    AGE_SUFFIX,
    AGE_TYPE,
    JPEG_TYPE,
    JSON_TYPE,
    OCTET_TYPE,
    SEALED_PAYLOAD,
    Layout,
)
from archiver.core.images import CheckedImage, sha256_hex


@dataclass(frozen=True, slots=True)
class ObjectSpec:
    """One object to store for a pass."""

    role: Literal["image", "record"]
    key: str
    data: bytes  # the plaintext: a checked JPEG, a sealed payload, or the record
    sha256: str  # of ``data``
    content_type: str  # of the stored object
    # Encrypt ``data`` to the age recipients before the put. age output is
    # randomised, so the stored object's hash is known only after encrypting.
    encrypt: bool = False
    # An earlier, uncommitted attempt may have stored other bytes at this key that
    # are just as genuine (a record read a minute earlier, an age ciphertext of the
    # same image): keep that object and list it as it is, instead of a conflict.
    adopt: bool = False
    slot: str | None = None
    width: int | None = None
    height: int | None = None
    payload: str | None = None  # SEALED_PAYLOAD for a passthrough image

    @property
    def size(self) -> int:
        return len(self.data)


def plan_objects(
    layout: Layout,
    pass_id: str,
    images: list[CheckedImage],
    record: bytes,
    *,
    age: bool,
) -> list[ObjectSpec]:
    """The images (in the order given), then the record."""
    specs = [_image(layout, pass_id, img, age=age) for img in images]
    specs.append(
        ObjectSpec(
            role="record",
            key=layout.record(pass_id) + (AGE_SUFFIX if age else ""),
            data=record,
            sha256=sha256_hex(record),
            content_type=AGE_TYPE if age else JSON_TYPE,
            encrypt=age,
            adopt=True,
        )
    )
    return specs


def image_key(
    layout: Layout, pass_id: str, slot: str, *, sealed: bool, age: bool
) -> tuple[str, str]:
    """The key and content type of an image object."""
    key = layout.image(pass_id, slot, sealed=sealed) + (AGE_SUFFIX if age else "")
    return key, AGE_TYPE if age else OCTET_TYPE if sealed else JPEG_TYPE


def plan_images(
    layout: Layout, pass_id: str, images: list[CheckedImage], *, age: bool
) -> list[ObjectSpec]:
    """The images alone: what a read stores before a confirming read."""
    return [_image(layout, pass_id, img, age=age) for img in images]


def _image(layout: Layout, pass_id: str, img: CheckedImage, *, age: bool) -> ObjectSpec:
    key, ctype = image_key(layout, pass_id, img.slot, sealed=img.sealed, age=age)
    return ObjectSpec(
        role="image",
        key=key,
        data=img.data,
        sha256=img.sha256,
        content_type=ctype,
        encrypt=age,
        # age ciphertexts and sealed payloads of the same image differ per encryption
        # (a fresh nonce): not byte-comparable, an earlier read's object is kept
        adopt=age or img.sealed,
        slot=img.slot,
        width=None if img.sealed else img.width,
        height=None if img.sealed else img.height,
        payload=SEALED_PAYLOAD if img.sealed else None,
    )
