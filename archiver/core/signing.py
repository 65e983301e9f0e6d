"""Ed25519 signatures over the exact bytes of manifests (detached).

``manifest.json.sig`` holds the raw 64-byte signature of ``manifest.json``'s bytes,
so an auditor can check it with the public key alone and no project code::

    openssl pkeyutl -verify -pubin -inkey signing-key.pub.pem -rawin \\
        -in manifest.json -sigfile manifest.json.sig

The key id is the first 16 hex digits of the SHA-256 of the raw 32-byte public key.
The private key is a PKCS#8 PEM file (``openssl genpkey -algorithm ed25519``); the
public key is published as a SubjectPublicKeyInfo PEM.

A pass's stored manifest is its commit marker only when :func:`trusted_pass_manifest`
accepts it: the run, ``catalog rebuild`` and ``export`` all ask it, so an object
planted in the bucket never counts as a pass archived.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from archiver.core.format import PassManifest
from archiver.errors import ConfigError, FormatError, SigningKeyError, UntrustedManifest

__all__ = [
    "SIGNATURE_BYTES",
    "Signer",
    "SigningKeyError",
    "Verifier",
    "key_id",
    "trusted_pass_manifest",
]

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


def read_public_keys(paths: Iterable[str | Path], *, key: str | None = None) -> list[Verifier]:
    """The public keys in the PEM files ``paths``; a file that cannot be read or holds
    no Ed25519 public key is a ConfigError (naming the setting ``key`` when given)."""
    keys = []
    for path in paths:
        try:
            keys.append(Verifier.from_pem(Path(path).read_bytes()))
        except OSError as exc:
            raise ConfigError(f"cannot read public key {path} ({exc.strerror})", key=key) from None
        except SigningKeyError as exc:
            raise ConfigError(f"public key {path}: {exc}", key=key) from None
    return keys


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


def trusted_pass_manifest(
    data: bytes,
    signature: bytes | None,
    *,
    key: str,
    pass_id: str,
    trusted: Sequence[Verifier],
) -> PassManifest:
    """The manifest ``data`` stored at ``key`` for ``pass_id``, once it is the pass's
    commit: its detached ``signature`` (None: there is none) verifies under one of
    the ``trusted`` keys, it parses, and it names ``pass_id``. Otherwise raises
    :class:`UntrustedManifest`: the signature is checked before anything is read
    from the bytes, so an unsigned object's content never reaches a message."""
    if signature is None:
        raise UntrustedManifest(
            "unsigned", "has no detached signature (manifest.json.sig)", key=key, pass_id=pass_id
        )
    if not any(v.verify(data, signature) for v in trusted):
        raise UntrustedManifest(
            "bad_signature", "is not signed by a trusted key", key=key, pass_id=pass_id
        )
    try:
        manifest = PassManifest.parse(data)
    except FormatError as exc:
        raise UntrustedManifest(
            "invalid_manifest",
            f"is signed but cannot be read by this build ({exc.message})",
            key=key,
            pass_id=pass_id,
        ) from None
    if manifest.pass_id != pass_id:
        raise UntrustedManifest(
            "wrong_pass_id", "is signed but names another pass", key=key, pass_id=pass_id
        )
    return manifest
