"""``idpass-archiver export``: hand an auditor one pass's images and record.

Reads the pass's manifest (its signature must verify under a trusted key, and it must
name the pass: else an ``untrusted_manifest`` ExportError), fetches every listed object at
its recorded version, checks its SHA-256, decrypts age-encrypted objects with the
given identity file and checks the plaintext SHA-256, and writes the files under
``DIR/<pass_id>/`` (``images/<slot>.jpg``, ``record.json``, ``SHA256SUMS`` of the
written files). Decrypted personal data goes only where the auditor asks.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from archiver.core.format import (
    AGE_SUFFIX,
    SUMS,
    Layout,
    ObjectEntry,
    PassManifest,
    signature_key,
)
from archiver.core.signing import Verifier, trusted_pass_manifest
from archiver.errors import ArchiverError, ObjectNotFound, StoreError, UntrustedManifest
from archiver.store import ObjectStore


class ExportError(ArchiverError):
    """The pass cannot be exported intact (nothing partial is claimed as good)."""


def load_identities(path: Path) -> list[Any]:
    from pyrage import x25519

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ExportError(f"cannot read identity file {path} ({exc.strerror})") from None
    ids = []
    for line in lines:
        line = line.strip()
        if line.startswith("AGE-SECRET-KEY-"):
            try:
                ids.append(x25519.Identity.from_str(line))
            except Exception:
                raise ExportError(f"{path}: a line is not a valid age identity") from None
    if not ids:
        raise ExportError(f"{path} holds no age identity (AGE-SECRET-KEY-...)")
    return ids


def export_pass(
    store: ObjectStore,
    layout: Layout,
    pass_id: str,
    trusted: list[Verifier],
    identities: list[Any],
    to_dir: Path,
) -> list[Path]:
    manifest = _signed_manifest(store, layout, pass_id, trusted)
    out_dir = to_dir / pass_id
    written: list[tuple[Path, str]] = []
    for entry in manifest.objects:
        if entry.role == "checksums":
            continue
        body = _fetch(store, entry)
        rel = layout.relative(pass_id, entry.key)
        if entry.age_encrypted:
            body = _decrypt(entry, body, identities)
            rel = rel.removesuffix(AGE_SUFFIX)
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
        written.append((target, hashlib.sha256(body).hexdigest()))
    sums = "".join(f"{d}  {p.relative_to(out_dir)}\n" for p, d in sorted(written))
    (out_dir / SUMS).write_text(sums, encoding="ascii")
    return [p for p, _ in written]


def _signed_manifest(
    store: ObjectStore, layout: Layout, pass_id: str, trusted: list[Verifier]
) -> PassManifest:
    """The pass's manifest, once it is the pass's commit: its signature verifies under
    a trusted key, this build can read its format, and it names this pass (a signed
    manifest of another pass copied here would export that pass's objects)."""
    mkey = layout.manifest(pass_id)
    try:
        data = store.get(mkey)
        sig = _signature(store, signature_key(mkey))
    except StoreError as exc:
        raise ExportError(f"pass {pass_id}: {exc.message}") from None
    try:
        return trusted_pass_manifest(data, sig, key=mkey, pass_id=pass_id, trusted=trusted)
    except UntrustedManifest as exc:
        advice = "; nothing is exported"
        if exc.problem == "invalid_manifest":
            advice = "; use an idpass-archiver release that reads it"
        raise ExportError(f"pass {pass_id}: {exc.reason}: {exc.message}{advice}") from None


def _signature(store: ObjectStore, key: str) -> bytes | None:
    """The detached signature at ``key``, or None when there is none."""
    try:
        return store.get(key)
    except ObjectNotFound:
        return None


def _fetch(store: ObjectStore, entry: ObjectEntry) -> bytes:
    try:
        body = store.get(entry.key, version_id=entry.version_id)
    except StoreError as exc:
        raise ExportError(f"{entry.key}: {exc.message}") from None
    if hashlib.sha256(body).hexdigest() != entry.sha256:
        raise ExportError(f"{entry.key}: content differs from the manifest")
    return body


def _decrypt(entry: ObjectEntry, body: bytes, identities: list[Any]) -> bytes:
    import pyrage

    if not identities:
        raise ExportError("the archive is age-encrypted: pass --identity FILE")
    try:
        plain: bytes = pyrage.decrypt(body, identities)
    except Exception:
        raise ExportError(f"{entry.key}: no given identity opens it") from None
    if hashlib.sha256(plain).hexdigest() != entry.plaintext_sha256:
        raise ExportError(f"{entry.key}: decrypted content differs from the manifest")
    return plain
