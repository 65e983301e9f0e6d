"""The pass manifest: the audit record of one archived pass.

Format (version 2, published as ``config/schemas/pass-manifest.v2.schema.json``;
version 1, read still, had one ``missing_slots`` list where version 2 tells a slot
answered null from one never present):
canonical JSON (UTF-8, keys sorted, no insignificant whitespace, integers only, no
floats), so the same content always gives the same bytes and the same SHA-256. It
holds ids, hashes, sizes, slot names, timestamps and settings: never personal data.
The reader is :meth:`archiver.core.format.PassManifest.parse`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from archiver.clock import isoformat
from archiver.core.format import (
    MANIFEST_KIND,
    MANIFEST_SCHEMA,
    MANIFEST_VERSION,
    ObjectEntry,
    PassFacts,
    validate_against,
)
from archiver.core.images import sha256_hex


@dataclass(frozen=True, slots=True)
class SlotReport:
    """The slots a pass manifest lists without an image, and how many reads saw it.

    ``null_slots``: answered null by a read, returned with an image by none;
    ``absent_slots``: slots of the API's list no read mentioned at all."""

    null_slots: tuple[str, ...] = ()
    absent_slots: tuple[str, ...] = ()
    reads: int = 1


def canonical_json(doc: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, compact, UTF-8, floats refused."""
    _refuse_floats(doc)
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def _refuse_floats(value: Any) -> None:
    if isinstance(value, float):
        raise TypeError("canonical JSON holds no floats")
    if isinstance(value, dict):
        for v in value.values():
            _refuse_floats(v)
    elif isinstance(value, list):
        for v in value:
            _refuse_floats(v)


def _ts(value: datetime | None) -> str | None:
    return isoformat(value) if value is not None else None


def build_manifest(
    *,
    pass_id: str,
    run_id: str,
    archived_at: datetime,
    archiver_version: str,
    facts: PassFacts,
    objects: list[ObjectEntry],
    slots: SlotReport,
    decryption: str,
    sse: str,
    kms_key_id: str | None,
    signing_key_id: str,
    age_recipients: list[str] | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "kind": MANIFEST_KIND,
        "pass_id": pass_id,
        "run_id": run_id,
        "archived_at": isoformat(archived_at),
        "archiver_version": archiver_version,
        "pass": {
            "status": facts.status,
            "verification_status": facts.verification_status,
            "created_at": _ts(facts.created_at),
            "completed_at": _ts(facts.completed_at),
            "image_retention_days": facts.image_retention_days,
            "images_deadline": _ts(facts.images_deadline),
        },
        "source": {"endpoint": "/idpass/details", "decryption": decryption},
        "encryption": {"sse": sse, "kms_key_id": kms_key_id},
        "signing": {"algorithm": "ed25519", "key_id": signing_key_id},
        "objects": [o.to_json() for o in sorted(objects, key=lambda o: o.key)],
        "null_slots": sorted(slots.null_slots),
        "absent_slots": sorted(slots.absent_slots),
        "reads": slots.reads,
        "image_count": sum(1 for o in objects if o.role == "image"),
        "image_bytes": sum(
            o.plaintext_size if o.plaintext_size is not None else o.size
            for o in objects
            if o.role == "image"
        ),
    }
    if age_recipients:
        doc["client_side_encryption"] = {"format": "age", "recipients": sorted(age_recipients)}
    return doc


def sha256sums(entries: list[tuple[str, str]]) -> bytes:
    """``sha256sum -c`` format: ``<hex>  <relative path>`` lines, sorted by path."""
    lines = [f"{digest}  {path}\n" for path, digest in sorted(entries)]
    return "".join(lines).encode("ascii")


def validate(doc: dict[str, Any]) -> None:
    """Raise :class:`~archiver.errors.FormatError` unless ``doc`` is a valid manifest
    of the version this build writes."""
    validate_against(MANIFEST_SCHEMA, doc, "manifest_version", MANIFEST_VERSION)


def manifest_bytes(doc: dict[str, Any], *, check: bool = True) -> tuple[bytes, str]:
    """Validate (unless ``check`` is false), serialise canonically, and hash a manifest.

    The pipeline passes ``check=False``: its manifests come from :func:`build_manifest`
    alone, and validating each one against the JSON Schema cost 2.7 ms of CPU a pass,
    a fifth of the archiver's own work besides I/O. The tests validate what
    :func:`build_manifest` produces in every shape (images, sealed, age, missing slots),
    and ``verify`` and the auditor recipe validate every stored manifest.
    """
    if check:
        validate(doc)
    data = canonical_json(doc)
    return data, sha256_hex(data)
