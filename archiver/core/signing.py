"""Ed25519 signatures over the exact bytes of manifests (detached).

``manifest.json.sig`` holds the raw 64-byte signature of ``manifest.json``'s bytes,
so an auditor can check it with the public key alone and no project code::

    openssl pkeyutl -verify -pubin -inkey signing-key.pub.pem -rawin \\
        -in manifest.json -sigfile manifest.json.sig

The key id is the first 16 hex digits of the SHA-256 of the raw 32-byte public key.
The private key is a PKCS#8 PEM file (``openssl genpkey -algorithm ed25519``); the
public key is published as a SubjectPublicKeyInfo PEM.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from archiver.errors import SigningKeyError

__all__ = ["SIGNATURE_BYTES", "Signer", "SigningKeyError", "Verifier", "key_id"]

SIGNATURE_BYTES = 64


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Verifier:
    public: Ed25519PublicKey

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def verify(self, data: bytes, signature: bytes) -> bool:
        if len(signature) != SIGNATURE_BYTES:
            return False
        try:
            self.public.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def public_pem(self) -> bytes:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def from_pem(cls, pem: bytes) -> Verifier:
        try:
            key = serialization.load_pem_public_key(pem)
        except ValueError:
            raise SigningKeyError("not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SigningKeyError("the public key is not an Ed25519 key")
        return cls(key)


@dataclass(frozen=True)
class Signer:
    private: Ed25519PrivateKey

    def __repr__(self) -> str:  # never show key material
        return f"Signer(key_id={self.key_id!r})"

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.private.public_key())

    @property
    def key_id(self) -> str:
        return key_id(self.private.public_key())

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)

    @classmethod
    def from_pem(cls, pem: bytes) -> Signer:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            raise SigningKeyError("not an unencrypted PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError("the signing key is not an Ed25519 key")
        return cls(key)

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    def private_pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
