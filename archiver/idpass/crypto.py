"""The encrypted-payload format of ID Pass responses: every guess about it lives here.

When ``/idpass/details`` is called without ``cipher_key``, GlobalData returns the
sensitive fields encrypted with the pass's cipher key (a Base64 AES-256 key returned
once by ``/idpass/register``). The exact format is not public. The project's stance
is:

* each encrypted value is a JSON string: ``Base64(nonce[12] || ciphertext || tag[16])``,
  AES-256-GCM, no associated data;
* for an **image** the plaintext is the raw JPEG bytes;
* for any other **string** value the plaintext is its UTF-8 text;
* the encrypted values are every string leaf below :data:`ENCRYPTED_TOP_LEVEL` keys,
  below ``config.requested_identity``, and every non-null value of ``images``;
* an encrypted response carries ``"payload_encryption": "aes-256-gcm"`` at top level.

The sandbox encrypts with :func:`encrypt_response`; the archiver decrypts with
:func:`decrypt_response` (local mode). Both sides use this one module.
"""

from __future__ import annotations

import binascii
import os
from collections.abc import Callable
from typing import Any

import pybase64
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from archiver.core.images import Base64Text
from archiver.errors import DecryptionError

NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
MARKER_FIELD = "payload_encryption"
MARKER_VALUE = "aes-256-gcm"
ENCRYPTED_TOP_LEVEL = ("verified_identity", "ip_address", "documents", "logs")
IMAGES_FIELD = "images"


def parse_key(cipher_key: str) -> bytes:
    """Decode a Base64 cipher key into 32 raw bytes; the message never echoes the key."""
    try:
        raw = pybase64.b64decode(cipher_key, validate=True)
    except (binascii.Error, ValueError):
        raise DecryptionError("cipher key is not valid Base64") from None
    if len(raw) != KEY_BYTES:
        raise DecryptionError(f"cipher key must be {KEY_BYTES} bytes, got {len(raw)}")
    return raw


def new_key() -> str:
    """A fresh random cipher key in the API's Base64 form."""
    return pybase64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def encrypt_value(key: bytes, plaintext: bytes, nonce: bytes | None = None) -> str:
    nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, plaintext, None)
    return pybase64.b64encode(nonce + sealed).decode("ascii")


def decrypt_value(key: bytes, token: Base64Text) -> bytes:
    """Open one encrypted value. Raises :class:`DecryptionError` on any failure."""
    try:
        blob = pybase64.b64decode(token, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise DecryptionError("encrypted value is not valid Base64") from None
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise DecryptionError("encrypted value is too short")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], None)
    except InvalidTag:
        raise DecryptionError("wrong cipher key or tampered value (GCM tag mismatch)") from None


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return value


def _transform(
    doc: dict[str, Any],
    text_fn: Callable[[str], str],
    image_fn: Callable[[Base64Text], Base64Text],
) -> dict[str, Any]:
    out = dict(doc)
    for field in ENCRYPTED_TOP_LEVEL:
        if field in out:
            out[field] = _map_strings(out[field], text_fn)
    config = out.get("config")
    if isinstance(config, dict) and "requested_identity" in config:
        config = dict(config)
        config["requested_identity"] = _map_strings(config["requested_identity"], text_fn)
        out["config"] = config
    images = out.get(IMAGES_FIELD)
    if isinstance(images, dict):
        out[IMAGES_FIELD] = {
            slot: (image_fn(v) if isinstance(v, str | bytes | memoryview) else v)
            for slot, v in images.items()
        }
    return out


def encrypt_response(doc: dict[str, Any], cipher_key: str) -> dict[str, Any]:
    """Encrypt a plaintext details document (images as Base64 JPEG) the way the API does."""
    key = parse_key(cipher_key)

    def text(s: str) -> str:
        return encrypt_value(key, s.encode("utf-8"))

    def image(b64: Base64Text) -> str:
        return encrypt_value(key, pybase64.b64decode(b64))

    out = _transform(doc, text, image)
    out[MARKER_FIELD] = MARKER_VALUE
    return out


def decrypt_response(
    doc: dict[str, Any], cipher_key: str, *, images: bool = True
) -> dict[str, Any]:
    """Decrypt every encrypted field; images come back as Base64 JPEG, as in server mode.

    With ``images=False`` the image tokens are left encrypted, for the caller to open
    straight to bytes with :func:`decrypt_value` (no Base64 round trip). The marker
    field is then kept, since the images are still encrypted.
    """
    key = parse_key(cipher_key)

    def text(s: str) -> str:
        try:
            return decrypt_value(key, s).decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptionError("decrypted text field is not UTF-8") from None

    def image(token: Base64Text) -> str:
        return pybase64.b64encode(decrypt_value(key, token)).decode("ascii")

    def keep(token: Base64Text) -> Base64Text:
        return token

    out = _transform(doc, text, image if images else keep)
    if images:
        out.pop(MARKER_FIELD, None)
    return out


def is_encrypted(doc: dict[str, Any]) -> bool:
    return doc.get(MARKER_FIELD) == MARKER_VALUE
