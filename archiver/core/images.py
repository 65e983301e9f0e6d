"""Decode, check and hash images (pure functions)."""

from __future__ import annotations

import binascii
import hashlib
import io
import re
from dataclasses import dataclass

import pybase64
from PIL import Image, UnidentifiedImageError

from archiver.errors import ImageDecodeError

# Base64 text as the client hands it on: a view into the response body (the usual
# case), bytes, or a str where the JSON string had escapes.
Base64Text = str | bytes | memoryview

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
# Matched whole (fullmatch): with ``$`` a trailing newline got through ("probe\n").
# The manifest schema's slot pattern is the same: ^[a-z0-9_]{1,64}(?![\s\S])
_SLOT_RE = re.compile(r"[a-z0-9_]{1,64}")


@dataclass(frozen=True, slots=True)
class CheckedImage:
    """A decoded JPEG that passed the checks, with its SHA-256 (hex) computed once."""

    slot: str
    data: bytes
    sha256: str
    width: int
    height: int
    # passthrough: ``data`` is the API's encrypted payload, not a checked JPEG
    sealed: bool = False

    @property
    def size(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:  # never print image bytes
        return f"CheckedImage(slot={self.slot!r}, size={self.size}, sha256={self.sha256[:12]}…)"


def valid_slot_name(slot: str) -> bool:
    """A slot name we are willing to put into an object key."""
    return _SLOT_RE.fullmatch(slot) is not None


def decode_base64(text: Base64Text, *, slot: str | None = None, max_bytes: int) -> bytes:
    """Strict Base64 → bytes. Whitespace or invalid characters are rejected."""
    if not text:
        raise ImageDecodeError("image is an empty string", slot=slot)
    # Base64 expands 3 bytes into 4 characters: refuse before decoding an oversize image.
    if len(text) // 4 * 3 > max_bytes + 2:
        raise ImageDecodeError(f"image exceeds the size limit of {max_bytes} bytes", slot=slot)
    try:
        data: bytes = pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageDecodeError(_not_base64(text), slot=slot) from None
    if len(data) > max_bytes:
        raise ImageDecodeError(f"image exceeds the size limit of {max_bytes} bytes", slot=slot)
    return data


def _not_base64(text: Base64Text) -> str:
    """Why Base64 text did not decode, as far as can be said without repeating it."""
    head = text[:5]
    if (head.encode("latin-1", "replace") if isinstance(head, str) else bytes(head)) == b"data:":
        return "image is a data URI that is not data:image/...;base64 (not valid Base64)"
    return "image is not valid Base64"


def check_jpeg(data: bytes, *, slot: str | None = None) -> tuple[int, int]:
    """SOI/EOI markers plus a real header decode; returns (width, height)."""
    if not data:
        raise ImageDecodeError("image is empty", slot=slot)
    if not data.startswith(SOI):
        kind = "PNG" if data.startswith(b"\x89PNG") else "not a JPEG"
        raise ImageDecodeError(f"image has no JPEG start marker ({kind})", slot=slot)
    # A JPEG may be followed by padding; the EOI marker must be in the last bytes.
    if EOI not in data[-64:]:
        raise ImageDecodeError("image has no JPEG end marker (truncated?)", slot=slot)
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageDecodeError("image header does not decode as JPEG", slot=slot) from None
    if width <= 0 or height <= 0:
        raise ImageDecodeError("image has no dimensions", slot=slot)
    return width, height


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_image(slot: str, data: bytes) -> CheckedImage:
    """Check decoded bytes and hash them once."""
    width, height = check_jpeg(data, slot=slot)
    return CheckedImage(slot=slot, data=data, sha256=sha256_hex(data), width=width, height=height)


def sealed_payload(slot: str, token: Base64Text, *, max_bytes: int) -> CheckedImage:
    """Passthrough: an encrypted image token (Base64 of nonce || ciphertext || tag) kept
    as received. Only its form can be checked: no JPEG check is possible."""
    data = decode_base64(token, slot=slot, max_bytes=max_bytes + 28)
    if len(data) < 12 + 16 + 1:
        raise ImageDecodeError("encrypted image payload is too short", slot=slot)
    return CheckedImage(
        slot=slot, data=data, sha256=sha256_hex(data), width=0, height=0, sealed=True
    )
