"""Cipher keys at rest in the catalog are sealed, never stored in plaintext.

Each per-pass cipher key is encrypted with AES-256-GCM under a key derived (HKDF-
SHA256) from the catalog secret (``$IDPASS_ARCHIVER_CATALOG_KEY`` or
``catalog.key_file``), with the pass id as associated data, so a sealed key cannot
be moved to another pass. Stored form: ``v1:<Base64(nonce || ct || tag)>``.
"""

from __future__ import annotations

import os

import pybase64
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from archiver.errors import CatalogError

_INFO = b"idpass-archiver catalog cipher keys v1"
_PREFIX = "v1:"


class KeySealer:
    def __init__(self, secret: str) -> None:
        if len(secret) < 16:
            raise CatalogError("the catalog key must be at least 16 characters")
        kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO)
        self._aead = AESGCM(kdf.derive(secret.encode("utf-8")))

    def seal(self, pass_id: str, cipher_key: str) -> str:
        nonce = os.urandom(12)
        ct = self._aead.encrypt(nonce, cipher_key.encode("utf-8"), pass_id.encode("utf-8"))
        return _PREFIX + pybase64.b64encode(nonce + ct).decode("ascii")

    def open(self, pass_id: str, sealed: str) -> str:
        if not sealed.startswith(_PREFIX):
            raise CatalogError(f"sealed cipher key of pass {pass_id} has an unknown format")
        try:
            blob = pybase64.b64decode(sealed[len(_PREFIX) :], validate=True)
            return self._aead.decrypt(blob[:12], blob[12:], pass_id.encode("utf-8")).decode()
        except (InvalidTag, ValueError):
            raise CatalogError(
                f"cannot open the sealed cipher key of pass {pass_id}: wrong catalog key?"
            ) from None


def new_catalog_secret() -> str:
    return pybase64.b64encode(os.urandom(32)).decode("ascii")
