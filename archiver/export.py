"""``idpass-archiver export``: hand an auditor one pass's images and record.

Reads the pass's manifest (its signature must verify), fetches every listed object at
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

from archiver.core import manifest as mf
from archiver.core.layout import Layout
from archiver.core.signing import Verifier
from archiver.errors import ArchiverError, StoreError
from archiver.store import ObjectStore

AGE_SUFFIX = ".age"


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
    import pyrage

    mkey = layout.manifest(pass_id)
    try:
        data = store.get(mkey)
        sig = store.get(mkey + ".sig")
    except StoreError as exc:
        raise ExportError(f"pass {pass_id}: {exc.message}") from None
    if not any(v.verify(data, sig) for v in trusted):
        raise ExportError(f"pass {pass_id}: the manifest signature does not verify")
    doc = mf.parse_manifest(data)
    out_dir = to_dir / pass_id
    written: list[tuple[Path, str]] = []
    for entry in doc["objects"]:
        if entry["role"] == "checksums":
            continue
        body = store.get(entry["key"], version_id=entry["version_id"])
        if hashlib.sha256(body).hexdigest() != entry["sha256"]:
            raise ExportError(f"{entry['key']}: content differs from the manifest")
        rel = layout.relative(pass_id, entry["key"])
        if "plaintext_sha256" in entry:
            if not identities:
                raise ExportError("the archive is age-encrypted: pass --identity FILE")
            try:
                body = pyrage.decrypt(body, identities)
            except Exception:
                raise ExportError(f"{entry['key']}: no given identity opens it") from None
            if hashlib.sha256(body).hexdigest() != entry["plaintext_sha256"]:
                raise ExportError(f"{entry['key']}: decrypted content differs from the manifest")
            rel = rel.removesuffix(AGE_SUFFIX)
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
        written.append((target, hashlib.sha256(body).hexdigest()))
    sums = "".join(f"{d}  {p.relative_to(out_dir)}\n" for p, d in sorted(written))
    (out_dir / "SHA256SUMS").write_text(sums, encoding="ascii")
    return [p for p, _ in written]
