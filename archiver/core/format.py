"""The archive format: every object key, suffix and content type, and typed readers.

This module is the one place that knows how the bucket is laid out and how its
manifests read back. Keys hold only opaque ids and slot names, never personal data::

    {prefix}/passes/{pass_id}/images/{slot}.jpg               a checked JPEG
    {prefix}/passes/{pass_id}/images/{slot}.jpg.aes256gcm     passthrough: as the API sealed it
    {prefix}/passes/{pass_id}/record.json                     the verification record
    {prefix}/passes/{pass_id}/SHA256SUMS                      ``sha256sum -c`` list
    {prefix}/passes/{pass_id}/manifest.json                   written last: the commit marker
    {prefix}/passes/{pass_id}/manifest.json.sig               its detached Ed25519 signature
    {prefix}/runs/{yyyy}/{mm}/{dd}/{run_id}.json              the signed run manifest
    {prefix}/runs/{yyyy}/{mm}/{dd}/{run_id}.json.sig
    {prefix}/keys/{key_id}.pub.pem                            a copy of the public key

With client-side (age) encryption every image and record key ends in ``.age``.

Readers: :meth:`PassManifest.parse` and :meth:`RunManifest.parse` take the stored
bytes, validate them against the published JSON Schema of their version, and return
typed values. Bytes of an unknown version, or not matching the schema, raise
:class:`~archiver.errors.FormatError` (not retryable: reading them again changes
nothing). Writers live beside their builders (:mod:`archiver.core.manifest`,
:mod:`archiver.core.runlog`) and use the names defined here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson

from archiver.clock import isoformat
from archiver.errors import FormatError

if TYPE_CHECKING:
    import jsonschema

# -- names ----------------------------------------------------------------------------

MANIFEST = "manifest.json"
RECORD = "record.json"
SUMS = "SHA256SUMS"
SIG_SUFFIX = ".sig"  # a detached signature beside the object it signs
AGE_SUFFIX = ".age"  # client-side encryption to age recipients
SEALED_SUFFIX = ".jpg.aes256gcm"  # passthrough: the API's encrypted payload
IMAGE_SUFFIX = ".jpg"

JPEG_TYPE = "image/jpeg"
JSON_TYPE = "application/json"
SUMS_TYPE = "text/plain; charset=us-ascii"
OCTET_TYPE = "application/octet-stream"  # signatures and sealed payloads
AGE_TYPE = "application/age-encryption"
PEM_TYPE = "application/x-pem-file"

SEALED_PAYLOAD = "aes-256-gcm"  # an image entry's ``payload`` in passthrough mode

# Versioning: a change readers must know about is a new version with its own schema
# file; this build writes MANIFEST_VERSION and reads every version in MANIFEST_SCHEMAS.
MANIFEST_VERSION = 2
MANIFEST_KIND = "idpass-archiver/pass-manifest"
MANIFEST_SCHEMA = "pass-manifest.v2.schema.json"
MANIFEST_SCHEMAS = {1: "pass-manifest.v1.schema.json", 2: MANIFEST_SCHEMA}
RUN_MANIFEST_VERSION = 2  # version 2: ``recovered`` on each listed pass
RUN_MANIFEST_KIND = "idpass-archiver/run-manifest"
RUN_MANIFEST_SCHEMA = "run-manifest.v2.schema.json"
RUN_MANIFEST_SCHEMAS = {1: "run-manifest.v1.schema.json", 2: RUN_MANIFEST_SCHEMA}


def signature_key(key: str) -> str:
    """The key of the detached signature of the object at ``key``."""
    return key + SIG_SUFFIX


@dataclass(frozen=True, slots=True)
class Layout:
    """Object keys under an optional prefix."""

    prefix: str = ""

    def _root(self) -> str:
        p = self.prefix.strip("/")
        return f"{p}/" if p else ""

    def pass_dir(self, pass_id: str) -> str:
        return f"{self._root()}passes/{pass_id}/"

    def image(self, pass_id: str, slot: str, *, sealed: bool = False) -> str:
        suffix = SEALED_SUFFIX if sealed else IMAGE_SUFFIX
        return f"{self.pass_dir(pass_id)}images/{slot}{suffix}"

    def record(self, pass_id: str) -> str:
        return self.pass_dir(pass_id) + RECORD

    def sums(self, pass_id: str) -> str:
        return self.pass_dir(pass_id) + SUMS

    def manifest(self, pass_id: str) -> str:
        return self.pass_dir(pass_id) + MANIFEST

    def public_key(self, key_id: str) -> str:
        return f"{self._root()}keys/{key_id}.pub.pem"

    def runs_root(self) -> str:
        return f"{self._root()}runs/"

    def runs_day(self, day: datetime) -> str:
        return f"{self.runs_root()}{day:%Y}/{day:%m}/{day:%d}/"

    def passes_root(self) -> str:
        return f"{self._root()}passes/"

    def run(self, run_id: str, started_at: datetime) -> str:
        return f"{self.runs_day(started_at.astimezone(UTC))}{run_id}.json"

    def relative(self, pass_id: str, key: str) -> str:
        """The key relative to the pass directory, as listed in SHA256SUMS (and as
        ``export`` writes it under a directory of the auditor's: never ``..``)."""
        base = self.pass_dir(pass_id)
        rel = key[len(base) :] if key.startswith(base) else ""
        if not rel or any(part in ("", ".", "..") for part in rel.split("/")):
            raise FormatError(f"an object key of pass {pass_id} is outside its directory")
        return rel

    def manifest_pass_id(self, key: str) -> str | None:
        """The pass id of a listed key if it is a pass manifest, else None."""
        root = self.passes_root()
        if not key.startswith(root) or not key.endswith("/" + MANIFEST):
            return None
        pass_id = key[len(root) : -len(MANIFEST) - 1]
        return pass_id if pass_id and "/" not in pass_id else None

    @staticmethod
    def is_run_manifest(key: str) -> bool:
        return key.endswith(".json")


# -- schema validation ------------------------------------------------------------------


@cache
def load_schema(name: str) -> dict[str, Any]:
    text = resources.files("archiver.schemas").joinpath(name).read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _validator(schema_file: str) -> jsonschema.Draft202012Validator:
    """One validator per schema (building it costs more than validating a manifest).
    jsonschema (about 27 ms to import) is imported here, on first use: commands that
    validate nothing (status, report, enqueue, ...) never load it."""
    import jsonschema

    return jsonschema.Draft202012Validator(load_schema(schema_file))


def validate_against(schema_file: str, doc: Any, version_field: str, version: int) -> None:
    """Raise :class:`FormatError` unless ``doc`` is valid against the schema."""
    found = doc.get(version_field) if isinstance(doc, dict) else None
    if found != version:
        shown = found if isinstance(found, int) and not isinstance(found, bool) else "?"
        raise FormatError(f"unknown {version_field} {shown} (this build reads {version})")
    errors = sorted(_validator(schema_file).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(root)"
        raise FormatError(
            f"document does not match the schema at {where}: {first.validator} check failed"
        )


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise FormatError(f"{what} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise FormatError(f"{what} is not a JSON object")
    return doc


def _load_versioned(
    data: bytes, what: str, version_field: str, schemas: dict[int, str], current: int
) -> dict[str, Any]:
    """Stored bytes → a document of any version in ``schemas``, once valid against
    that version's schema."""
    doc = _load_json(data, what)
    found = doc.get(version_field)
    if isinstance(found, int) and not isinstance(found, bool) and found in schemas:
        validate_against(schemas[found], doc, version_field, found)
    else:  # the message names the version this build writes
        validate_against(schemas[current], doc, version_field, current)
    return doc


def _load_pass_manifest(data: bytes) -> dict[str, Any]:
    """Stored bytes → a pass manifest of any version this build reads, once valid."""
    return _load_versioned(
        data, "pass manifest", "manifest_version", MANIFEST_SCHEMAS, MANIFEST_VERSION
    )


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


# -- pass manifests ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ObjectEntry:
    """One object a pass manifest lists."""

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
    payload: str | None = None  # SEALED_PAYLOAD in passthrough mode
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

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ObjectEntry:
        """From a schema-valid manifest's entry."""
        return cls(
            role=doc["role"],
            key=doc["key"],
            size=doc["size"],
            sha256=doc["sha256"],
            content_type=doc["content_type"],
            version_id=doc["version_id"],
            slot=doc.get("slot"),
            width=doc.get("width"),
            height=doc.get("height"),
            retain_until=_ts(doc.get("retain_until")),
            lock_mode=doc.get("lock_mode"),
            payload=doc.get("payload"),
            plaintext_sha256=doc.get("plaintext_sha256"),
            plaintext_size=doc.get("plaintext_size"),
        )

    @property
    def age_encrypted(self) -> bool:
        return self.plaintext_sha256 is not None


@dataclass(frozen=True, slots=True)
class PassFacts:
    """What the API said about the pass, as the manifest recorded it."""

    status: str
    verification_status: str | None
    created_at: datetime | None
    completed_at: datetime | None
    image_retention_days: int | None
    images_deadline: datetime | None


@dataclass(frozen=True, slots=True)
class PassManifest:
    """A pass manifest as read back from the bucket."""

    pass_id: str
    run_id: str
    archived_at: datetime
    archiver_version: str
    facts: PassFacts
    decryption: str
    sse: str
    kms_key_id: str | None
    signing_key_id: str
    objects: tuple[ObjectEntry, ...]
    # every slot of the API's list without an image (version 1 knew only this)
    missing_slots: tuple[str, ...]
    image_count: int
    image_bytes: int
    age_recipients: tuple[str, ...]
    # version 2: answered null by a read and returned by none / mentioned by no read;
    # None for a version-1 manifest (unknown whether a missing slot was null or absent)
    null_slots: tuple[str, ...] | None = None
    absent_slots: tuple[str, ...] | None = None
    reads: int | None = None  # version 2: the reads of the pass behind this manifest
    manifest_version: int = MANIFEST_VERSION

    @classmethod
    def parse(cls, data: bytes) -> PassManifest:
        """Stored bytes → a typed manifest. Raises :class:`FormatError` for bytes that
        are not a pass manifest of a version this build reads."""
        doc = _load_pass_manifest(data)
        p = doc["pass"]
        null = tuple(doc["null_slots"]) if "null_slots" in doc else None
        absent = tuple(doc["absent_slots"]) if "absent_slots" in doc else None
        missing = doc.get("missing_slots")
        if missing is None:
            missing = sorted({*(null or ()), *(absent or ())})
        return cls(
            pass_id=doc["pass_id"],
            run_id=doc["run_id"],
            archived_at=datetime.fromisoformat(doc["archived_at"]),
            archiver_version=doc["archiver_version"],
            facts=PassFacts(
                status=p["status"],
                verification_status=p["verification_status"],
                created_at=_ts(p["created_at"]),
                completed_at=_ts(p["completed_at"]),
                image_retention_days=p["image_retention_days"],
                images_deadline=_ts(p["images_deadline"]),
            ),
            decryption=doc["source"]["decryption"],
            sse=doc["encryption"]["sse"],
            kms_key_id=doc["encryption"]["kms_key_id"],
            signing_key_id=doc["signing"]["key_id"],
            objects=tuple(ObjectEntry.from_json(o) for o in doc["objects"]),
            missing_slots=tuple(missing),
            image_count=doc["image_count"],
            image_bytes=doc["image_bytes"],
            age_recipients=tuple(doc.get("client_side_encryption", {}).get("recipients", ())),
            null_slots=null,
            absent_slots=absent,
            reads=doc.get("reads"),
            manifest_version=doc["manifest_version"],
        )

    def counts(self) -> tuple[int, int]:
        """How many images it lists, and their bytes (plaintext bytes with age)."""
        return self.image_count, self.image_bytes

    def keys(self) -> set[str]:
        """Every key the manifest lists."""
        return {o.key for o in self.objects}


# -- run manifests ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListedPass:
    """A pass a run manifest lists as archived. ``recovered``: committed by an earlier
    run that died before listing it, and listed by this one (always False in a
    version-1 run manifest, which knew no such passes)."""

    pass_id: str
    manifest_key: str
    manifest_sha256: str
    already_archived: bool
    recovered: bool = False


@dataclass(frozen=True, slots=True)
class ChainLink:
    """The run manifest a run manifest follows."""

    key: str
    sha256: str


@dataclass(frozen=True, slots=True)
class RunManifest:
    """A run manifest as read back from the bucket."""

    run_id: str
    chain_id: str
    worker_id: str
    started_at: datetime
    finished_at: datetime
    exit_code: int
    signing_key_id: str
    previous: ChainLink | None
    passes: tuple[ListedPass, ...]
    run_manifest_version: int = RUN_MANIFEST_VERSION

    @classmethod
    def parse(cls, data: bytes) -> RunManifest:
        """Stored bytes → a typed run manifest; :class:`FormatError` if they are not
        a run manifest of a version this build reads."""
        doc = _load_versioned(
            data, "run manifest", "run_manifest_version", RUN_MANIFEST_SCHEMAS, RUN_MANIFEST_VERSION
        )
        prev = doc["previous"]
        return cls(
            run_id=doc["run_id"],
            chain_id=doc["chain_id"],
            worker_id=doc["worker_id"],
            started_at=datetime.fromisoformat(doc["started_at"]),
            finished_at=datetime.fromisoformat(doc["finished_at"]),
            exit_code=doc["exit_code"],
            signing_key_id=doc["signing"]["key_id"],
            previous=ChainLink(prev["key"], prev["sha256"]) if prev else None,
            passes=tuple(
                ListedPass(
                    p["pass_id"],
                    p["manifest_key"],
                    p["manifest_sha256"],
                    p["already_archived"],
                    p.get("recovered", False),
                )
                for p in doc["passes"]
            ),
            run_manifest_version=doc["run_manifest_version"],
        )


def chain_link_of(data: bytes) -> tuple[str | None, ChainLink | None]:
    """A stored run manifest's chain id and previous link, read leniently (no schema
    check): used to find a run's successor, where an unreadable object is simply not
    a candidate (``verify`` judges it)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    chain = doc.get("chain_id")
    prev = doc.get("previous")
    link = None
    if isinstance(prev, dict):
        key, sha = prev.get("key"), prev.get("sha256")
        if isinstance(key, str) and isinstance(sha, str):
            link = ChainLink(key, sha)
    return (chain if isinstance(chain, str) else None), link
