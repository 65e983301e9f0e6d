"""The sandbox's side of the encrypted details answer, written from the scheme the
project documents (the docstring of the client's ``crypto`` module), not sharing
the client's code:

* a cipher key is 32 random bytes, Base64 on the wire;
* each encrypted value is ``Base64(nonce[12] || AES-256-GCM ciphertext || tag[16])``,
  with no associated data;
* an image's plaintext is its raw JPEG; any other string's is its UTF-8 text;
* encrypted are every string leaf below ``verified_identity``, ``ip_address``,
  ``documents``, ``logs`` and ``config.requested_identity``, and every non-null
  value of ``images``;
* the answer says so with ``"payload_encryption": "aes-256-gcm"``.

The client decrypting these answers is then a test of its guess from the other side.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_SENSITIVE = ("verified_identity", "ip_address", "documents", "logs")


def new_key() -> str:
    """A fresh cipher key, as ``/idpass/register`` hands it out."""
    return base64.b64encode(os.urandom(32)).decode("ascii")


def seal(key: bytes, plaintext: bytes) -> str:
    """One encrypted value: a fresh 12-byte nonce, then ciphertext and tag, in Base64."""
    nonce = os.urandom(12)
    return base64.b64encode(nonce + AESGCM(key).encrypt(nonce, plaintext, None)).decode("ascii")


def _seal_strings(key: bytes, value: Any) -> Any:
    if isinstance(value, str):
        return seal(key, value.encode("utf-8"))
    if isinstance(value, dict):
        return {k: _seal_strings(key, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_seal_strings(key, v) for v in value]
    return value


def encrypt_answer(doc: dict[str, Any], cipher_key: str) -> dict[str, Any]:
    """``doc`` (images as Base64 JPEG) as the API sends it without ``cipher_key``."""
    key = base64.b64decode(cipher_key, validate=True)
    out = {k: (_seal_strings(key, v) if k in _SENSITIVE else v) for k, v in doc.items()}
    config = out.get("config")
    if isinstance(config, dict) and "requested_identity" in config:
        out["config"] = {
            **config,
            "requested_identity": _seal_strings(key, config["requested_identity"]),
        }
    images = out.get("images")
    if isinstance(images, dict):
        out["images"] = {
            slot: seal(key, base64.b64decode(v)) if isinstance(v, str) else v
            for slot, v in images.items()
        }
    out["payload_encryption"] = "aes-256-gcm"
    return out


__all__ = ["encrypt_answer", "new_key", "seal"]
