import base64
import hashlib

import pytest

from archiver.core.images import (
    check_image,
    check_jpeg,
    decode_base64,
    valid_slot_name,
)
from archiver.errors import ImageDecodeError
from tests.helpers import make_jpeg, make_png


def test_decode_and_check_returns_bytes_dimensions_and_hash():
    """A valid Base64 JPEG decodes to its bytes, real dimensions and SHA-256."""
    jpeg = make_jpeg(40, 30)
    img = check_image("probe", decode_base64(base64.b64encode(jpeg).decode(), max_bytes=10**6))
    assert img.data == jpeg
    assert (img.width, img.height) == (40, 30)
    assert img.sha256 == hashlib.sha256(jpeg).hexdigest()
    assert img.size == len(jpeg)


@pytest.mark.parametrize(
    "text",
    ["not base64!!", "QUJD\nREVG", "QUJDRA=", "🙂🙂🙂🙂"],
)
def test_invalid_base64_is_rejected(text):
    """Base64 with bad characters, line breaks or bad padding is rejected."""
    with pytest.raises(ImageDecodeError, match="Base64"):
        decode_base64(text, max_bytes=10**6)


def test_empty_string_is_rejected():
    """An empty image string is an error, not an empty image."""
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_base64("", max_bytes=10**6)


def test_oversize_image_is_rejected_before_decoding():
    """An image over the size limit is refused with the limit named."""
    text = base64.b64encode(b"\xff" * 5000).decode()
    with pytest.raises(ImageDecodeError, match="size limit of 4000"):
        decode_base64(text, max_bytes=4000)


def test_truncated_jpeg_is_rejected():
    """A JPEG cut short has no end marker and is rejected."""
    jpeg = make_jpeg()
    with pytest.raises(ImageDecodeError, match="end marker"):
        check_jpeg(jpeg[: len(jpeg) // 2])


def test_png_is_rejected_as_not_jpeg():
    """A PNG is named as such in the error."""
    with pytest.raises(ImageDecodeError, match="PNG"):
        check_jpeg(make_png())


def test_markers_without_a_decodable_header_are_rejected():
    """SOI and EOI around garbage do not pass the header decode."""
    with pytest.raises(ImageDecodeError, match="header"):
        check_jpeg(b"\xff\xd8" + b"\x00" * 200 + b"\xff\xd9")


def test_check_image_reports_slot_and_hides_bytes_in_repr():
    """The repr of a checked image never shows its bytes."""
    img = check_image("document_1_front", make_jpeg())
    assert "document_1_front" in repr(img)
    assert "\\x" not in repr(img)


@pytest.mark.parametrize(
    ("slot", "ok"),
    [
        ("probe", True),
        ("document_3_back", True),
        ("../etc", False),
        ("Probe", False),
        ("", False),
        ("probe\n", False),  # `$` let a final newline through: images/probe\n.jpg
    ],
)
def test_slot_names_safe_for_keys(slot, ok):
    """Only lowercase word characters may become part of an object key."""
    assert valid_slot_name(slot) is ok
