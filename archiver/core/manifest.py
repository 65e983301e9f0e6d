"""The pass manifest: the audit record of one archived pass.

Format (version 1, published as ``config/schemas/pass-manifest.v1.schema.json``):
canonical JSON (UTF-8, keys sorted, no insignificant whitespace, integers only, no
floats), so the same content always gives the same bytes and the same SHA-256. It
holds ids, hashes, sizes, slot names, timestamps and settings: never personal data.
A manifest whose ``manifest_version`` is unknown is rejected on read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson

from archiver.clock import isoformat
from archiver.core.images import sha256_hex

if TYPE_CHECKING:
    import jsonschema

MANIFEST_VERSION = 1
KIND = "idpass-archiver/pass-manifest"
SCHEMA_FILE = "pass-manifest.v1.schema.json"


class ManifestFormatError(ValueError):
    """Bytes that are not a manifest this version of the archiver understands."""


@dataclass(frozen=True, slots=True)
class ObjectEntry:
    role: str  # "image" | "record" | "checksums"
    key: str
    size: int
    sha256: str
    content_type: str
    version_id: str | None
    slot: str | None = None
    width: int | None = None
    height: int | None = None
    retain_until: datetime | None = None
    lock_mode: str | None = None
    payload: str | None = None  # "aes-256-gcm" in passthrough mode
    plaintext_sha256: str | None = None  # with client-side (age) encryption
    plaintext_size: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "role": self.role,
            "key": self.key,
            "size": self.size,
            "sha256": self.sha256,
            "content_type": self.content_type,
            "version_id": self.version_id,
        }
        if self.slot is not None:
            out["slot"] = self.slot
        if self.payload is not None:
            out["payload"] = self.payload
        if self.plaintext_sha256 is not None and self.plaintext_size is not None:
            out["plaintext_sha256"] = self.plaintext_sha256
            out["plaintext_size"] = self.plaintext_size
        if self.width is not None and self.height is not None:
            out["width"] = self.width
            out["height"] = self.height
        if self.retain_until is not None and self.lock_mode is not None:
            out["retain_until"] = isoformat(self.retain_until)
            out["lock_mode"] = self.lock_mode
        return out


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
    status: str,
    verification_status: str | None,
    created_at: datetime | None,
    completed_at: datetime | None,
    image_retention_days: int | None,
    images_deadline: datetime | None,
    objects: list[ObjectEntry],
    missing_slots: list[str],
    decryption: str,
    sse: str,
    kms_key_id: str | None,
    signing_key_id: str,
    age_recipients: list[str] | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "kind": KIND,
        "pass_id": pass_id,
        "run_id": run_id,
        "archived_at": isoformat(archived_at),
        "archiver_version": archiver_version,
        "pass": {
            "status": status,
            "verification_status": verification_status,
            "created_at": _ts(created_at),
            "completed_at": _ts(completed_at),
            "image_retention_days": image_retention_days,
            "images_deadline": _ts(images_deadline),
        },
        "source": {"endpoint": "/idpass/details", "decryption": decryption},
        "encryption": {"sse": sse, "kms_key_id": kms_key_id},
        "signing": {"algorithm": "ed25519", "key_id": signing_key_id},
        "objects": [o.to_json() for o in sorted(objects, key=lambda o: o.key)],
        "missing_slots": sorted(missing_slots),
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


@cache
def load_schema(name: str) -> dict[str, Any]:
    text = resources.files("archiver.schemas").joinpath(name).read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def schema() -> dict[str, Any]:
    return load_schema(SCHEMA_FILE)


@cache
def _validator(schema_file: str) -> jsonschema.Draft202012Validator:
    """One validator per schema (building it costs more than validating a manifest).
    jsonschema (about 27 ms to import) is imported here, on first use: commands that
    validate nothing (status, report, enqueue, ...) never load it."""
    import jsonschema

    return jsonschema.Draft202012Validator(load_schema(schema_file))


def validate_against(schema_file: str, doc: Any, version_field: str, version: int) -> None:
    """Raise :class:`ManifestFormatError` unless ``doc`` is valid against the schema."""
    found = doc.get(version_field) if isinstance(doc, dict) else None
    if found != version:
        raise ManifestFormatError(f"unknown {version_field} {found!r}")
    errors = sorted(_validator(schema_file).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(root)"
        raise ManifestFormatError(
            f"document does not match the schema at {where}: {first.validator} check failed"
        )


def validate(doc: dict[str, Any]) -> None:
    """Raise :class:`ManifestFormatError` unless ``doc`` is a valid version-1 manifest."""
    validate_against(SCHEMA_FILE, doc, "manifest_version", MANIFEST_VERSION)


def parse_manifest(data: bytes) -> dict[str, Any]:
    """Bytes → validated manifest dict. Rejects unknown versions."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ManifestFormatError("manifest is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ManifestFormatError("manifest is not a JSON object")
    validate(doc)
    return doc


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
